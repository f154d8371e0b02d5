# amaranth: UnusedElaboratable=no
"""The gateware Toeplitz core as Verilog under Verilator, driven by cocotb, against the host model.

The pytest entry points at the bottom convert the Amaranth core to Verilog, build it with Verilator and run the
``@cocotb.test()`` coroutines above them in the simulator process, which reads the core's parameters from the
environment. Every wait is bounded, so a lost beat fails the test instead of hanging it.
"""

import os
import random
from pathlib import Path

import cocotb
import numpy as np

from qkdlink.gateware.toeplitz import ToeplitzHash
from qkdlink.host.toeplitz import toeplitz_hash
from qkdlink.sim.toeplitz import beats_to_bits, key_beats, passes, seed_beats
from tests.cocotb import harness


def _core():
    """The core as the simulator process sees it: parameters from the environment the pytest side sets."""
    return ToeplitzHash(width=int(os.environ["TOEPLITZ_WIDTH"]),
                        accumulator=int(os.environ["TOEPLITZ_ACCUMULATOR"]),
                        max_n=int(os.environ["TOEPLITZ_MAX_N"]))


class TB:
    """Drives the three input streams and collects the output stream, each with random stalls."""

    def __init__(self, dut, *, seed, stall=0.3, timeout=20_000):
        self.dut = dut
        self.core = _core()
        self.rng = random.Random(seed)
        self.stall = stall
        self.timeout = timeout
        self.block_layout = self.core.signature.members["i_block"].signature.members["payload"].shape
        self.hash_layout = self.core.signature.members["o_hash"].signature.members["payload"].shape

    async def start(self):
        await harness.start(self.dut, zero=("i_block__valid", "i_key__valid", "i_seed__valid", "o_hash__ready"))

    async def get(self):
        """Wait (boundedly) for one o_hash beat, take it and return it as a struct constant."""
        await harness.idle(self.dut, self.rng, self.stall)
        return self.hash_layout.from_bits(await harness.get(self.dut, "o_hash", timeout=self.timeout))

    async def put_all(self, name, payloads):
        for payload in payloads:
            await harness.idle(self.dut, self.rng, self.stall)
            await harness.put(self.dut, name, payload, timeout=self.timeout)

    async def run_blocks(self, blocks):
        """Send every block and check every hash against the host model; returns nothing, asserts."""
        width = self.core.width
        accumulator = self.core.accumulator
        block_beats = [harness.pack(self.block_layout, {"n": key.size, "m": m}) for key, _, m in blocks]
        all_keys = [beat for key, _, m in blocks for _ in range(passes(m, accumulator))
                    for beat in key_beats(key, width)]
        all_seeds = [beat for key, seed, m in blocks
                     for beats in seed_beats(seed, key.size, m, accumulator=accumulator, width=width)
                     for beat in beats]
        cocotb.start_soon(self.put_all("i_block", block_beats))
        cocotb.start_soon(self.put_all("i_key", all_keys))
        cocotb.start_soon(self.put_all("i_seed", all_seeds))
        for index, (key, seed, m) in enumerate(blocks):
            beats = [await self.get() for _ in range(-(-m // width))]
            bits = beats_to_bits([beat.data for beat in beats], width, m)
            expected = toeplitz_hash(key, seed, m)
            assert np.array_equal(bits, expected), \
                f"block {index} (n={key.size}, m={m}): hash {bits} != model {expected}"
            assert [bool(beat.last) for beat in beats] == [False] * (len(beats) - 1) + [True], \
                f"block {index}: wrong last flags"
        await harness.assert_no_beats(self.dut, ["o_hash"], cycles=4 * accumulator // width + 32,
                                      message="the core produced more hash beats than the blocks have")


def _random_block(rng, n, m):
    return (rng.integers(0, 2, n, dtype=np.uint8), rng.integers(0, 2, n + m - 1, dtype=np.uint8), m)


@cocotb.test()
@cocotb.parametrize(stall=[0.0, 0.4])
async def hash_matches_model(dut, stall):
    """Blocks of fixed shapes, one pass and several, full and partial final beats, at full rate and stalled."""
    tb = TB(dut, seed=cocotb.RANDOM_SEED, stall=stall)
    await tb.start()
    rng = np.random.default_rng(cocotb.RANDOM_SEED)
    max_n = tb.core.max_n
    shapes = [(1, 1), (max_n, 1), (max_n, max_n), (max_n - 3, max_n // 2 + 1), (17, 17), (40, 9)]
    await tb.run_blocks([_random_block(rng, n, m) for n, m in shapes])


@cocotb.test()
async def random_blocks_match_model(dut):
    """Random shapes back to back: the block length is a run-time input of the core."""
    tb = TB(dut, seed=cocotb.RANDOM_SEED + 1, stall=0.2)
    await tb.start()
    rng = np.random.default_rng(cocotb.RANDOM_SEED + 1)
    blocks = []
    for _ in range(8):
        n = int(rng.integers(1, tb.core.max_n + 1))
        blocks.append(_random_block(rng, n, int(rng.integers(1, n + 1))))
    await tb.run_blocks(blocks)


def _run(tmp_path, *, width, accumulator, max_n):
    env = {"TOEPLITZ_WIDTH": str(width), "TOEPLITZ_ACCUMULATOR": str(accumulator), "TOEPLITZ_MAX_N": str(max_n)}
    harness.run(tmp_path, ToeplitzHash(width=width, accumulator=accumulator, max_n=max_n), toplevel="toeplitz",
                test_module=Path(__file__).stem, env=env)


def test_toeplitz_verilator_serial(tmp_path):
    """One key bit a cycle, several passes."""
    _run(tmp_path, width=1, accumulator=8, max_n=48)


def test_toeplitz_verilator_wide(tmp_path):
    """Eight bits a cycle, as the ECP5 build runs it."""
    _run(tmp_path, width=8, accumulator=32, max_n=100)


if __name__ == "__main__":
    harness.main(lambda directory: _run(directory, width=4, accumulator=16, max_n=64))
