"""Classical-channel messages between Alice and Bob, and their byte encoding.

A message is a kind (a short name) and named fields: integers, floats, strings, byte strings and one-dimensional
numpy arrays of unsigned or signed integers. The encoding is self-describing and strict, so that a message that was
damaged or forged into another shape fails to decode with a :class:`ValueError` instead of being misread:

    version (1 byte) | kind (1-byte length, UTF-8) | field count (2 bytes) | fields...
    field: name (1-byte length, UTF-8) | type (1 byte) | value
      'i' int64 | 'f' float64 | 's' UTF-8 string (4-byte length) | 'b' bytes (4-byte length)
      'a' array: dtype code (1 byte: one of B H I Q b h i q) | element count (8 bytes) | little-endian elements

All integers in the framing are little-endian. Authentication (Wegman-Carter tags) wraps the encoded bytes at the
channel, not here.
"""

import struct
from dataclasses import dataclass, field

import numpy as np


__all__ = ["Message", "ProtocolError"]


_VERSION = 1
_ARRAY_TYPES = {"B": np.uint8, "H": np.uint16, "I": np.uint32, "Q": np.uint64,
                "b": np.int8, "h": np.int16, "i": np.int32, "q": np.int64}
_ARRAY_CODES = {np.dtype(dtype): code for code, dtype in _ARRAY_TYPES.items()}


class ProtocolError(Exception):
    """The peer sent something the protocol does not allow here: the block is aborted."""


@dataclass(frozen=True)
class Message:
    """A protocol message: ``kind`` and a mapping of field names to values."""
    kind: str
    fields: dict = field(default_factory=dict)

    def __getitem__(self, name):
        try:
            return self.fields[name]
        except KeyError:
            raise ProtocolError(f"{self.kind} message has no field {name!r}") from None

    def expect(self, kind):
        """Return ``self`` if it is of ``kind``; raise :class:`ProtocolError` otherwise."""
        if self.kind != kind:
            raise ProtocolError(f"expected a {kind} message, got {self.kind}")
        return self

    def encode(self):
        kind = self.kind.encode()
        parts = [struct.pack("<BB", _VERSION, len(kind)), kind, struct.pack("<H", len(self.fields))]
        for name, value in self.fields.items():
            encoded_name = name.encode()
            parts.append(struct.pack("<B", len(encoded_name)) + encoded_name)
            if isinstance(value, (bool, np.bool_)):
                value = int(value)
            if isinstance(value, (int, np.integer)):
                parts.append(b"i" + struct.pack("<q", int(value)))
            elif isinstance(value, (float, np.floating)):
                parts.append(b"f" + struct.pack("<d", float(value)))
            elif isinstance(value, str):
                data = value.encode()
                parts.append(b"s" + struct.pack("<I", len(data)) + data)
            elif isinstance(value, (bytes, bytearray)):
                parts.append(b"b" + struct.pack("<I", len(value)) + bytes(value))
            elif isinstance(value, np.ndarray):
                if value.ndim != 1 or value.dtype not in _ARRAY_CODES:
                    raise TypeError(f"field {name!r}: arrays must be one-dimensional integers, not "
                                    f"{value.dtype} of shape {value.shape}")
                code = _ARRAY_CODES[value.dtype]
                parts.append(b"a" + code.encode() + struct.pack("<Q", value.size) +
                             value.astype(value.dtype.newbyteorder("<"), copy=False).tobytes())
            else:
                raise TypeError(f"field {name!r}: cannot encode a {type(value).__name__}")
        return b"".join(parts)

    @classmethod
    def decode(cls, data):
        """Decode bytes made by :meth:`encode`; raises :class:`ValueError` on anything else."""
        reader = _Reader(bytes(data))
        version, length = reader.unpack("<BB")
        if version != _VERSION:
            raise ValueError(f"message version {version} is not the supported {_VERSION}")
        kind = reader.text(length)
        (count,) = reader.unpack("<H")
        fields = {}
        for _ in range(count):
            (length,) = reader.unpack("<B")
            name = reader.text(length)
            if name in fields:
                raise ValueError(f"{kind} message repeats field {name!r}")
            tag = reader.take(1)
            if tag == b"i":
                (fields[name],) = reader.unpack("<q")
            elif tag == b"f":
                (fields[name],) = reader.unpack("<d")
            elif tag == b"s":
                (length,) = reader.unpack("<I")
                fields[name] = reader.text(length)
            elif tag == b"b":
                (length,) = reader.unpack("<I")
                fields[name] = reader.take(length)
            elif tag == b"a":
                code = reader.take(1).decode("ascii", errors="replace")
                if code not in _ARRAY_TYPES:
                    raise ValueError(f"{kind} message field {name!r} has unknown array type {code!r}")
                dtype = np.dtype(_ARRAY_TYPES[code]).newbyteorder("<")
                (size,) = reader.unpack("<Q")
                if size > len(data):
                    raise ValueError(f"{kind} message field {name!r} claims {size} elements, more than the "
                                     f"message holds")
                fields[name] = np.frombuffer(reader.take(size * dtype.itemsize), dtype=dtype).astype(
                    dtype.newbyteorder("="))
            else:
                raise ValueError(f"{kind} message field {name!r} has unknown type {tag!r}")
        if not reader.done:
            raise ValueError(f"{kind} message has {reader.left} stray bytes at its end")
        return cls(kind, fields)


class _Reader:
    def __init__(self, data):
        self.data = data
        self.offset = 0

    @property
    def left(self):
        return len(self.data) - self.offset

    @property
    def done(self):
        return self.offset == len(self.data)

    def take(self, count):
        if count > self.left:
            raise ValueError(f"message truncated: {count} bytes needed at offset {self.offset}, "
                             f"{self.left} left")
        chunk = self.data[self.offset:self.offset + count]
        self.offset += count
        return chunk

    def unpack(self, layout):
        return struct.unpack(layout, self.take(struct.calcsize(layout)))

    def text(self, count):
        try:
            return self.take(count).decode()
        except UnicodeDecodeError:
            raise ValueError(f"message has a name that is not UTF-8 at offset {self.offset - count}") from None
