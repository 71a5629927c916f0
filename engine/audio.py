"""What kind of audio an upload is: by its file name AND its first bytes, before anything is sent.

Accepted: mp3, wav, m4a, flac, ogg, webm (and the usual other names for them: mpga, mpeg, mp4,
oga, opus). The extension must name one of these and the bytes must start like one of them:
RIFF....WAVE, an ID3 tag or an MPEG frame sync, fLaC, OggS, an ISO-BMFF `ftyp` box, or EBML
(1A 45 DF A3). The kind the bytes show decides the content type sent upstream.

Public surface: AUDIO_TYPES, AudioError, sniff, check_audio, wav_duration.
"""

from __future__ import annotations

import struct

# kind -> content type sent upstream
AUDIO_TYPES = {
    "mp3": "audio/mpeg", "wav": "audio/wav", "m4a": "audio/mp4", "flac": "audio/flac", "ogg": "audio/ogg",
    "webm": "audio/webm",
}
_EXTENSIONS = {
    "mp3": "mp3", "mpga": "mp3", "mpeg": "mp3", "wav": "wav", "wave": "wav", "m4a": "m4a", "mp4": "m4a",
    "flac": "flac", "ogg": "ogg", "oga": "ogg", "opus": "ogg", "webm": "webm",
}
_ACCEPTED = "mp3, wav, m4a, flac, ogg, webm"


class AudioError(ValueError):
    """Not an audio file the gateway accepts; the message names the file and what is accepted."""


def sniff(head: bytes) -> str | None:
    """The audio kind the first bytes of a file show, or None."""
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:3] == b"ID3" or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "mp3"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[4:8] == b"ftyp":
        return "m4a"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "webm"
    return None


def check_audio(filename: str, head: bytes) -> str:
    """The kind of an upload, or AudioError saying why it is refused."""
    stem, dot, ext = filename.rpartition(".")
    by_name = _EXTENSIONS.get(ext.lower()) if dot and stem else None
    if by_name is None:
        raise AudioError(f"file '{filename}' has no audio file extension (accepted: {_ACCEPTED})")
    by_bytes = sniff(head)
    if by_bytes is None:
        raise AudioError(f"file '{filename}' is named like {by_name} audio but its content is not audio "
                         f"(accepted: {_ACCEPTED})")
    return by_bytes


def wav_duration(head: bytes, total_size: int | None = None) -> float | None:
    """Seconds of a WAV file from its header (fmt byte rate and data size), when the header says.
    `total_size` caps the data size (streamed WAVs write 0xFFFFFFFF there)."""
    if sniff(head) != "wav":
        return None
    pos, byte_rate, data = 12, 0, None
    while pos + 8 <= len(head):
        cid, size = head[pos:pos + 4], struct.unpack_from("<I", head, pos + 4)[0]
        if cid == b"fmt " and pos + 20 <= len(head):
            byte_rate = struct.unpack_from("<I", head, pos + 16)[0]
        elif cid == b"data":
            data = size if total_size is None else min(size, max(0, total_size - pos - 8))
            break
        pos += 8 + size + (size & 1)
    if not byte_rate or data is None:
        return None
    return round(data / byte_rate, 3)
