"""Streaming `multipart/form-data`: parse an upload chunk by chunk, and encode one for upstream.

Parsing never holds the body in memory: text fields are kept (each up to `max_field_bytes`), the
file part is written to a SpooledTemporaryFile (in memory up to 1 MiB, then on disk) as it
arrives, and the parse stops with `TooLarge` once the file passes `max_file_bytes`. Everything a
client can get wrong raises `FormError` with a message naming what to fix.

Encoding is the reverse for one file: `FormBody` gives the exact length up front (so upstreams
get a Content-Length, not a chunked body) and yields the parts, reading the file in chunks.

Public surface: FormError, TooLarge, Upload, boundary_of, parse_form, FormBody.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import IO

SPOOL_BYTES = 1 << 20  # an upload stays in memory up to this size, then moves to a temp file
CHUNK = 64 * 1024
_MAX_HEADER_BYTES = 16 * 1024
_BOUNDARY = re.compile(r'boundary=(?:"([^"]{1,70})"|([^\s;]{1,70}))', re.I)
_PARAM = re.compile(r';\s*([\w*-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s;]*))')


class FormError(ValueError):
    """The upload is not the multipart form it should be; the message says what to fix."""


class TooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the uploaded file is larger than the limit of {limit} bytes ({limit / 2**20:g} MiB)")
        self.limit = limit


@dataclass
class Upload:
    """The file part of a form: its name, declared type, size and spooled content."""

    field: str
    filename: str
    content_type: str
    file: IO[bytes]
    size: int = 0

    def head(self, n: int = 4096) -> bytes:
        self.file.seek(0)
        data = self.file.read(n)
        self.file.seek(0)
        return data

    def close(self) -> None:
        self.file.close()


def boundary_of(content_type: str) -> bytes:
    """The boundary of a `multipart/form-data` Content-Type, or FormError."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise FormError(f"send the upload as multipart/form-data (got content-type '{content_type or 'none'}')")
    m = _BOUNDARY.search(content_type)
    if m is None:
        raise FormError("the multipart/form-data content-type has no boundary parameter")
    return (m.group(1) or m.group(2)).encode("latin-1")


def _disposition(headers: Mapping[str, str]) -> tuple[str, str | None]:
    value = headers.get("content-disposition", "")
    if not value.lower().startswith("form-data"):
        raise FormError("each multipart part needs 'Content-Disposition: form-data; name=...'")
    params = {m.group(1).lower(): m.group(2).replace('\\"', '"') if m.group(2) is not None else m.group(3)
              for m in _PARAM.finditer(value)}
    name = params.get("name")
    if not name:
        raise FormError("a multipart part has no field name (Content-Disposition name=...)")
    filename = params.get("filename")
    return name, os.path.basename(filename.replace("\\", "/")) if filename is not None else None


def _headers(block: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in block.decode("utf-8", "replace").split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            out[name.strip().lower()] = value.strip()
    return out


async def parse_form(
    chunks: AsyncIterator[bytes], boundary: bytes, *, file_field: str = "file", max_file_bytes: int,
    max_field_bytes: int = 64 * 1024, max_fields: int = 64,
) -> tuple[dict[str, str], Upload | None]:
    """Read a whole form from `chunks`. Returns (text fields, the `file_field` upload or None).
    Raises FormError for a malformed form, TooLarge once the file passes `max_file_bytes`."""
    fields: dict[str, str] = {}
    upload: Upload | None = None
    delim = b"\r\n--" + boundary
    buf = b"\r\n"  # lets the first boundary match the same delimiter as the others
    state = "preamble"
    name = ""
    value = bytearray()
    done = False
    preamble = 0
    try:
        async for chunk in chunks:
            if done:
                continue  # an epilogue after the closing boundary is ignored
            buf += chunk
            while True:
                if state == "preamble":
                    i = buf.find(delim)
                    if i < 0:
                        preamble += len(buf)
                        if preamble > _MAX_HEADER_BYTES:
                            raise FormError("the body does not start with the multipart boundary of its content-type")
                        buf = buf[-len(delim):]
                        break
                    buf, state = buf[i + len(delim):], "after"
                elif state == "after":
                    if len(buf) < 2:
                        break
                    if buf[:2] == b"--":
                        done = True
                        break
                    if buf[:2] != b"\r\n":
                        raise FormError("malformed multipart body: a boundary line is not followed by CRLF")
                    buf, state = buf[2:], "headers"
                elif state == "headers":
                    i = buf.find(b"\r\n\r\n")
                    if i < 0:
                        if len(buf) > _MAX_HEADER_BYTES:
                            raise FormError("a multipart part has headers longer than 16 KiB")
                        break
                    headers = _headers(buf[:i])
                    buf = buf[i + 4:]
                    name, filename = _disposition(headers)
                    if name == file_field and filename is not None:
                        if upload is not None:
                            raise FormError(f"send one file in the '{file_field}' field, not several")
                        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115 - the Upload owns it
                        upload = Upload(name, filename, headers.get("content-type", "application/octet-stream"), spool)
                        state = "file"
                    else:
                        if len(fields) >= max_fields:
                            raise FormError(f"the form has more than {max_fields} fields")
                        value = bytearray()
                        state = "field"
                else:  # "file" or "field": data up to the next delimiter
                    i = buf.find(delim)
                    end = i if i >= 0 else max(0, len(buf) - len(delim) + 1)
                    if end:
                        _take(buf[:end], state, upload, value, name, max_file_bytes, max_field_bytes)
                    buf = buf[end:]
                    if i < 0:
                        break
                    if state == "field":
                        fields[name] = value.decode("utf-8", "replace")
                    buf, state = buf[len(delim):], "after"
        if not done:
            raise FormError("the multipart body ended before its closing boundary (was the upload cut short?)")
    except BaseException:
        if upload is not None:
            upload.close()
        raise
    if upload is not None:
        upload.file.seek(0)
    return fields, upload


def _take(data: bytes, state: str, upload: Upload | None, value: bytearray, name: str, max_file: int, max_field: int) -> None:
    if state == "file" and upload is not None:
        upload.size += len(data)
        if upload.size > max_file:
            raise TooLarge(max_file)
        upload.file.write(data)
    else:
        value += data
        if len(value) > max_field:
            raise FormError(f"form field '{name}' is longer than {max_field} bytes")


def _quote(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("\r", " ").replace("\n", " ")


class FormBody:
    """One multipart body: text `fields` then the file. `len()` is exact; iterate to stream it."""

    def __init__(self, fields: Mapping[str, str], file_field: str, upload: Upload) -> None:
        self.boundary = "omniroute-" + os.urandom(12).hex()
        parts = []
        for k, v in fields.items():
            parts.append(f'--{self.boundary}\r\nContent-Disposition: form-data; name="{_quote(k)}"\r\n\r\n{v}\r\n')
        parts.append(f'--{self.boundary}\r\nContent-Disposition: form-data; name="{_quote(file_field)}"; '
                     f'filename="{_quote(upload.filename)}"\r\nContent-Type: {upload.content_type}\r\n\r\n')
        self.head = "".join(parts).encode()
        self.tail = f"\r\n--{self.boundary}--\r\n".encode()
        self.upload = upload

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def __len__(self) -> int:
        return len(self.head) + self.upload.size + len(self.tail)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.head
        for chunk in file_chunks(self.upload.file):
            yield chunk
        yield self.tail


def file_chunks(f: IO[bytes]) -> Iterator[bytes]:
    """The whole file from its start, in chunks (each attempt and retry reads it again)."""
    f.seek(0)
    while True:
        data = f.read(CHUNK)
        if not data:
            return
        yield data
