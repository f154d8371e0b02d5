"""Fmax and resources of the capture path on each board, from a real place-and-route of its bench tops.

    python -m bench.capture_build [--board NAME ...] [--role bob|alice ...] [--keep DIR]

Builds :class:`qkdlink.boards.capture_top.BobCaptureTop` and :class:`~qkdlink.boards.capture_top.AliceCaptureTop`
for each board with the open toolchain (one to two minutes each on one core), and prints a markdown table of
nextpnr's figures: the ``sync`` clock's Fmax against the board's target, logic, flip-flops, block RAM, DSPs and
I/O. On the iCE40 a logic cell (``ICESTORM_LC``) is a LUT4 and a flip-flop; the LUT4 and flip-flop counts are
those of the synthesised netlist. The counts include the bench tops' stand-ins (settings shift register, PRBS
generators, the XOR tree that folds every output into an LED): a few hundred cells. For each build that misses its
clock, nextpnr's critical path follows the table.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from bench.machine import describe
from qkdlink.boards.build import build
from qkdlink.boards.capture_top import AliceCaptureTop, BobCaptureTop, critical_paths
from qkdlink.boards.platforms import BOARDS


ROLES = {"bob": BobCaptureTop, "alice": AliceCaptureTop}


def netlist_cells(build_dir):
    """Cell counts by type in the synthesised netlist (``top.json``)."""
    netlist = json.loads((Path(build_dir) / "top.json").read_text())
    [top] = [module for module in netlist["modules"].values() if module["attributes"].get("top")]
    counts = {}
    for cell in top["cells"].values():
        counts[cell["type"]] = counts.get(cell["type"], 0) + 1
    return counts


def sync_clock(report, board):
    """``(achieved, constraint)`` of the clock constrained at the board's target (the ``sync`` domain)."""
    [figures] = [figures for figures in report.fmax.values()
                 if abs(figures[1] - board.frequency / 1e6) < 0.1]
    return figures


def build_one(board, role, build_dir):
    started = time.perf_counter()
    report = build(board, ROLES[role](board), build_dir=build_dir)
    build_time = time.perf_counter() - started
    failing = [clock for clock, (achieved, constraint) in report.fmax.items() if achieved < constraint]
    return dict(board=board, role=role, report=report, cells=netlist_cells(build_dir),
                paths=critical_paths(build_dir, failing), build_time=build_time)


def _used(utilization, kind):
    used, available = utilization.get(kind, (0, 0))
    return f"{used} / {available}"


def row(result):
    board, report, cells = result["board"], result["report"], result["cells"]
    used = report.utilization
    achieved, constraint = sync_clock(report, board)
    fmax = f"{achieved:.1f} / {constraint:.0f}" + ("" if achieved >= constraint else " **fail**")
    if "ICESTORM_LC" in used:
        lc, available = used["ICESTORM_LC"]
        logic = f"{lc} / {available} LC ({100 * lc / available:.0f} %), {cells.get('SB_LUT4', 0)} LUT4"
        ffs = str(sum(count for kind, count in cells.items() if kind.startswith("SB_DFF")))
        ram = f"EBR {_used(used, 'ICESTORM_RAM')}, SPRAM {_used(used, 'ICESTORM_SPRAM')}"
        dsp = _used(used, "ICESTORM_DSP")
        pins = _used(used, "SB_IO")
    else:
        comb, available = used["TRELLIS_COMB"]
        logic = f"{comb} / {available} ({100 * comb / available:.0f} %), {cells.get('LUT4', 0)} LUT4"
        ffs = _used(used, "TRELLIS_FF")
        ram = f"DP16KD {_used(used, 'DP16KD')}"
        dsp = _used(used, "MULT18X18D")
        pins = _used(used, "TRELLIS_IO")
    return (f"| {board.name} | {result['role']} | {fmax} | {logic} | {ffs} | {ram} | {dsp} | {pins} | "
            f"{result['build_time']:.0f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--board", action="append", choices=sorted(BOARDS),
                        help="board to build for (default: all)")
    parser.add_argument("--role", action="append", choices=sorted(ROLES),
                        help="node role to build (default: both)")
    parser.add_argument("--keep", metavar="DIR", type=Path,
                        help="keep the build directories under DIR (default: temporary)")
    args = parser.parse_args()

    print(f"machine: {describe()}")
    results = []
    for name in args.board or list(BOARDS):
        for role in args.role or list(ROLES):
            if args.keep:
                build_dir = args.keep / f"{name}-{role}"
                results.append(build_one(BOARDS[name], role, build_dir))
            else:
                with tempfile.TemporaryDirectory() as build_dir:
                    results.append(build_one(BOARDS[name], role, build_dir))
            print(f"{name} {role}: built in {results[-1]['build_time']:.0f} s", file=sys.stderr)

    print()
    print("| board | role | Fmax / target (MHz) | logic cells / LUT4 | flip-flops | RAM | DSP | I/O | "
          "build (s) |")
    print("|---|---|---:|---|---:|---|---:|---:|---:|")
    for result in results:
        print(row(result))
    for result in results:
        if result["paths"]:
            print(f"\nCritical paths of {result['board'].name} {result['role']}, failing clocks only:\n")
            print("```")
            print(result["paths"])
            print("```")


if __name__ == "__main__":
    main()
