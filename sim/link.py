"""A whole simulated QKD link: the optical bench feeding Alice's and Bob's protocol stacks.

Alice and Bob run in two threads and talk only through an in-process channel, exactly as two hosts would over
the network; the bench gives each only what its hardware would know (Alice her choices, Bob his clicks).
"""

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..host.channel import LocalChannel
from ..host.entropy import SimulatedEntropy
from ..host.protocol import Alice, Bob, ChoiceMemory, DetectionRecord
from . import optics


__all__ = ["LinkBlock", "PAD_BYTES_PER_BLOCK", "pulses_for", "run_link"]


# One-time pad for the Wegman-Carter tags of a block, each way: a block takes one tag (16 bytes) each way, and the
# session's first tag a hash key (32 bytes) too; the rest is room to spare.
PAD_BYTES_PER_BLOCK = 256


@dataclass(frozen=True)
class LinkBlock:
    """Both sides' results of one simulated block, and the authentication pad it consumed (both ways)."""
    alice: object
    bob: object
    pad_bytes: int = 0

    @property
    def keys_equal(self):
        return (not self.alice.aborted and not self.bob.aborted and
                np.array_equal(self.alice.key, self.bob.key))


def pulses_for(bench, key_bits):
    """Pulses to send for about ``key_bits`` sifted Z-basis bits on ``bench`` (from the closed-form gains)."""
    return max(1, math.ceil(key_bits / optics.sifted_key_probability(bench)))


def run_link(bench, settings, *, pulses, blocks=1, seed, progress=None):
    """Run ``blocks`` blocks of ``pulses`` pulses each; returns a list of :class:`LinkBlock`.

    ``seed`` makes the whole run reproducible: the bench's randomness and both sides' (simulated) entropy come
    from it. A simulation only: real keys take the operating system's entropy.
    """
    seeds = np.random.SeedSequence(seed).spawn(3)
    rng = np.random.default_rng(seeds[0])
    alice_end, bob_end = LocalChannel.authenticated_pair(PAD_BYTES_PER_BLOCK * blocks)
    alice = Alice(alice_end, settings, SimulatedEntropy(seeds[1]))
    bob = Bob(bob_end, settings, SimulatedEntropy(seeds[2]))
    results = []
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="node") as nodes:
        for block in range(blocks):
            record = optics.run(bench, pulses, rng=rng, first_slot=block * pulses)
            choices = ChoiceMemory(record.slot, record.alice_basis, record.alice_bit, record.alice_intensity)
            detections = DetectionRecord(record.slot, record.pattern)
            pad_before = sum(alice_end.pad_consumed.values())
            alice_result = nodes.submit(alice.run_block, block, record.pulses, choices)
            bob_result = nodes.submit(bob.run_block, block, detections)
            results.append(LinkBlock(alice_result.result(), bob_result.result(),
                                     sum(alice_end.pad_consumed.values()) - pad_before))
            if progress is not None:
                progress(block + 1)
    return results
