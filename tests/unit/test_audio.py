"""Audio sniffing (engine/audio.py): accepted by name and bytes, refused with a clear message."""

from __future__ import annotations

import io
import wave

import pytest

from engine.audio import AudioError, check_audio, sniff, wav_duration


def wav(seconds: float, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\0\0" * int(seconds * rate))
    return buf.getvalue()


HEADS = {
    "wav": wav(0.01),
    "mp3": b"ID3\x04\x00" + b"\0" * 20,
    "flac": b"fLaC\x00\x00\x00\x22",
    "ogg": b"OggS\x00\x02",
    "m4a": b"\x00\x00\x00\x20ftypM4A ",
    "webm": b"\x1a\x45\xdf\xa3\x9f\x42\x86",
}


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_each_kind_is_recognised(kind: str) -> None:
    assert sniff(HEADS[kind]) == kind
    assert check_audio(f"clip.{kind}", HEADS[kind]) == kind


def test_an_mpeg_frame_without_id3_is_mp3() -> None:
    assert sniff(b"\xff\xfb\x90\x64") == "mp3"


def test_the_bytes_decide_the_kind_when_names_differ() -> None:
    assert check_audio("clip.mp3", HEADS["wav"]) == "wav"
    assert check_audio("voice.OPUS", HEADS["ogg"]) == "ogg"


@pytest.mark.parametrize(
    ("name", "head", "message"),
    [
        ("notes.txt", HEADS["wav"], "no audio file extension"),
        ("noext", HEADS["wav"], "no audio file extension"),
        (".wav", HEADS["wav"], "no audio file extension"),
        ("fake.wav", b"hello world, not audio", "content is not audio"),
        ("empty.mp3", b"", "content is not audio"),
    ],
)
def test_refusals_name_the_file_and_the_accepted_kinds(name: str, head: bytes, message: str) -> None:
    with pytest.raises(AudioError) as e:
        check_audio(name, head)
    assert message in str(e.value) and name in str(e.value) and "mp3, wav, m4a, flac, ogg, webm" in str(e.value)


def test_wav_duration_from_the_header() -> None:
    assert wav_duration(wav(1.25)) == pytest.approx(1.25)
    assert wav_duration(wav(2.0, rate=8000)) == pytest.approx(2.0)
    assert wav_duration(HEADS["mp3"]) is None
    streamed = bytearray(wav(1.0))
    streamed[40:44] = b"\xff\xff\xff\xff"  # a streamed WAV's unknown data size is capped by the file size
    assert wav_duration(bytes(streamed), len(streamed)) == pytest.approx(1.0)
