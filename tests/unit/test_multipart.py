"""Streaming multipart parsing (engine/multipart.py): any chunking, limits, malformed forms, and
the encoder's output parsed back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from engine.multipart import FormBody, FormError, TooLarge, Upload, boundary_of, parse_form

B = b"----x7MA4YWxkTrZu0gW"


def form(*parts: tuple[str, str | None, bytes], boundary: bytes = B) -> bytes:
    out = b""
    for name, filename, data in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        ctype = b"Content-Type: audio/wav\r\n" if filename is not None else b""
        out += b"--" + boundary + b"\r\nContent-Disposition: " + disp.encode() + b"\r\n" + ctype + b"\r\n" + data + b"\r\n"
    return out + b"--" + boundary + b"--\r\n"


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def parse(data: bytes, size: int = 7, limit: int = 1 << 20, boundary: bytes = B) -> tuple[dict[str, str], Upload | None]:
    return asyncio.run(parse_form(_chunks(data, size), boundary, max_file_bytes=limit))


AUDIO = bytes(range(256)) * 40 + b"\r\n--" + B[:-1]  # binary, with a near-boundary inside


@pytest.mark.parametrize("size", [1, 2, 3, 5, 64, 4096, 1 << 20])
def test_any_chunking_gives_the_same_form(size: int) -> None:
    data = form(("model", None, b"openai/whisper-1"), ("file", "dir/a b.wav", AUDIO), ("language", None, "é".encode()))
    fields, upload = parse(data, size)
    assert fields == {"model": "openai/whisper-1", "language": "é"}
    assert upload is not None and upload.filename == "a b.wav" and upload.size == len(AUDIO)
    assert upload.file.read() == AUDIO and upload.head(4) == AUDIO[:4]
    upload.close()


def test_a_large_file_spools_to_disk_and_stays_whole() -> None:
    big = b"\x01\x02" * (700 * 1024)
    _, upload = parse(form(("file", "a.wav", big)), size=65536, limit=2 << 20)
    assert upload is not None and upload.size == len(big)
    assert getattr(upload.file, "_rolled", True)  # past 1 MiB it is a temp file, not memory
    assert upload.file.read() == big


def test_a_file_over_the_limit_stops_the_parse() -> None:
    with pytest.raises(TooLarge) as e:
        parse(form(("file", "a.wav", b"x" * 5000)), size=100, limit=4096)
    assert "4096 bytes" in str(e.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (form(("model", None, b"m"))[:-8], "ended before its closing boundary"),
        (b"garbage" * 4000, "does not start with the multipart boundary"),
        (form(("file", "a.wav", b"1"), ("file", "b.wav", b"2")), "one file"),
        (form(("model", None, b"x" * 70000)), "longer than 65536 bytes"),
        (b"--" + B + b"\r\nContent-Type: text/plain\r\n\r\nx\r\n--" + B + b"--", "Content-Disposition"),
        (b"--" + B + b"\r\nContent-Disposition: form-data\r\n\r\nx\r\n--" + B + b"--", "no field name"),
    ],
)
def test_malformed_forms_say_what_is_wrong(data: bytes, message: str) -> None:
    with pytest.raises(FormError) as e:
        parse(data)
    assert message in str(e.value)


def test_boundary_of_the_content_type() -> None:
    assert boundary_of("multipart/form-data; boundary=abc") == b"abc"
    assert boundary_of('multipart/form-data; charset=utf-8; boundary="a b"') == b"a b"
    with pytest.raises(FormError, match="multipart/form-data"):
        boundary_of("application/json")
    with pytest.raises(FormError, match="no boundary"):
        boundary_of("multipart/form-data")


def test_the_encoder_output_parses_back_with_its_exact_length() -> None:
    _, upload = parse(form(("file", "a.wav", AUDIO)))
    assert upload is not None
    upload.filename = 'we"ird.wav'  # quotes are escaped on the way out and read back
    body = FormBody({"model": "whisper-1", "prompt": "line\r\nbreak"}, "file", upload)

    async def collect() -> bytes:
        return b"".join([c async for c in body])

    raw = asyncio.run(collect())
    assert len(raw) == len(body)
    fields, again = parse(raw, size=13, boundary=boundary_of(body.content_type).strip())
    assert fields == {"model": "whisper-1", "prompt": "line\r\nbreak"}
    assert again is not None and again.file.read() == AUDIO and again.content_type == "audio/wav"
    assert again.filename == 'we"ird.wav'
