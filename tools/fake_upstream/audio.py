"""Audio the fake speech-to-text providers "hear": what kind a body is and how long it lasts.

Independent of the gateway's own sniffing on purpose, so each checks the other. The transcript
is deterministic and derived from the duration, so every provider transcribes the same file the
same way: "fake transcript of 1.50 seconds of audio".
"""

from __future__ import annotations

import struct

# What the fakes accept as audio: the kind by magic bytes.
_BYTES_PER_SECOND_GUESS = 16_000  # compressed formats: 128 kbit/s


def kind_of(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "wav"
    if data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0):
        return "mp3"
    if data[:4] == b"fLaC":
        return "flac"
    if data[:4] == b"OggS":
        return "ogg"
    if data[4:8] == b"ftyp":
        return "m4a"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "webm"
    return None


def duration_of(data: bytes) -> float:
    """Seconds: from a WAV header when there is one, else from the size."""
    if kind_of(data) == "wav":
        pos, rate = 12, 0
        while pos + 8 <= len(data):
            cid, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
            if cid == b"fmt " and pos + 20 <= len(data):
                rate = struct.unpack_from("<I", data, pos + 16)[0]
            elif cid == b"data" and rate:
                return round(min(size, len(data) - pos - 8) / rate, 3)
            pos += 8 + size + (size & 1)
    return round(len(data) / _BYTES_PER_SECOND_GUESS, 3)


def transcript(duration: float) -> str:
    return f"fake transcript of {duration:.2f} seconds of audio"
