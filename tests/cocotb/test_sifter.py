# amaranth: UnusedElaboratable=no
"""The sifter and the key memory as Verilog under Verilator, driven by cocotb, against the host and sim models.

One Verilog top holds both cores, the sifter's raw key feeding the key memory as on the board, so one Verilator build
covers both. The pytest entry point at the bottom converts and builds it and runs the ``@cocotb.test()`` coroutines
in the simulator process, which reads the parameters from the environment. Every wait is bounded.
"""

import os
import random
from pathlib import Path

import cocotb
import numpy as np
from amaranth import Module
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from cocotb.triggers import ReadOnly, RisingEdge

from qkdlink.gateware.keymemory import Command, KeyMemory, Op, Word
from qkdlink.gateware.sifter import Detection, ErrorSample, Match, Sifter
from qkdlink.host.sifting import matches, sift
from qkdlink.sim.keymemory import KeyMemoryModel
from tests.cocotb import harness


class SiftToKeyMemory(wiring.Component):
    """A :class:`Sifter` whose ``o_key`` fills a :class:`KeyMemory`, with every other port of both brought out."""

    def __init__(self, *, max_bits, width):
        self._max_bits = max_bits
        self._width = width
        super().__init__({
            "i_detections": In(stream.Signature(Detection)),
            "o_match":      Out(stream.Signature(Match)),
            "o_test":       Out(stream.Signature(ErrorSample)),
            "i_command":    In(stream.Signature(Command)),
            "i_flip":       In(stream.Signature(range(max_bits))),
            "o_words":      Out(stream.Signature(Word)),
            "o_key":        Out(stream.Signature(width)),
            "count":        Out(range(max_bits + 1)),
            "full":         Out(1),
            "bad_flip":     Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.sifter = sifter = Sifter()
        m.submodules.keys = keys = KeyMemory(max_bits=self._max_bits, width=self._width)
        wiring.connect(m, sifter.o_key, keys.i_bits)
        wiring.connect(m, wiring.flipped(self.i_detections), sifter.i_detections)
        wiring.connect(m, sifter.o_match, wiring.flipped(self.o_match))
        wiring.connect(m, sifter.o_test, wiring.flipped(self.o_test))
        wiring.connect(m, wiring.flipped(self.i_command), keys.i_command)
        wiring.connect(m, wiring.flipped(self.i_flip), keys.i_flip)
        wiring.connect(m, keys.o_words, wiring.flipped(self.o_words))
        wiring.connect(m, keys.o_key, wiring.flipped(self.o_key))
        m.d.comb += [self.count.eq(keys.count), self.full.eq(keys.full), self.bad_flip.eq(keys.bad_flip)]
        return m


def _parameters():
    return {"max_bits": int(os.environ["SIFTER_MAX_BITS"]), "width": int(os.environ["SIFTER_WIDTH"])}


class TB:
    """Streams in and out of the top with random stalls; every wait bounded."""

    def __init__(self, dut, *, seed, stall, timeout=20_000):
        self.dut = dut
        self.rng = random.Random(seed)
        self.stall = stall
        self.timeout = timeout
        self.max_bits = _parameters()["max_bits"]
        self.width = _parameters()["width"]

    async def start(self):
        await harness.start(self.dut, zero=("i_detections__valid", "i_command__valid", "i_flip__valid",
                                            "o_match__ready", "o_test__ready", "o_words__ready", "o_key__ready"))

    async def put(self, name, payload):
        await harness.idle(self.dut, self.rng, self.stall)
        await harness.put(self.dut, name, payload, timeout=self.timeout)

    async def get(self, name, layout=None):
        await harness.idle(self.dut, self.rng, self.stall)
        payload = await harness.get(self.dut, name, timeout=self.timeout)
        return data.Layout.cast(layout).from_bits(payload) if layout is not None else payload

    async def command(self, op, passes=0):
        await self.put("i_command", harness.pack(Command, {"op": op, "passes": passes}))

    async def wait_count(self, count):
        for _ in range(self.timeout):
            await ReadOnly()
            if int(self.dut.count.value) == count:
                await RisingEdge(self.dut.clk)
                return
            await RisingEdge(self.dut.clk)
        raise AssertionError(f"the key memory holds {int(self.dut.count.value)} bits, not {count}")

    async def sift(self, columns):
        """Send the detections; check o_match and o_test beat for beat against the host model, in parallel."""
        bases, bits, alice_bases, intensities = columns
        sifted = sift(bases, bits, alice_bases, intensities)
        expected_matches = list(zip(matches(bases, alice_bases, intensities), intensities))

        async def put_detections():
            for detection in zip(*columns):
                await self.put("i_detections", harness.pack(Detection, dict(zip(
                    ("basis", "bit", "alice_basis", "intensity"), (int(value) for value in detection)))))

        async def check_matches():
            for index, expected in enumerate(expected_matches):
                beat = await self.get("o_match", Match)
                assert (beat.match, beat.intensity) == expected, f"match {index}: {beat} != {expected}"

        async def check_tests():
            for index, expected in enumerate(zip(sifted.test, sifted.test_intensity)):
                beat = await self.get("o_test", ErrorSample)
                assert (beat.bit, beat.intensity) == expected, f"test bit {index}: {beat} != {expected}"

        tasks = [cocotb.start_soon(coroutine()) for coroutine in (put_detections, check_matches, check_tests)]
        for task in tasks:
            await task
        return sifted

    async def check_read(self, model):
        expected = model.read()
        for index, (data_, last) in enumerate(expected):
            word = await self.get("o_words", Word)
            assert (word.data, bool(word.last)) == (data_, last), f"word {index}: {word} != {(data_, last)}"

    async def check_hash(self, model, passes):
        for index, expected in enumerate(model.hash(passes)):
            beat = await self.get("o_key")
            assert beat == expected, f"hash feed beat {index}: {beat:#x} != {expected:#x}"

    async def check_registers(self, model):
        await ReadOnly()
        actual = (int(self.dut.count.value), bool(self.dut.full.value), int(self.dut.bad_flip.value))
        assert actual == (model.count, model.full, model.bad_flip), f"{actual} != model"
        await RisingEdge(self.dut.clk)

    async def no_more_output(self):
        await harness.assert_no_beats(self.dut, ["o_match", "o_test", "o_words", "o_key"], cycles=50,
                                      message="a {name} beat the model does not have")


def _detections(rng, count, *, z_matches=False, max_key=None):
    """Random detection columns; with ``max_key``, cut short so that at most that many bits sift into the key."""
    if z_matches:                               # every detection a Z-basis match: all go to the key memory
        zeros = np.zeros(count, np.uint8)
        return zeros, rng.integers(0, 2, count, dtype=np.uint8), zeros, rng.integers(0, 3, count, dtype=np.uint8)
    columns = tuple(rng.integers(0, high, count, dtype=np.uint8) for high in (2, 2, 2, 4))
    if max_key is not None:
        bases, _, alice_bases, intensities = columns
        keys = np.cumsum(matches(bases, alice_bases, intensities) & (bases == 0))
        columns = tuple(column[:np.searchsorted(keys, max_key, side="right")] for column in columns)
    return columns


@cocotb.test()
@cocotb.parametrize(stall=[0.0, 0.4])
async def sift_correct_read_hash(dut, stall):
    """Detections through the sifter into the key memory; flips, READ and HASH against the models."""
    tb = TB(dut, seed=cocotb.RANDOM_SEED, stall=stall)
    await tb.start()
    rng = np.random.default_rng(cocotb.RANDOM_SEED)
    model = KeyMemoryModel(max_bits=tb.max_bits, width=tb.width)
    for block in range(2):
        sifted = await tb.sift(_detections(rng, 8 * tb.max_bits, max_key=tb.max_bits - 3 * block))
        for bit in sifted.key:
            model.append(int(bit))
        await tb.wait_count(model.count)
        await tb.command(Op.READ)
        await tb.check_read(model)
        flips = [int(index) for index in rng.integers(0, model.count + 4, 8)]
        for index in flips:
            await tb.put("i_flip", index)
            model.flip(index)
        await tb.command(Op.HASH, 3)
        await tb.check_hash(model, 3)
        await tb.command(Op.READ)
        await tb.check_read(model)
        await tb.check_registers(model)
        await tb.command(Op.CLEAR)
        model.clear()
    await tb.no_more_output()
    await tb.check_registers(model)


@cocotb.test()
async def full_memory_stalls_the_sifter(dut):
    """More Z-basis matches than the block holds: the sifter waits (no bit is lost) until a CLEAR makes room."""
    tb = TB(dut, seed=cocotb.RANDOM_SEED + 1, stall=0.2)
    await tb.start()
    rng = np.random.default_rng(cocotb.RANDOM_SEED + 1)
    columns = _detections(rng, tb.max_bits + 20, z_matches=True)
    model = KeyMemoryModel(max_bits=tb.max_bits, width=tb.width)
    sifting = cocotb.start_soon(tb.sift(columns))
    await tb.wait_count(tb.max_bits)
    for _ in range(30):                     # the rest stay in the sifter while the block is full
        await RisingEdge(dut.clk)
    await ReadOnly()
    assert int(dut.count.value) == tb.max_bits and dut.full.value
    assert dut.i_detections__ready.value == 0, "the sifter took a detection while the key memory was full"
    await RisingEdge(dut.clk)
    for bit in columns[1][:tb.max_bits]:
        model.append(int(bit))
    await tb.check_registers(model)
    await tb.command(Op.READ)
    await tb.check_read(model)
    await tb.command(Op.CLEAR)
    model.clear()
    await sifting
    for bit in columns[1][tb.max_bits:]:
        model.append(int(bit))
    await tb.wait_count(model.count)
    await tb.command(Op.HASH, 2)
    await tb.check_hash(model, 2)
    await tb.no_more_output()
    await tb.check_registers(model)


def test_sifter_keymemory_verilator(tmp_path):
    parameters = {"max_bits": 100, "width": 4}
    env = {"SIFTER_MAX_BITS": str(parameters["max_bits"]), "SIFTER_WIDTH": str(parameters["width"])}
    harness.run(tmp_path, SiftToKeyMemory(**parameters), toplevel="sift_keys", test_module=Path(__file__).stem,
                env=env)


if __name__ == "__main__":
    harness.main(test_sifter_keymemory_verilator)
