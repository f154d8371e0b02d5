"""Gateware Toeplitz throughput on each board, from a real place-and-route, next to the host code on this machine.

    python -m bench.toeplitz_gateware [--board NAME ...]

Builds the Toeplitz bench top for each board with the open toolchain (minutes: the ECP5-85F build takes about
ten), reads nextpnr's Fmax and utilisation, and reports bit-operations per second (accumulator cells x W x Fmax)
and Mbit/s of key input for the board's benchmark block, using the core's cycle count per block at full rate
(``qkdlink.sim.toeplitz.block_cycles``, which the gateware tests check cycle for cycle). The baseline is the host
hash of the same block size, measured in the same run.
"""

import argparse
import sys
import tempfile
import time

import numpy as np

from bench.machine import describe
from qkdlink.boards.build import build
from qkdlink.boards.platforms import BOARDS
from qkdlink.boards.toeplitz_top import ToeplitzBenchTop
from qkdlink.host.toeplitz import toeplitz_hash
from qkdlink.sim.toeplitz import block_cycles


# The block each board is measured with: its largest key block, hashed to half.
BLOCKS = {"icebreaker": 1 << 16, "ulx3s-85f": 1 << 18}


def host_rate(n, m, repeat=5):
    rng = np.random.default_rng(n)
    x = rng.integers(0, 2, n, dtype=np.uint8)
    s = rng.integers(0, 2, n + m - 1, dtype=np.uint8)
    toeplitz_hash(x, s, m)
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        toeplitz_hash(x, s, m)
        best = min(best, time.perf_counter() - started)
    return n / best


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--board", action="append", choices=sorted(BLOCKS),
                        help="board to build (default: all)")
    args = parser.parse_args()

    print(f"machine: {describe()}")
    rows = []
    for name in args.board or list(BLOCKS):
        board = BOARDS[name]
        n = BLOCKS[name]
        m = n // 2
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as build_dir:
            report = build(board, ToeplitzBenchTop(board, n=n, m=m), build_dir=build_dir)
        build_time = time.perf_counter() - started
        fmax = report.sync_fmax * 1e6
        clock = board.frequency
        width, cells = board.toeplitz_width, board.toeplitz_accumulator
        cycles = block_cycles(n, m, width=width, accumulator=cells)
        rows.append(dict(
            board=name, device=board.device, cells=cells, width=width, n=n, m=m,
            utilization=report.utilization, fmax=fmax, clock=clock,
            bitops_fmax=cells * width * fmax, bitops_clock=cells * width * clock,
            rate_fmax=n * fmax / cycles, rate_clock=n * clock / cycles,
            host=host_rate(n, m), build_time=build_time))
        print(f"{name}: built in {build_time:.0f} s", file=sys.stderr)

    print()
    print("| board | device | A | W | LUTs / logic cells | flip-flops | block RAM | Fmax (MHz) | clock (MHz) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        used = row["utilization"]
        if "ICESTORM_LC" in used:
            luts, ffs = used["ICESTORM_LC"], None
            ram = used.get("ICESTORM_RAM", (0, 0))
        else:
            luts, ffs = used["TRELLIS_COMB"], used["TRELLIS_FF"]
            ram = used.get("DP16KD", (0, 0))
        luts_text = f"{luts[0]} / {luts[1]} ({100 * luts[0] / luts[1]:.0f} %)"
        ffs_text = "in the logic cells" if ffs is None else f"{ffs[0]} / {ffs[1]}"
        print(f"| {row['board']} | {row['device']} | {row['cells']} | {row['width']} | {luts_text} | {ffs_text} | "
              f"{ram[0]} / {ram[1]} | {row['fmax'] / 1e6:.1f} | {row['clock'] / 1e6:.0f} |")
    print()
    print("| board | block n -> m | bit-ops/s at Fmax | at the clock | Mbit/s at Fmax | at the clock | "
          "host on this machine (Mbit/s) | build time (s) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['board']} | 2^{row['n'].bit_length() - 1} -> 2^{row['m'].bit_length() - 1} | "
              f"{row['bitops_fmax']:.3g} | {row['bitops_clock']:.3g} | {row['rate_fmax'] / 1e6:.2f} | "
              f"{row['rate_clock'] / 1e6:.2f} | {row['host'] / 1e6:.1f} | {row['build_time']:.0f} |")


if __name__ == "__main__":
    main()
