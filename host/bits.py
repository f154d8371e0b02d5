"""Bit vectors and their byte packing, the one convention used everywhere in qkdlink.

A block of key, seed or hash bits is a sequence ``b[0], b[1], ...``, where ``b[j]`` is the j-th bit sent. Packed into
bytes, bit ``j`` is bit ``j % 8`` (value ``1 << (j % 8)``) of byte ``j // 8``: least significant bit first, the order
in which a UART puts the bits of a byte on the wire. A block whose length is not a multiple of 8 is padded with
zero bits at the end of its last byte. ``docs/bit-order.md`` is the reference for this rule.

In memory a bit vector is a one-dimensional :class:`numpy.ndarray` of ``uint8`` holding only 0 and 1.
"""

import numpy as np


__all__ = ["as_bits", "pack_bits", "unpack_bits", "bits_to_int", "int_to_bits"]


def as_bits(bits, *, name="bits"):
    """Return ``bits`` as a bit vector, checking that every element is 0 or 1.

    Raises
    ------
    ValueError
        If ``bits`` is not one-dimensional or holds a value other than 0 and 1.
    """
    array = np.asarray(bits)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a one-dimensional sequence of bits, not of shape {array.shape!r}")
    if array.size and (array.min() < 0 or array.max() > 1):
        raise ValueError(f"{name} must hold only 0 and 1, not {array.max()!r}")
    return array.astype(np.uint8, copy=False)


def pack_bits(bits):
    """Pack a bit vector into bytes, least significant bit first; the last byte is zero-padded."""
    return np.packbits(as_bits(bits), bitorder="little").tobytes()


def unpack_bits(data, count=None):
    """Unpack ``count`` bits (all of them if ``None``) from bytes packed by :func:`pack_bits`.

    Raises
    ------
    ValueError
        If ``data`` holds fewer than ``count`` bits.
    TypeError
        If ``data`` is not bytes: a peer's field of another type must not become a huge allocation.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"packed bits must be bytes, not {type(data).__name__}")
    array = np.frombuffer(bytes(data), dtype=np.uint8)
    if count is None:
        count = 8 * array.size
    if count < 0 or count > 8 * array.size:
        raise ValueError(f"{len(data)} bytes hold {8 * array.size} bits, not {count}")
    return np.unpackbits(array, count=count, bitorder="little")


def bits_to_int(bits):
    """The integer whose bit ``j`` is ``bits[j]`` (the order in which a stream payload carries them)."""
    return int.from_bytes(pack_bits(bits), "little")


def int_to_bits(value, count):
    """The first ``count`` bits of a non-negative integer, bit ``j`` first: the inverse of :func:`bits_to_int`."""
    if value < 0 or value >> count:
        raise ValueError(f"{value!r} does not fit in {count} bits")
    return unpack_bits(value.to_bytes((count + 7) // 8, "little"), count)
