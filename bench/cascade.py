"""Cascade reconciliation: efficiency, throughput and round trips, next to textbook Cascade measured in the same run.

    python -m bench.cascade [--runs 3] [--throughput-runs 7] [--max-log10-size 6] [--skip-baseline]

Efficiency is f = leaked bits / (n h(Q)), with Q the actual fraction of flipped bits of each key pair (a binary
symmetric channel); f = 1 is the Shannon limit. Each table cell averages independent key pairs (``--runs`` at
n = 10^6, three times as many at 10^5, ten times at 10^4); ``failed`` counts pairs left unequal (the verification
hash would discard them). Throughput is n over the wall time of both sides in one process on one core (the process
is pinned to one CPU where the OS allows), the zero-latency channel of ``reconcile``: the best and the median of
``--throughput-runs`` key pairs, because a shared machine's speed varies from run to run.

The baseline is textbook Cascade (Brassard and Salvail 1993) as implemented here: k1 = ceil(0.73/Q), k_i = 2 k_(i-1),
four passes, a random permutation for every pass after the first, BINARY on every odd block, the cascade into earlier
passes smallest block first, no reuse of known sub-block parities and no batching (one exchange per block-parity
list and per BINARY step). Its leak and round trips are what a sequential implementation reveals and exchanges; its
speed is that of this small in-process Python loop, which needs no messages at all, so it is not a fair speed
reference for a networked implementation. Also measured: qkdlink with the block sizes of the paper's option (8)
(``block_sizes(..., schedule="option8")``), the schedule that leaks least for long keys.
"""

import argparse
import heapq
import math
import os
import time

import numpy as np

from bench.machine import describe
from qkdlink.host.cascade import CascadeAlice, block_sizes, cascade_bob, reconcile


def binary_entropy(q):
    return 0.0 if q <= 0 or q >= 1 else -q * math.log2(q) - (1 - q) * math.log2(1 - q)


def textbook_cascade(alice, bob, qber, rng):
    """Textbook Cascade; returns Bob's corrected key, the parity bits Alice revealed, and the exchanges."""
    n = alice.size
    bob = bob.copy()
    first = max(1, math.ceil(0.73 / qber)) if qber > 0 else n
    leaked = exchanges = 0
    passes = []
    for index in range(4):
        size = min(first << index, n)
        perm = np.arange(n) if index == 0 else rng.permutation(n)
        inv = np.empty(n, dtype=np.int64)
        inv[perm] = np.arange(n)
        prefix = np.zeros(n + 1, dtype=np.uint8)
        np.bitwise_xor.accumulate(alice[perm], out=prefix[1:])
        bob_order = bob[perm]                           # Bob's bits in this pass's order, kept up to date
        starts = np.arange(0, n, size)
        alice_blocks = np.bitwise_xor.reduceat(alice[perm], starts).tolist()
        bob_blocks = np.bitwise_xor.reduceat(bob_order, starts).tolist()
        leaked += len(starts)
        exchanges += 1
        passes.append((size, perm, inv, prefix, bob_order, alice_blocks, bob_blocks))
        odd = [(size, index, block) for block in range(len(starts)) if alice_blocks[block] != bob_blocks[block]]
        heapq.heapify(odd)
        while odd:
            _, j, block = heapq.heappop(odd)
            size_j, perm_j, _, prefix_j, order_j, alice_j, bob_j = passes[j]
            if alice_j[block] == bob_j[block]:
                continue                                # an earlier correction made it even
            start, end = block * size_j, min((block + 1) * size_j, n)
            while end - start > 1:                      # BINARY: Alice reveals the first half's parity
                middle = (start + end + 1) // 2
                leaked += 1
                exchanges += 1
                if int(prefix_j[middle] ^ prefix_j[start]) != int(order_j[start:middle].sum()) & 1:
                    end = middle
                else:
                    start = middle
            bit = int(perm_j[start])
            bob[bit] ^= 1
            for p, (size_p, _, inv_p, _, order_p, alice_p, bob_p) in enumerate(passes):
                position = int(inv_p[bit])
                order_p[position] ^= 1
                block_p = position // size_p
                bob_p[block_p] ^= 1
                if bob_p[block_p] != alice_p[block_p]:
                    heapq.heappush(odd, (size_p, p, block_p))
    return bob, leaked, exchanges


def key_pair(rng, n, qber):
    alice = rng.integers(0, 2, n, dtype=np.uint8)
    errors = (rng.random(n) < qber).astype(np.uint8)
    return alice, alice ^ errors, int(errors.sum())


def qkdlink(alice, bob, qber, rng):
    result = reconcile(alice, bob, qber, shuffle_seed=rng.bytes(32))
    return result.key, result.leaked_bits, result.round_trips


def option8(alice, bob, qber, rng):
    sizes = block_sizes(qber, alice.size, schedule="option8")
    result = reconcile(alice, bob, qber, shuffle_seed=rng.bytes(32), block_sizes=sizes)
    return result.key, result.leaked_bits, result.round_trips


IMPLEMENTATIONS = {"qkdlink": qkdlink, "option (8)": option8, "textbook": textbook_cascade}


def efficiency_table(sizes, qbers, runs, names, rng):
    print("## Efficiency f = leak / (n h(Q)), mean over key pairs; round trips, mean; key pairs left unequal")
    print()
    print("| n | Q | pairs | " + " | ".join(f"{name} f" for name in names) + " | "
          + " | ".join(f"{name} round trips" for name in names) + " | "
          + " | ".join(f"{name} failed" for name in names) + " |")
    print("|---:|---:|---:|" + "---:|" * (3 * len(names)))
    for n in sizes:
        count = runs * {10**4: 10, 10**5: 3}.get(n, 1)
        for qber in qbers:
            efficiency = {name: [] for name in names}
            trips = {name: [] for name in names}
            failed = dict.fromkeys(names, 0)
            for _ in range(count):
                alice, bob, errors = key_pair(rng, n, qber)
                ideal = n * binary_entropy(errors / n)
                for name in names:
                    key, leaked, exchanges = IMPLEMENTATIONS[name](alice, bob, qber, rng)
                    efficiency[name].append(leaked / ideal)
                    trips[name].append(exchanges)
                    failed[name] += not np.array_equal(key, alice)
            cells = [f"{np.mean(efficiency[name]):.3f}" for name in names]
            cells += [f"{np.mean(trips[name]):,.0f}" for name in names]
            cells += [f"{failed[name]}" for name in names]
            print(f"| 10^{round(math.log10(n))} | {qber:.0%} | {count} | " + " | ".join(cells) + " |", flush=True)
    print()


def timed_sides(alice_key, bob_key, qber, seed):
    """One reconciliation with each side's time measured apart, and the bytes the messages would take."""
    started = time.perf_counter()
    alice = CascadeAlice(alice_key, shuffle_seed=seed)
    alice_time = time.perf_counter() - started
    started = time.perf_counter()
    bob = cascade_bob(bob_key, qber, shuffle_seed=seed)
    request = next(bob)
    bob_time = time.perf_counter() - started
    wire = 0
    try:
        while True:
            started = time.perf_counter()
            reply = alice.answer(request)
            alice_time += time.perf_counter() - started
            wire += len(request.encode()) + len(reply.encode())
            started = time.perf_counter()
            request = bob.send(reply)
            bob_time += time.perf_counter() - started
    except StopIteration as stop:
        bob_time += time.perf_counter() - started
        return stop.value, alice_time, bob_time, wire


def throughput_table(n, qber, runs, names, rng):
    print(f"## Throughput at Q = {qber:.0%}, n = 10^{round(math.log10(n))} (one core, zero-latency channel)")
    print()
    print("| implementation | best Mbit/s | median Mbit/s | round trips (median) | f (mean) |")
    print("|---|---:|---:|---:|---:|")
    pairs = [key_pair(rng, n, qber) for _ in range(runs)]
    for name in names:                                  # warm-up: first-call costs stay out of the timing
        IMPLEMENTATIONS[name](*key_pair(rng, 10_000, qber)[:2], qber, rng)
    for name in names:
        times, trips, leaks = [], [], []
        for alice, bob, errors in pairs:
            started = time.perf_counter()
            key, leaked, exchanges = IMPLEMENTATIONS[name](alice, bob, qber, rng)
            times.append(time.perf_counter() - started)
            trips.append(exchanges)
            leaks.append(leaked / (n * binary_entropy(errors / n)))
            if not np.array_equal(key, alice):
                print(f"({name} left a key pair unequal: {np.count_nonzero(key ^ alice)} errors)")
        times = np.array(times)
        print(f"| {name} | {n / times.min() / 1e6:.2f} | {n / np.median(times) / 1e6:.2f} | "
              f"{np.median(trips):,.0f} | {np.mean(leaks):.3f} |", flush=True)
    print()
    # Where the time goes, for qkdlink: each side measured apart, and what the messages would weigh as bytes.
    alices, bobs, wires = [], [], []
    for alice, bob, _ in pairs:
        _, alice_time, bob_time, wire = timed_sides(alice, bob, qber, rng.bytes(32))
        alices.append(alice_time)
        bobs.append(bob_time)
        wires.append(wire)
    print(f"qkdlink, median over the same pairs: Alice {np.median(alices):.3f} s, Bob {np.median(bobs):.3f} s "
          f"(without the channel), {np.median(wires) / 1e3:,.0f} kB of encoded messages. Block sizes: "
          f"{block_sizes(qber, n)} (qkdlink), {block_sizes(qber, n, schedule='option8')} (option (8)), then halves.")
    print()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="key pairs per cell at n = 10^6 (default: %(default)s)")
    parser.add_argument("--throughput-runs", type=int, default=7,
                        help="key pairs timed at Q = 2 %%, n = 10^6 (default: %(default)s)")
    parser.add_argument("--max-log10-size", type=int, default=6, help="largest n is 10^this (default: %(default)s)")
    parser.add_argument("--skip-baseline", action="store_true", help="do not run textbook Cascade and option (8)")
    args = parser.parse_args()

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    rng = np.random.default_rng(2026)                  # simulation data: seeded for reproducibility
    print(f"machine: {describe()}")
    print()
    names = ["qkdlink"] if args.skip_baseline else list(IMPLEMENTATIONS)
    sizes = [10**e for e in range(4, args.max_log10_size + 1)]
    throughput_table(10**6, 0.02, args.throughput_runs, names, rng)
    efficiency_table(sizes, [0.01, 0.02, 0.05, 0.08], args.runs, names, rng)


if __name__ == "__main__":
    main()
