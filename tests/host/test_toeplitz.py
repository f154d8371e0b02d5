import unittest

import numpy as np

from qkdlink.host.toeplitz import (modified_seed_length, modified_toeplitz_hash, seed_length,
                                   toeplitz_hash)


def naive_toeplitz(x, s, m):
    """The definition, T[i][j] = s[i - j + n - 1], y = T x mod 2, with an explicit matrix."""
    n = len(x)
    matrix = np.array([[s[i - j + n - 1] for j in range(n)] for i in range(m)], dtype=np.int64)
    return (matrix @ np.asarray(x, dtype=np.int64)) % 2


def naive_modified_toeplitz(x, s, m):
    """(T' | I) x mod 2, with T' the m x (n - m) Toeplitz matrix of s and I the m x m identity."""
    n = len(x)
    columns = n - m
    matrix = np.zeros((m, n), dtype=np.int64)
    for i in range(m):
        for j in range(columns):
            matrix[i, j] = s[i - j + columns - 1]
        matrix[i, columns + i] = 1
    return (matrix @ np.asarray(x, dtype=np.int64)) % 2


def row(x, s, i):
    """One output bit straight from the definition, for sizes where the whole matrix would not fit."""
    n = x.size
    window = s[i:i + n][::-1]                   # s[i - j + n - 1] for j = 0 .. n-1
    return int(np.bitwise_xor.reduce(window & x))


class ToeplitzHashTestCase(unittest.TestCase):
    def test_small_cases_match_the_matrix(self):
        rng = np.random.default_rng(2024)
        shapes = [(1, 1), (2, 1), (2, 2), (8, 8), (9, 1), (13, 5), (64, 64), (65, 31), (100, 37), (257, 256)]
        shapes += [(int(n), int(rng.integers(1, n + 1))) for n in rng.integers(1, 400, 20)]
        for n, m in shapes:
            with self.subTest(n=n, m=m):
                x = rng.integers(0, 2, n, dtype=np.uint8)
                s = rng.integers(0, 2, n + m - 1, dtype=np.uint8)
                np.testing.assert_array_equal(toeplitz_hash(x, s, m), naive_toeplitz(x, s, m))

    def test_known_matrix(self):
        # n = 3, m = 2, s = 1,0,0,1: T = [[s2 s1 s0], [s3 s2 s1]] = [[0 0 1], [1 0 0]], so y = (x2, x0).
        self.assertEqual(list(toeplitz_hash([1, 0, 0], [1, 0, 0, 1], 2)), [0, 1])
        self.assertEqual(list(toeplitz_hash([0, 1, 1], [1, 0, 0, 1], 2)), [1, 0])

    def test_all_ones_counts_parity(self):
        # Every entry of T is 1, so every output is the parity of the key: the largest values the FFT sees.
        for n in (1, 2, 1023, 4096):
            self.assertEqual(set(toeplitz_hash(np.ones(n, np.uint8), np.ones(2 * n - 1, np.uint8), n)),
                             {n % 2})

    def test_exact_at_2_to_24(self):
        # The largest size we promise: the full hash by FFT, checked row by row at the edges and at random.
        rng = np.random.default_rng(24)
        n, m = 1 << 24, 1 << 10
        x = rng.integers(0, 2, n, dtype=np.uint8)
        s = rng.integers(0, 2, n + m - 1, dtype=np.uint8)
        y = toeplitz_hash(x, s, m)
        for i in [0, 1, m - 2, m - 1, *rng.integers(0, m, 12)]:
            self.assertEqual(y[i], row(x, s, int(i)), f"row {i}")

    def test_modified_matches_the_matrix(self):
        rng = np.random.default_rng(99)
        for n, m in [(1, 1), (2, 1), (5, 5), (16, 3), (40, 39), (100, 50), (129, 17)]:
            with self.subTest(n=n, m=m):
                x = rng.integers(0, 2, n, dtype=np.uint8)
                s = rng.integers(0, 2, n - 1, dtype=np.uint8)
                self.assertEqual(modified_seed_length(n, m), n - 1)
                np.testing.assert_array_equal(modified_toeplitz_hash(x, s, m), naive_modified_toeplitz(x, s, m))

    def test_errors(self):
        with self.assertRaisesRegex(ValueError, r"needs a seed of 14 bits, not 13"):
            toeplitz_hash(np.zeros(10, np.uint8), np.zeros(13, np.uint8), 5)
        with self.assertRaisesRegex(ValueError, r"output length 11 exceeds the input length 10"):
            toeplitz_hash(np.zeros(10, np.uint8), np.zeros(20, np.uint8), 11)
        with self.assertRaisesRegex(ValueError, r"output length must be a positive integer, not 0"):
            seed_length(10, 0)
        with self.assertRaisesRegex(ValueError, r"input length must be a positive integer"):
            toeplitz_hash([], [], 1)
        with self.assertRaisesRegex(ValueError, r"key must hold only 0 and 1"):
            toeplitz_hash([0, 3], [0, 0], 1)
        with self.assertRaisesRegex(ValueError, r"modified Toeplitz hash of 10 bits to 4 bits needs a seed of 9"):
            modified_toeplitz_hash(np.zeros(10, np.uint8), np.zeros(13, np.uint8), 4)
