"""Host Toeplitz hashing throughput, next to a plain numpy FFT convolution measured in the same run.

    python -m bench.toeplitz_host [--max-log2 24] [--repeat 5]

For n = 2^16 ... 2^24 and m = n/2, reports Mbit/s of input (the best of --repeat runs after a warm-up, as a
stream of equal blocks would see) and the largest distance of any convolution value from an integer, the margin
that keeps the FFT exact (it must stay far below 1/2; the hash refuses anything above 1/8).
"""

import argparse
import time

import numpy as np

from bench.machine import describe
from qkdlink.host.toeplitz import toeplitz_hash, toeplitz_rounding_error


def plain_fft_hash(x, s, m):
    """The textbook way: full linear convolution by complex FFT of the next power of two, then mod 2."""
    n = x.size
    length = 1 << (2 * n + m - 2).bit_length()
    values = np.fft.ifft(np.fft.fft(x, length) * np.fft.fft(s, length)).real[n - 1:n - 1 + m]
    return (np.rint(values).astype(np.int64) & 1).astype(np.uint8)


def best_time(function, repeat):
    function()                                  # warm-up: plans, page faults, buffers
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - started)
    return best, result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--min-log2", type=int, default=16)
    parser.add_argument("--max-log2", type=int, default=24)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    rng = np.random.default_rng(2026)           # simulation data: seeded for reproducibility
    print(f"machine: {describe()}")
    print()
    print("| n | m | qkdlink host (Mbit/s) | plain numpy FFT (Mbit/s) | speed-up | max rounding error |")
    print("|---:|---:|---:|---:|---:|---:|")
    for log2 in range(args.min_log2, args.max_log2 + 1):
        n = 1 << log2
        m = n // 2
        x = rng.integers(0, 2, n, dtype=np.uint8)
        s = rng.integers(0, 2, n + m - 1, dtype=np.uint8)
        repeat = args.repeat if log2 < 23 else 2
        ours, y = best_time(lambda: toeplitz_hash(x, s, m), repeat)
        plain, y_plain = best_time(lambda: plain_fft_hash(x, s, m), repeat)
        if not np.array_equal(y, y_plain):
            raise SystemExit(f"n = 2^{log2}: the two methods disagree")
        error = toeplitz_rounding_error(x, s, m)
        print(f"| 2^{log2} | 2^{log2 - 1} | {n / ours / 1e6:.1f} | {n / plain / 1e6:.1f} | "
              f"{plain / ours:.1f}x | {error:.1e} |", flush=True)

    # The largest values an FFT can see: every key and seed bit set, so every output is the sum of n ones.
    n = 1 << args.max_log2
    ones = np.ones(n, np.uint8)
    error = toeplitz_rounding_error(ones, np.ones(n + n // 2 - 1, np.uint8), n // 2)
    print()
    print(f"all-ones key and seed at n = 2^{args.max_log2}, m = 2^{args.max_log2 - 1}: "
          f"max rounding error {error:.1e}")


if __name__ == "__main__":
    main()
