"""Simulated boards: clock cycles a second of each node under Verilator, and one block of the link end to end
through the gateware, next to the same block through the gateware's models (the baseline).

    python -m bench.boards [--cycles 1000000] [--frames 294] [--efficiency 0.3] [--skip-block]

The nodes are those of ``qkd demo --rtl`` (:func:`qkdlink.sim.boardlink.simulated_link`: ECP5-sized memories, the
link's timing). Each is stepped alone, idle after reset, for ``--cycles`` cycles, a million at a time through one
call of the compiled stepper. The block is the smallest of this link that gives a key at eps_sec 1e-3 (0 km,
efficiency 0.3, p_Z 0.5: 294 frames of 4096 slots), the one ``tests/test_cli.py`` runs; its wall time includes
the hosts' protocol (sifting, estimation, Cascade, privacy amplification). The simulation is seeded (``--seed``).
"""

import argparse
import time

from bench.machine import describe
from qkdlink.host.finite_key import DecoySettings
from qkdlink.host.protocol import ProtocolSettings
from qkdlink.sim import optics
from qkdlink.sim.boardlink import LinkTiming, node_configuration, run_board_link
from qkdlink.sim.verilator import VerilatedModel, build_library


def node_speed(cycles):
    """``{node: cycles a second}`` for Alice's and Bob's nodes stepped alone."""
    from qkdlink.gateware.node import AliceNode, BobNode

    config = node_configuration(LinkTiming())
    speeds = {}
    for name, node in (("alice", AliceNode), ("bob", BobNode)):
        library, ports = build_library(node(config), f"{name}_node")
        model = VerilatedModel(library, ports)
        model.step(1000)                        # out of reset
        started = time.perf_counter()
        done = 0
        while done < cycles:
            step = min(1_000_000, cycles - done)
            model.step(step)
            done += step
        speeds[name] = cycles / (time.perf_counter() - started)
    return speeds


def one_block(args):
    """``{boards: (seconds, secret bits, keys equal)}`` for the model and the RTL boards."""
    timing = LinkTiming()
    intensities, probabilities = (0.6, 0.2, 2e-4), (0.5, 0.3, 0.2)
    bench = optics.OpticalBench(
        source=optics.Source(intensities=intensities, probabilities=probabilities, p_z=args.p_z),
        fibre=optics.Fibre(length_km=0),
        # As `qkd demo`: no dead time or afterpulses (the board path's detectors are the bench's).
        receiver=optics.Receiver(p_z=args.p_z, efficiency=args.efficiency, dead_time=0, afterpulse=0),
        slot_rate_hz=1e9 / timing.slot_ns)
    settings = ProtocolSettings(DecoySettings(intensities, probabilities), eps_sec=1e-3, eps_cor=1e-9)
    results = {}
    for rtl in (False, True):
        started = time.perf_counter()
        [block] = run_board_link(bench, settings, frames=args.frames, seed=args.seed, rtl=rtl, timing=timing)
        elapsed = time.perf_counter() - started
        bits = 0 if block.alice.aborted else int(block.alice.key.size)
        results["rtl" if rtl else "model"] = (elapsed, bits, block.keys_equal)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=1_000_000, help="cycles to step each node (default 1000000)")
    parser.add_argument("--frames", type=int, default=294, help="frames of the block (default 294)")
    parser.add_argument("--efficiency", type=float, default=0.3, help="detector efficiency (default 0.3)")
    parser.add_argument("--p-z", type=float, default=0.5, help="Z-basis probability (default 0.5)")
    parser.add_argument("--seed", type=int, default=1, help="simulation seed (default 1)")
    parser.add_argument("--skip-block", action="store_true", help="measure the nodes' speed only")
    args = parser.parse_args()
    print(describe())
    for name, speed in node_speed(args.cycles).items():
        print(f"{name} node alone: {speed / 1e6:.2f} M cycles/s")
    if not args.skip_block:
        print(f"one block of {args.frames} frames of {1 << LinkTiming().frame_bits} slots:")
        print("| boards | wall time | frames/s | secret bits | keys equal |")
        print("|---|---:|---:|---:|---|")
        for boards, (seconds, bits, equal) in one_block(args).items():
            print(f"| {boards} | {seconds:.1f} s | {args.frames / seconds:.1f} | {bits} | {equal} |")


if __name__ == "__main__":
    main()
