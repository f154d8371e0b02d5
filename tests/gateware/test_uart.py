# amaranth: UnusedElaboratable=no
"""The UART against the line itself: a bit-level waveform generator for the receiver, a waveform decoder for the
transmitter, both written here from the 8N1 definition (start 0, eight bits LSB first, stop 1, idle high)."""

import math
import os
import random
import unittest
from contextlib import nullcontext

from amaranth.sim import Simulator

from qkdlink.gateware.stream import stream_put
from qkdlink.gateware.uart import UARTRx, UARTTx, uart_divisor


def _simulate(test, dut, testbenches):
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    for testbench in testbenches:
        sim.add_testbench(testbench)
    with sim.write_vcd(f"{test.id()}.vcd") if os.getenv("GENERATE_VCDS") else nullcontext():
        sim.run()


class Waveform:
    """A UART line as a sender at ``bit`` clock cycles per bit drives it (fractional for a sender off the receiver's
    rate), with the events a receiver must report, each at the time its stop bit's middle passes."""

    def __init__(self, bit):
        self.bit = bit
        self.time = 0.0
        self.edges = [(0.0, 1)]
        self.expected = []          # (time, event)

    def hold(self, level, duration):
        self.edges.append((self.time, level))
        self.time += duration

    def idle(self, duration):
        self.hold(1, duration)

    def byte(self, value, *, stop=1):
        start = self.time
        for level in [0, *((value >> index) & 1 for index in range(8)), stop]:
            self.hold(level, self.bit)
        self.expected.append((start + 9.5 * self.bit, ("byte", value) if stop else ("error",)))

    def brk(self, bits):
        """The line held low for ``bits`` bit times (more than ten): one byte with a bad stop bit."""
        self.expected.append((self.time + 9.5 * self.bit, ("error",)))
        self.hold(0, bits * self.bit)

    def levels(self):
        """The line in each clock cycle, sampled at the cycle's start."""
        levels, edge = [], 0
        for cycle in range(math.ceil(self.time)):
            while edge + 1 < len(self.edges) and self.edges[edge + 1][0] <= cycle:
                edge += 1
            levels.append(self.edges[edge][1])
        return levels


def _decode_line(levels, divisor):
    """The bytes on a transmitter's line and the cycle each start bit began, checking that every bit lasts exactly
    ``divisor`` cycles and every stop bit is 1."""
    decoded, cycle = [], 0
    while cycle < len(levels):
        if levels[cycle]:
            cycle += 1
            continue
        if cycle + 10 * divisor > len(levels):
            raise AssertionError(f"a start bit at cycle {cycle} with no room for its byte")
        bits = []
        for index in range(10):
            period = levels[cycle + index * divisor:cycle + (index + 1) * divisor]
            if len(set(period)) != 1:
                raise AssertionError(f"bit {index} of the byte at cycle {cycle} changes mid-bit: {period}")
            bits.append(period[0])
        if bits[9] != 1:
            raise AssertionError(f"the byte at cycle {cycle} has a 0 stop bit")
        decoded.append((cycle, sum(bit << index for index, bit in enumerate(bits[1:9]))))
        cycle += 10 * divisor
    return decoded


class DivisorTestCase(unittest.TestCase):
    def test_divisor(self):
        self.assertEqual(uart_divisor(12_000_000, 3_000_000), 4)
        self.assertEqual(uart_divisor(48_000_000, 115_200), 417)
        self.assertEqual(uart_divisor(12_000_000, 115_200), 104)   # 115384.6 baud, 0.16 % fast

    def test_bad_rates(self):
        with self.assertRaisesRegex(ValueError, r"within 4\.2%"):
            uart_divisor(25_000_000, 3_000_000)                     # 8 gives 3.125 Mbaud
        with self.assertRaisesRegex(ValueError, r"divisor 3 is below 4"):
            uart_divisor(10_000_000, 3_000_000)
        with self.assertRaisesRegex(ValueError, r"must be positive"):
            uart_divisor(0, 9600)

    def test_bad_divisor(self):
        for cls in (UARTRx, UARTTx):
            with self.assertRaisesRegex(ValueError, r"at least 4, not 3"):
                cls(divisor=3)
            with self.assertRaisesRegex(TypeError, r"integer, not 8\.0"):
                cls(divisor=8.0)


class UARTRxTestCase(unittest.TestCase):
    """The receiver on a generated waveform. One testbench drives the line, sets ``o.ready`` and logs every beat
    taken and every ``error``/``overflow`` pulse with its cycle; the log must be the waveform's events in order."""

    def run_line(self, waveform, divisor, *, ready, expected=None, extra=None):
        dut = UARTRx(divisor=divisor)
        levels = waveform.levels() + [1] * (20 * divisor)
        log = []

        async def testbench(ctx):
            for cycle, level in enumerate(levels):
                ctx.set(dut.rx, level)
                ctx.set(dut.o.ready, ready(cycle))
                _, _, valid, taken, payload, error, overflow = await ctx.tick().sample(
                    dut.o.valid, dut.o.ready, dut.o.payload, dut.error, dut.overflow)
                if valid and taken:
                    log.append((cycle, ("byte", payload)))
                if error:
                    log.append((cycle, ("error",)))
                if overflow:
                    log.append((cycle, ("overflow",)))

        _simulate(self, dut, [testbench])
        if expected is None:
            expected = waveform.expected
        self.assertEqual([event for _, event in log], [event for _, event in sorted(expected)])
        # Each event within a few cycles of its stop bit's middle (two for the synchroniser, one for the output
        # register, the rest for rounding and the stalls of `ready`), not merely in the right order.
        for (cycle, event), (time, _) in zip(log, sorted(expected)):
            self.assertLess(abs(cycle - time), divisor / 2 + 6 + (extra or 0), f"{event} at cycle {cycle}")

    def random_bytes(self, rng, divisor, mismatch, count):
        waveform = Waveform(divisor * (1 + mismatch))
        waveform.idle(rng.uniform(0, 3 * divisor))
        for _ in range(count):
            waveform.byte(rng.randrange(256))
            if rng.random() < 0.5:          # else back to back
                waveform.idle(rng.choice([rng.uniform(0, 2 * divisor), rng.uniform(0, 30 * divisor)]))
        waveform.idle(2 * divisor)
        return waveform

    def test_random_bytes(self):
        for divisor, mismatch in [(4, 0), (4, -0.02), (4, 0.02), (5, 0.02), (5, -0.02),
                                  (8, 0.02), (8, -0.02), (13, 0), (13, 0.02), (13, -0.02)]:
            with self.subTest(divisor=divisor, mismatch=mismatch):
                rng = random.Random(f"bytes/{divisor}/{mismatch}")
                stalls = random.Random(rng.random())
                self.run_line(self.random_bytes(rng, divisor, mismatch, 600 // divisor), divisor,
                              ready=lambda cycle: cycle % 4 == 0 or stalls.random() < 0.6, extra=4)

    def test_every_byte_value(self):
        waveform = Waveform(6)
        for value in range(256):
            waveform.byte(value)
        waveform.idle(12)
        self.run_line(waveform, 6, ready=lambda cycle: 1)

    def test_glitches_are_ignored(self):
        for divisor in (4, 5, 8, 9):
            with self.subTest(divisor=divisor):
                rng = random.Random(f"glitches/{divisor}")
                waveform = Waveform(divisor)
                waveform.idle(divisor)
                for _ in range(40):
                    if rng.random() < 0.6:
                        waveform.hold(0, rng.randrange(1, (divisor + 1) // 2))    # shorter than half a bit
                        waveform.idle(rng.randrange(divisor, 3 * divisor))
                    else:
                        waveform.byte(rng.randrange(256))
                        waveform.idle(rng.randrange(0, 2 * divisor))
                self.run_line(waveform, divisor, ready=lambda cycle: 1)

    def test_bad_stop_bits_and_breaks(self):
        for divisor, mismatch in [(4, 0), (7, 0.02), (10, -0.02)]:
            with self.subTest(divisor=divisor, mismatch=mismatch):
                rng = random.Random(f"stop/{divisor}/{mismatch}")
                waveform = Waveform(divisor * (1 + mismatch))
                waveform.idle(divisor)
                for _ in range(50):
                    match rng.randrange(4):
                        case 0:
                            waveform.byte(rng.randrange(256), stop=0)
                            waveform.idle(rng.uniform(1, 3) * divisor)    # the line must go high again
                        case 1:
                            waveform.brk(rng.uniform(11, 40))
                            waveform.idle(rng.uniform(1, 3) * divisor)
                        case _:
                            waveform.byte(rng.randrange(256))
                            waveform.idle(rng.choice([0, rng.uniform(0, 3 * divisor)]))
                waveform.idle(2 * divisor)
                self.run_line(waveform, divisor, ready=lambda cycle: 1)

    def test_overflow(self):
        """``o.ready`` is high only in windows of one bit time after some bytes: a byte that completes while the
        previous one is still held is dropped with an overflow pulse; none is lost otherwise."""
        for divisor in (8, 11):
            with self.subTest(divisor=divisor):
                rng = random.Random(f"overflow/{divisor}")
                waveform = self.random_bytes(rng, divisor, 0, 60)
                expected, windows = [], []
                held = None             # the byte in `o`, not yet taken
                for index, (time, event) in enumerate(waveform.expected):
                    if held is None:
                        held = event
                    else:
                        expected.append((time, ("overflow",)))
                    if rng.random() < 0.4 or index == len(waveform.expected) - 1:
                        start = math.ceil(time) + divisor
                        windows.append(range(start, start + divisor))
                        expected.append((start, held))
                        held = None
                window_cycles = set().union(*windows)
                self.assertIn(("overflow",), [event for _, event in expected])
                self.run_line(waveform, divisor, ready=lambda cycle: cycle in window_cycles, expected=expected,
                              extra=divisor + 2)

    def test_stalled_byte_is_held(self):
        """A byte stays offered, unchanged, however long ``o.ready`` is low."""
        waveform = Waveform(8)
        waveform.byte(0xa5)
        waveform.idle(300)
        dut = UARTRx(divisor=8)
        levels = waveform.levels()

        async def testbench(ctx):
            ctx.set(dut.o.ready, 0)
            offered = []
            for level in levels:
                ctx.set(dut.rx, level)
                _, _, valid, payload = await ctx.tick().sample(dut.o.valid, dut.o.payload)
                if valid:
                    offered.append(payload)
            self.assertEqual(offered, [0xa5] * len(offered))
            self.assertGreater(len(offered), 200)

        _simulate(self, dut, [testbench])


class UARTTxTestCase(unittest.TestCase):
    def run_bytes(self, values, divisor, *, gaps):
        dut = UARTTx(divisor=divisor)
        cycles = len(values) * 10 * divisor + sum(gaps) * 2 + 20 * divisor
        levels = []

        async def put(ctx):
            for value, gap in zip(values, gaps):
                if gap:
                    await ctx.tick().repeat(gap)
                await stream_put(ctx, dut.i, value)

        async def record(ctx):
            for _ in range(cycles):
                _, _, level = await ctx.tick().sample(dut.tx)
                levels.append(level)

        _simulate(self, dut, [put, record])
        decoded = _decode_line(levels, divisor)
        self.assertEqual([value for _, value in decoded], values)
        return [cycle for cycle, _ in decoded]

    def test_continuous_at_full_rate(self):
        for divisor in (4, 7, 16):
            with self.subTest(divisor=divisor):
                rng = random.Random(f"tx/{divisor}")
                values = [rng.randrange(256) for _ in range(40)] + [0x00, 0xff, 0x55, 0xaa]
                starts = self.run_bytes(values, divisor, gaps=[0] * len(values))
                self.assertEqual([b - a for a, b in zip(starts, starts[1:])], [10 * divisor] * (len(values) - 1))

    def test_random_gaps(self):
        for divisor in (4, 9):
            with self.subTest(divisor=divisor):
                rng = random.Random(f"tx-gaps/{divisor}")
                values = [rng.randrange(256) for _ in range(60)]
                gaps = [rng.choice([0, 0, rng.randrange(1, 4), rng.randrange(10 * divisor, 30 * divisor)])
                        for _ in values]
                self.run_bytes(values, divisor, gaps=gaps)

    def test_idles_high(self):
        dut = UARTTx(divisor=4)

        async def testbench(ctx):
            for _ in range(50):
                _, _, level, ready = await ctx.tick().sample(dut.tx, dut.i.ready)
                self.assertEqual((level, ready), (1, 1))

        _simulate(self, dut, [testbench])


if __name__ == "__main__":
    unittest.main()
