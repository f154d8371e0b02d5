import unittest

import numpy as np

from qkdlink.host.bits import as_bits, bits_to_int, int_to_bits, pack_bits, unpack_bits


class BitOrderTestCase(unittest.TestCase):
    def test_first_bit_is_least_significant(self):
        # docs/bit-order.md: bit j is bit j % 8 of byte j // 8, the order a UART sends.
        self.assertEqual(pack_bits([1, 0, 0, 0, 0, 0, 0, 0]), b"\x01")
        self.assertEqual(pack_bits([0, 0, 0, 0, 0, 0, 0, 1, 1]), b"\x80\x01")
        self.assertEqual(list(unpack_bits(b"\x05", 3)), [1, 0, 1])

    def test_round_trip_any_length(self):
        rng = np.random.default_rng(7)
        for count in (0, 1, 7, 8, 9, 63, 64, 1000):
            bits = rng.integers(0, 2, count, dtype=np.uint8)
            packed = pack_bits(bits)
            self.assertEqual(len(packed), (count + 7) // 8)
            np.testing.assert_array_equal(unpack_bits(packed, count), bits)
            self.assertEqual(bits_to_int(bits), sum(int(b) << j for j, b in enumerate(bits)))
            np.testing.assert_array_equal(int_to_bits(bits_to_int(bits), count), bits)

    def test_errors(self):
        with self.assertRaisesRegex(ValueError, r"hold only 0 and 1"):
            as_bits([0, 2])
        with self.assertRaisesRegex(ValueError, r"one-dimensional"):
            as_bits([[0, 1]])
        with self.assertRaisesRegex(ValueError, r"1 bytes hold 8 bits, not 9"):
            unpack_bits(b"\x00", 9)
        with self.assertRaisesRegex(ValueError, r"does not fit in 3 bits"):
            int_to_bits(8, 3)
