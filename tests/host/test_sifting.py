import itertools
import unittest

import numpy as np

from qkdlink.host.sifting import NOT_SENT, X, Z, matches, sift, squash


def squash_one(pattern, basis_coin, bit_coin):
    """The squashing rules of DESIGN.md, written out case by case for one detection."""
    z0, z1, x0, x1 = (bool(pattern >> k & 1) for k in range(4))
    z, x = z0 or z1, x0 or x1
    if z and x:
        return basis_coin, bit_coin                      # clicks in both bases: random basis, random bit
    if z:
        return Z, (bit_coin if z0 and z1 else int(z1))   # double click in one basis: random bit
    return X, (bit_coin if x0 and x1 else int(x1))


class SquashTestCase(unittest.TestCase):
    def test_every_pattern_and_coin(self):
        cases = list(itertools.product(range(1, 16), (0, 1), (0, 1)))
        pattern = np.array([p for p, _, _ in cases], np.uint8)
        coins = np.array([(b, c) for _, b, c in cases], np.uint8)
        basis, bit = squash(pattern, coins)
        for index, (p, b, c) in enumerate(cases):
            self.assertEqual((basis[index], bit[index]), squash_one(p, b, c), f"pattern {p:04b}")

    def test_errors(self):
        with self.assertRaisesRegex(ValueError, r"non-zero 4-bit mask, not 0x0"):
            squash(np.array([1, 0], np.uint8), np.zeros((2, 2), np.uint8))
        with self.assertRaisesRegex(ValueError, r"non-zero 4-bit mask, not 0x10"):
            squash(np.array([16], np.uint8), np.zeros((1, 2), np.uint8))
        with self.assertRaisesRegex(ValueError, r"needs random bits of shape \(2, 2\), not \(2,\)"):
            squash(np.array([1, 2], np.uint8), np.zeros(2, np.uint8))


class SiftTestCase(unittest.TestCase):
    def test_keeps_matching_bases(self):
        bob_bases = [Z, Z, X, X, Z, X]
        alice_bases = [Z, X, X, Z, Z, X]
        bits = [1, 0, 1, 1, 0, 0]
        intensities = [0, 1, 2, 0, 1, 2]
        sifted = sift(bob_bases, bits, alice_bases, intensities)
        self.assertEqual(list(sifted.key), [1, 0])
        self.assertEqual(list(sifted.key_intensity), [0, 1])
        self.assertEqual(list(sifted.test), [1, 0])
        self.assertEqual(list(sifted.test_intensity), [2, 2])

    def test_shapes_must_agree(self):
        with self.assertRaisesRegex(ValueError, r"one basis, bit, Alice's basis and intensity per detection"):
            sift([0, 1], [0], [0, 1], [0, 0])

    def test_not_sent_never_sifts(self):
        # Every combination of bases and bit, once sent with each intensity and once not sent: a slot Alice did
        # not send gives neither key nor test bits even when the bases agree.
        cases = list(itertools.product((Z, X), (Z, X), (0, 1), (0, 1, 2, NOT_SENT)))
        bob_bases, alice_bases, bits, intensities = (np.array(column, np.uint8) for column in zip(*cases))
        self.assertEqual(list(matches(bob_bases, alice_bases, intensities)),
                         [b == a and i != NOT_SENT for b, a, _, i in cases])
        sifted = sift(bob_bases, bits, alice_bases, intensities)
        key = [(bit, i) for b, a, bit, i in cases if b == a == Z and i != 3]
        test = [(bit, i) for b, a, bit, i in cases if b == a == X and i != 3]
        self.assertEqual(list(zip(sifted.key, sifted.key_intensity)), key)
        self.assertEqual(list(zip(sifted.test, sifted.test_intensity)), test)
        self.assertEqual(len(key), 6)
        self.assertEqual(NOT_SENT, 3)

    def test_matches_shapes_must_agree(self):
        with self.assertRaisesRegex(ValueError, r"one basis, Alice's basis and intensity per detection"):
            matches([0, 1], [0], [0, 0])
