"""Where the protocol's random choices come from.

Privacy-amplification and verification seeds, Cascade's permutations and Bob's squashing bits must come from a
real entropy source: :class:`OSEntropy`, the operating system's, is the default everywhere. Simulations take a
:class:`SimulatedEntropy` with a seed so that a run can be reproduced, and say so where they report.
"""

import secrets

import numpy as np


__all__ = ["OSEntropy", "SimulatedEntropy"]


class OSEntropy:
    """Randomness from the operating system (``secrets``): for real keys."""

    simulated = False

    def bytes(self, count):
        return secrets.token_bytes(count)

    def bits(self, count):
        """``count`` uniform bits as a uint8 vector."""
        return np.unpackbits(np.frombuffer(self.bytes((count + 7) // 8), dtype=np.uint8),
                             count=count, bitorder="little")


class SimulatedEntropy:
    """Reproducible pseudo-randomness from a seed: for simulations only, never for real keys."""

    simulated = True

    def __init__(self, seed):
        self._rng = np.random.default_rng(seed)

    def bytes(self, count):
        return self._rng.bytes(count)

    def bits(self, count):
        return self._rng.integers(0, 2, count, dtype=np.uint8)
