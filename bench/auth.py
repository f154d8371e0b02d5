"""Authentication cost of a block: one-time pad spent against the key the block makes.

    python -m bench.auth [--sizes 1e6 4e6] [--distance 25] [--blocks 3]

Runs blocks of the protocol in process over an authenticated channel (`LocalChannel.authenticated_pair`), with
the demo's link settings. Baseline, in the same run: the same blocks with a tag on every message (what the
channel did before a block's messages were authenticated by its closing messages). The pad and tags are those of
the blocks after the first (the first also draws the session's hash keys); the wall time is per block.
"""

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from bench.machine import describe
from qkdlink.cli import DEMO_INTENSITIES, DEMO_P_Z, DEMO_PROBABILITIES
from qkdlink.host.channel import LocalChannel
from qkdlink.host.entropy import SimulatedEntropy
from qkdlink.host.finite_key import DecoySettings
from qkdlink.host.protocol import Alice, Bob, ChoiceMemory, DetectionRecord, ProtocolSettings
from qkdlink.sim import optics
from qkdlink.sim.link import pulses_for


class TagEveryMessage:
    """An endpoint that tags every message it sends, whatever the protocol asks: the baseline."""

    def __init__(self, endpoint):
        self.endpoint = endpoint

    def __getattr__(self, name):
        return getattr(self.endpoint, name)

    def send(self, message, *, tagged=True):
        self.endpoint.send(message)


def run(bench, settings, pulses, *, blocks, seed, baseline):
    alice_end, bob_end = LocalChannel.authenticated_pair(1 << 20)
    wrap = TagEveryMessage if baseline else (lambda endpoint: endpoint)
    alice = Alice(wrap(alice_end), settings, SimulatedEntropy(seed + 1))
    bob = Bob(wrap(bob_end), settings, SimulatedEntropy(seed + 2))
    rng = np.random.default_rng(seed)
    rows = []
    with ThreadPoolExecutor(2) as pool:
        for block in range(blocks):
            record = optics.run(bench, pulses, rng=rng, first_slot=block * pulses)
            choices = ChoiceMemory(record.slot, record.alice_basis, record.alice_bit, record.alice_intensity)
            before = (sum(alice_end.pad_consumed.values()), alice_end.authenticator.tags_sent +
                      bob_end.authenticator.tags_sent, alice_end.messages_sent + bob_end.messages_sent)
            started = time.perf_counter()
            alice_result = pool.submit(alice.run_block, block, record.pulses, choices)
            bob_result = pool.submit(bob.run_block, block, DetectionRecord(record.slot, record.pattern))
            a, b = alice_result.result(), bob_result.result()
            elapsed = time.perf_counter() - started
            if a.key is None or b.key is None or not np.array_equal(a.key, b.key):
                raise SystemExit(f"block {block} gave no common key: {a.abort_reason or b.abort_reason}")
            after = (sum(alice_end.pad_consumed.values()), alice_end.authenticator.tags_sent +
                     bob_end.authenticator.tags_sent, alice_end.messages_sent + bob_end.messages_sent)
            rows.append((a.key.size, *(x - y for x, y in zip(after, before)), elapsed))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e6, 4e6])
    parser.add_argument("--distance", type=float, default=25.0)
    parser.add_argument("--blocks", type=int, default=3)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()

    source = optics.Source(intensities=DEMO_INTENSITIES, probabilities=DEMO_PROBABILITIES, p_z=DEMO_P_Z)
    receiver = optics.Receiver(p_z=DEMO_P_Z, dead_time=0, afterpulse=0)
    settings = ProtocolSettings(DecoySettings(DEMO_INTENSITIES, DEMO_PROBABILITIES))
    bench = optics.OpticalBench(source=source, fibre=optics.Fibre(length_km=args.distance), receiver=receiver)
    print(f"machine: {describe()}")
    print(f"{args.distance:g} km, {args.blocks} blocks a row; pad, tags and messages of the blocks after the first, "
          f"both ways")
    print()
    print("| sifted bits | tags | secret bits | messages | tags | pad bytes | pad against key | s a block |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for size in args.sizes:
        pulses = pulses_for(bench, int(size))
        for baseline in (True, False):
            rows = run(bench, settings, pulses, blocks=args.blocks, seed=args.seed + int(size), baseline=baseline)
            later = rows[1:] or rows
            key = np.mean([row[0] for row in later])
            messages, tags, pad = (np.mean([row[i] for row in later]) for i in (3, 2, 1))
            seconds = np.mean([row[4] for row in rows])
            print(f"| {size:.0e} | {'every message' if baseline else 'closing messages'} | {key:,.0f} | "
                  f"{messages:.0f} | {tags:.0f} | {pad:,.0f} | {100 * 8 * pad / key:.2f} % | {seconds:.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
