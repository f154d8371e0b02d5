"""Frames of the host-board wire protocol: COBS, CRC-32, request and reply bodies.

This is the reference model of the gateware's framing (:mod:`qkdlink.gateware.cobs`,
:mod:`qkdlink.gateware.hostlink`); the commands, statuses and maps are in :mod:`qkdlink.wire`, the prose in
``docs/protocol.md``.
"""

import struct
import zlib
from dataclasses import dataclass

from ..wire import CRC_BYTES, MAX_BODY, Status


__all__ = ["cobs_encode", "cobs_decode", "CobsError", "seal", "unseal", "frame", "FrameSplitter",
           "Request", "Reply", "encode_request", "decode_request", "encode_reply", "decode_reply",
           "READ_ARGUMENTS", "READ_STREAM_ARGUMENTS", "WRITE_STREAM_HEADER", "STREAM_REPLY_HEADER", "HELLO_HEADER"]


class CobsError(ValueError):
    """A byte string that is not the COBS encoding of anything."""


def cobs_encode(data):
    """The COBS encoding of ``data`` (no zero byte in it; the frame delimiter is not added)."""
    out = bytearray()
    for part in bytes(data).split(b"\0"):
        # Each zero-free part becomes blocks of at most 254 bytes; a block of 254 needs no implied zero after it.
        while len(part) >= 254:
            out += b"\xff" + part[:254]
            part = part[254:]
        out.append(len(part) + 1)
        out += part
    return bytes(out)


def cobs_decode(data):
    """The data ``data`` encodes; :class:`CobsError` if it is not a COBS encoding."""
    data = bytes(data)
    out = bytearray()
    index = 0
    while index < len(data):
        code = data[index]
        end = index + code
        if code == 0 or end > len(data):
            raise CobsError(f"COBS code {code} at byte {index} runs past the end of a {len(data)}-byte frame")
        block = data[index + 1:end]
        if 0 in block:
            raise CobsError(f"zero byte inside the COBS block at byte {index}")
        out += block
        index = end
        if code != 0xff and index < len(data):
            out.append(0)
    return bytes(out)


def seal(body):
    """``body`` with its CRC-32 appended (little-endian)."""
    return bytes(body) + struct.pack("<I", zlib.crc32(body))


def unseal(sealed):
    """The body of a sealed body, or ``None`` if its CRC does not match (or it is too short to have one)."""
    if len(sealed) < CRC_BYTES:
        return None
    body, crc = sealed[:-CRC_BYTES], sealed[-CRC_BYTES:]
    if struct.pack("<I", zlib.crc32(body)) != crc:
        return None
    return body


def frame(body):
    """The bytes on the wire for ``body``: sealed, COBS-encoded, delimited by a zero byte."""
    return cobs_encode(seal(body)) + b"\0"


class FrameSplitter:
    """Cut a byte stream into frames at zero bytes, and check each.

    :meth:`feed` returns, for each complete frame, either the body (``bytes``) or the :class:`Status` that says why
    there is none: :data:`Status.FRAME` for a bad COBS code, a frame too short to hold a header and a CRC, or one
    longer than ``MAX_BODY``; :data:`Status.CRC` for a CRC mismatch. Empty frames (two zeros in a row, as a
    sender uses to resynchronise) are skipped. ``header`` is the shortest body allowed (2 for requests, 3 for
    replies).
    """

    def __init__(self, *, header):
        self._header = header
        self._pending = bytearray()
        self._overlong = False

    def feed(self, data):
        results = []
        parts = bytes(data).split(b"\0")
        for index, part in enumerate(parts):
            if len(self._pending) + len(part) > _MAX_ENCODED:
                self._overlong = True
                self._pending.clear()
            else:
                self._pending += part
            if index == len(parts) - 1:
                break                           # no delimiter after this part yet
            encoded, overlong = bytes(self._pending), self._overlong
            self._pending.clear()
            self._overlong = False
            if overlong:
                results.append(Status.FRAME)
            elif encoded:
                results.append(self._check(encoded))
        return results

    def _check(self, encoded):
        try:
            sealed = cobs_decode(encoded)
        except CobsError:
            return Status.FRAME
        if not self._header + CRC_BYTES <= len(sealed) <= MAX_BODY:
            return Status.FRAME
        body = unseal(sealed)
        return Status.CRC if body is None else body


# COBS adds one byte per 254 and one at the start.
_MAX_ENCODED = MAX_BODY + MAX_BODY // 254 + 1


@dataclass(frozen=True)
class Request:
    command: int
    tag: int
    arguments: bytes = b""


@dataclass(frozen=True)
class Reply:
    status: Status
    command: int
    tag: int
    payload: bytes = b""


def encode_request(request):
    return bytes([request.command, request.tag]) + bytes(request.arguments)


def decode_request(body):
    return Request(body[0], body[1], bytes(body[2:]))


def encode_reply(reply):
    return bytes([reply.status, reply.command, reply.tag]) + bytes(reply.payload)


def decode_reply(body):
    """The :class:`Reply` in ``body``; :class:`ValueError` for a status that is not a :class:`Status`."""
    try:
        status = Status(body[0])
    except ValueError:
        raise ValueError(f"reply with unknown status 0x{body[0]:02x}") from None
    return Reply(status, body[1], body[2], bytes(body[3:]))


# Argument and payload layouts of the commands (after command and tag), as qkdlink.wire.Command documents them.
READ_ARGUMENTS = struct.Struct("<HB")
READ_STREAM_ARGUMENTS = struct.Struct("<BIIH")
WRITE_STREAM_HEADER = struct.Struct("<BI")
STREAM_REPLY_HEADER = struct.Struct("<II")
HELLO_HEADER = struct.Struct("<IHBBBB")
