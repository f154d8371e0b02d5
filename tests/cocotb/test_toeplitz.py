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
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from qkdlink.gateware.toeplitz import ToeplitzHash
from qkdlink.host.toeplitz import toeplitz_hash
from qkdlink.sim.toeplitz import beats_to_bits, key_beats, passes, seed_beats


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
        Clock(self.dut.clk, 10, unit="ns").start()
        for name in ("i_block", "i_key", "i_seed"):
            self.dut[f"{name}__valid"].value = 0
        self.dut.o_hash__ready.value = 0
        self.dut.rst.value = 1
        for _ in range(2):
            await RisingEdge(self.dut.clk)
        self.dut.rst.value = 0

    async def _idle(self):
        while self.rng.random() < self.stall:
            await RisingEdge(self.dut.clk)

    async def put(self, name, payload):
        """Offer one beat and wait (boundedly) for the transfer, as Amaranth's stream_put does."""
        self.dut[f"{name}__payload"].value = payload
        self.dut[f"{name}__valid"].value = 1
        for _ in range(self.timeout):
            await ReadOnly()                    # sample the settled cycle...
            accepted = bool(self.dut[f"{name}__ready"].value)
            await RisingEdge(self.dut.clk)      # ...the transfer happens on this edge
            if accepted:
                self.dut[f"{name}__valid"].value = 0
                return
        raise AssertionError(f"{name} did not accept a beat within {self.timeout} cycles")

    async def get(self):
        """Wait (boundedly) for one o_hash beat, take it and return it as a struct constant."""
        await self._idle()
        self.dut.o_hash__ready.value = 1
        for _ in range(self.timeout):
            await ReadOnly()
            valid = bool(self.dut.o_hash__valid.value)
            payload = int(self.dut.o_hash__payload.value)
            await RisingEdge(self.dut.clk)
            if valid:
                self.dut.o_hash__ready.value = 0
                return self.hash_layout.from_bits(payload)
        raise AssertionError(f"no o_hash beat within {self.timeout} cycles")

    async def put_all(self, name, payloads):
        for payload in payloads:
            await self._idle()
            await self.put(name, payload)

    async def run_blocks(self, blocks):
        """Send every block and check every hash against the host model; returns nothing, asserts."""
        width = self.core.width
        accumulator = self.core.accumulator
        block_beats = [int(self.block_layout.const({"n": key.size, "m": m}).as_value().value)
                       for key, _, m in blocks]
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
        # Nothing more may come out.
        for _ in range(4 * accumulator // width + 32):
            await ReadOnly()
            assert not self.dut.o_hash__valid.value, "the core produced more hash beats than the blocks have"
            await RisingEdge(self.dut.clk)


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
    from amaranth.back import verilog
    from cocotb_tools.runner import get_runner

    env = {"TOEPLITZ_WIDTH": str(width), "TOEPLITZ_ACCUMULATOR": str(accumulator), "TOEPLITZ_MAX_N": str(max_n)}
    core = ToeplitzHash(width=width, accumulator=accumulator, max_n=max_n)
    source = tmp_path / "toeplitz.v"
    source.write_text(verilog.convert(core, name="toeplitz"))
    runner = get_runner(os.getenv("SIM", "verilator"))
    # Amaranth's generated Verilog is not written to Verilator's lint rules (widths, incomplete cases).
    runner.build(sources=[source], hdl_toplevel="toeplitz", build_dir=tmp_path / "sim_build",
                 build_args=["-Wno-fatal", "-Wno-lint", "-Wno-style"],
                 waves=bool(int(os.getenv("WAVES", "0"))))
    runner.test(hdl_toplevel="toeplitz", test_module=Path(__file__).stem, build_dir=tmp_path / "sim_build",
                test_dir=Path(__file__).parent, extra_env=env,
                results_xml=str(tmp_path / "results.xml"))


def test_toeplitz_verilator_serial(tmp_path):
    """One key bit a cycle, several passes."""
    _run(tmp_path, width=1, accumulator=8, max_n=48)


def test_toeplitz_verilator_wide(tmp_path):
    """Eight bits a cycle, as the ECP5 build runs it."""
    _run(tmp_path, width=8, accumulator=32, max_n=100)


if __name__ == "__main__":
    import tempfile
    from qkdlink import toolchain
    toolchain.setup()
    with tempfile.TemporaryDirectory() as directory:
        _run(Path(directory), width=4, accumulator=16, max_n=64)
