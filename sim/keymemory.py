"""The key memory core, modelled: what :class:`qkdlink.gateware.keymemory.KeyMemory` does with each operation.

The gateware takes operations in some order (bits, flips, commands on three streams); this model, given the same
operations in the same order, gives the same outputs bit for bit: the words of a READ, the beats of a HASH, and the
``count``, ``full`` and ``bad_flip`` registers.
"""

import numpy as np


__all__ = ["KeyMemoryModel", "to_beats"]


def to_beats(bits, width):
    """Pack bits into ``width``-bit beat values, bit ``w`` of a beat first, the last beat zero-padded."""
    bits = np.asarray(bits, dtype=np.uint8)
    padded = np.zeros(-(-bits.size // width) * width, dtype=np.uint64)
    padded[:bits.size] = bits
    weights = np.left_shift(np.uint64(1), np.arange(width, dtype=np.uint64))
    return [int(beat) for beat in padded.reshape(-1, width) @ weights]


class KeyMemoryModel:
    """A block of up to ``max_bits`` key bits, with the operations of the gateware key memory.

    Parameters
    ----------
    max_bits, width : int
        As for :class:`~qkdlink.gateware.keymemory.KeyMemory`.

    Attributes
    ----------
    bits : numpy.ndarray of uint8
        The block.
    bad_flip : int
        Flips refused because their index was not below the block's length (32 bits, wrapping).
    """

    def __init__(self, *, max_bits, width=1):
        self.max_bits = max_bits
        self.width = width
        self.bits = np.zeros(0, dtype=np.uint8)
        self.bad_flip = 0

    @property
    def count(self):
        return self.bits.size

    @property
    def full(self):
        return self.bits.size == self.max_bits

    def append(self, bit):
        """Append one bit; returns ``False`` (and changes nothing) if the block is full, as the core refuses it."""
        if self.full:
            return False
        self.bits = np.append(self.bits, np.uint8(bit & 1))
        return True

    def extend(self, bits):
        """Append ``bits`` in order until the block is full; returns how many were taken."""
        bits = np.asarray(bits, dtype=np.uint8)[:self.max_bits - self.bits.size] & 1
        self.bits = np.concatenate([self.bits, bits])
        return bits.size

    def flip(self, index):
        """Invert bit ``index``; an index not below :attr:`count` is refused and counted."""
        if 0 <= index < self.count:
            self.bits[index] ^= 1
        else:
            self.bad_flip = (self.bad_flip + 1) & 0xFFFF_FFFF

    def clear(self):
        self.bits = np.zeros(0, dtype=np.uint8)

    def read(self):
        """The READ command: a list of ``(data, last)``, one per 16-bit word; empty for an empty block."""
        words = to_beats(self.bits, 16)
        return [(word, index == len(words) - 1) for index, word in enumerate(words)]

    def hash(self, passes):
        """The HASH command: the ``width``-bit beats of ``passes`` passes over the block, as one list."""
        return to_beats(self.bits, self.width) * passes
