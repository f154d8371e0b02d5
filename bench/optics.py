"""Simulated optical bench throughput: sifted Z-basis bits per second, next to a per-slot simulation in the same run.

    python -m bench.optics [--targets 1e6 1e7] [--naive-max-pulses 2e8] [--seed 2026]

For each target number of sifted Z-basis bits (Alice and Bob's squashed basis both Z), runs the default bench
(25 km, Lim et al.'s receiver with dead time and afterpulsing) with ``qkdlink.sim.optics.run`` in blocks of whole
frames until the target is reached, and reports the wall time. The baseline draws every slot: Alice's three
choices, then each detector's click from its closed-form per-slot probability, then the same dead-time and
afterpulse stage (``register_clicks``). It runs on the same number of pulses while that is at most
--naive-max-pulses; beyond, its time is extrapolated linearly from its largest measured run (the table says so).
"""

import argparse
import math
import time

import numpy as np

from bench.machine import describe
from qkdlink.host.sifting import squash
from qkdlink.sim import optics


def sifted_counts(record, rng, counts):
    """Squash Bob's patterns as his host does and add per-intensity detections, sifted Z bits and their errors."""
    random_bits = rng.integers(0, 2, (len(record), 2), dtype=np.uint8)
    basis, bit = squash(record.pattern, random_bits)
    key = (basis == optics.Z) & (record.alice_basis == optics.Z)
    intensities = len(counts["detections"])
    counts["detections"] += np.bincount(record.alice_intensity, minlength=intensities)
    counts["sifted"] += np.bincount(record.alice_intensity[key], minlength=intensities)
    counts["errors"] += np.bincount(record.alice_intensity[key & (bit != record.alice_bit)], minlength=intensities)
    return int(np.count_nonzero(key))


def fresh_counts(bench):
    size = len(bench.source.intensities)
    return {name: np.zeros(size, dtype=np.int64) for name in ("detections", "sifted", "errors")}


def ours(bench, target, rng, *, max_block=1 << 27):
    """Run the detection-rate simulation in blocks of whole frames until ``target`` sifted Z bits; time it."""
    rate = optics.sifted_key_probability(bench)          # without dead time: a slight overestimate
    counts = fresh_counts(bench)
    pulses = sifted = detections = 0
    started = time.perf_counter()
    while sifted < target:
        wanted = (target - sifted) / rate * 1.03
        frames = max(1, min(max_block // bench.frame_slots, math.ceil(wanted / bench.frame_slots)))
        block = frames * bench.frame_slots
        record = optics.run(bench, block, rng=rng, first_slot=pulses)
        sifted += sifted_counts(record, rng, counts)
        detections += len(record)
        pulses += block
    return time.perf_counter() - started, pulses, detections, sifted, counts


def click_table(bench):
    """Per-slot click probability of each detector for each of Alice's (basis, bit, intensity) choices."""
    source, receiver = bench.source, bench.receiver
    fibre = optics.transmittance(bench.fibre)
    table = np.empty((2, 2, len(source.intensities), 4))
    for basis in (0, 1):
        for bit in (0, 1):
            # The bench's own routing of a photon to the detectors (efficiency included): one model of the
            # receiver, so that the baseline differs only in drawing every slot.
            route = optics._routing(receiver, basis, bit)
            for k, mu in enumerate(source.intensities):
                table[basis, bit, k] = 1 - (1 - receiver.dark_count) * np.exp(-mu * fibre * route)
    return table.reshape(-1, 4)


def naive_block(bench, start, pulses, rng, chunk=1 << 22):
    """Every slot of one block drawn: returns a Record of the same model (detectors reset at the block's start)."""
    source, receiver = bench.source, bench.receiver
    click = click_table(bench)
    count = len(source.intensities)
    intensity_cumulative = np.cumsum(source.probabilities)
    intensity_cumulative[-1] = 1.0
    choices = np.empty(pulses, dtype=np.uint8)
    candidates = [[] for _ in range(4)]
    for offset in range(0, pulses, chunk):
        size = min(chunk, pulses - offset)
        basis = rng.random(size) >= source.p_z
        bit = rng.integers(0, 2, size, dtype=np.uint8)
        intensity = np.searchsorted(intensity_cumulative, rng.random(size), side="right")
        choice = ((basis * 2 + bit) * count + intensity).astype(np.uint8)
        choices[offset:offset + size] = choice
        for detector in range(4):
            fired = np.flatnonzero(rng.random(size) < click[choice, detector])
            candidates[detector].append(start + offset + fired)
    pattern_slots, pattern_bits = [], []
    for detector in range(4):
        registered = optics.register_clicks(np.concatenate(candidates[detector]), receiver, rng=rng,
                                            end=start + pulses)
        pattern_slots.append(registered)
        pattern_bits.append(np.full(registered.size, 1 << detector, dtype=np.uint8))
    slots, inverse = np.unique(np.concatenate(pattern_slots), return_inverse=True)
    pattern = np.zeros(slots.size, dtype=np.uint8)
    np.bitwise_or.at(pattern, inverse, np.concatenate(pattern_bits))
    choice = choices[slots - start].astype(np.int64)
    return optics.Record(pulses=pulses, slot=slots, alice_basis=(choice // (2 * count)).astype(np.uint8),
                         alice_bit=(choice // count % 2).astype(np.uint8),
                         alice_intensity=(choice % count).astype(np.uint8), pattern=pattern,
                         frame_slots=bench.frame_slots)


def naive(bench, pulses, rng, *, block=1 << 24):
    counts = fresh_counts(bench)
    sifted = 0
    started = time.perf_counter()
    for start in range(0, pulses, block):
        sifted += sifted_counts(naive_block(bench, start, min(block, pulses - start), rng), rng, counts)
    return time.perf_counter() - started, sifted, counts


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", type=float, nargs="+", default=[1e6, 1e7])
    parser.add_argument("--naive-max-pulses", type=float, default=2e8)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()

    bench = optics.OpticalBench()
    rng = np.random.default_rng(args.seed)               # simulation data: seeded for reproducibility
    # Warm-up with one block of the size the timed runs use: imports, first allocations and page faults.
    sifted_counts(optics.run(bench, 1 << 27, rng=rng), rng, fresh_counts(bench))
    print(f"machine: {describe()}")
    print(f"bench: {bench.fibre.length_km} km, source {bench.source}, receiver {bench.receiver}")
    print()
    print("| sifted Z bits wanted | pulses | detections | sifted Z bits | qkdlink (s) | sifted bits/s | "
          "per-slot baseline (s) | baseline sifted bits/s | speed-up |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    largest_naive = None
    last_counts = None
    for target in args.targets:
        target = int(target)
        seconds, pulses, detections, sifted, counts = ours(bench, target, rng)
        last_counts = (pulses, counts)
        if pulses <= args.naive_max_pulses:
            naive_seconds, naive_sifted, _ = naive(bench, pulses, rng)
            largest_naive = (pulses, naive_seconds)
            baseline = f"{naive_seconds:.1f}"
            baseline_rate = f"{naive_sifted / naive_seconds:,.0f}"
        elif largest_naive is not None:
            naive_seconds = largest_naive[1] * pulses / largest_naive[0]
            baseline = f"~{naive_seconds:.0f} (extrapolated from {largest_naive[0]:.3g} pulses)"
            baseline_rate = f"~{sifted / naive_seconds:,.0f}"
        else:
            naive_seconds, baseline, baseline_rate = math.nan, "not run", "-"
        print(f"| {target:.0e} | {pulses:.3e} | {detections:,} | {sifted:,} | {seconds:.2f} | "
              f"{sifted / seconds:,.0f} | {baseline} | {baseline_rate} | "
              f"{'-' if math.isnan(naive_seconds) else f'{naive_seconds / seconds:.0f}x'} |",
              flush=True)

    # The largest run against the closed form (which leaves out dead time and afterpulsing).
    pulses, counts = last_counts
    expected = optics.gains(bench)
    print()
    print(f"largest run ({pulses:.3e} pulses) against the closed form without dead time and afterpulsing:")
    print()
    print("| intensity | mu | gain (measured) | gain (closed form) | sifted Z per pulse (measured) | (closed form) | "
          "Z QBER (measured) | (closed form) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for k, (mu, p_k) in enumerate(zip(bench.source.intensities, bench.source.probabilities)):
        sent = pulses * p_k
        print(f"| {k} | {mu:g} | {counts['detections'][k] / sent:.4e} | {expected.gain[k]:.4e} | "
              f"{counts['sifted'][k] / sent:.4e} | {expected.sifted[0, k]:.4e} | "
              f"{counts['errors'][k] / max(counts['sifted'][k], 1):.4f} | {expected.error[0, k]:.4f} |")


if __name__ == "__main__":
    main()
