# amaranth: UnusedElaboratable=no
"""The serial path of a board as Verilog under Verilator, driven by cocotb at the pins.

The top is UARTRx -> CobsDecoder -> a frame filter that drops the frames the decoder flags -> CobsEncoder -> UARTTx:
a board that echoes every frame it can decode. The bench drives the ``rx`` pin bit by bit with frames from
:func:`qkdlink.host.wire.frame` (some damaged) and decodes the ``tx`` pin bit by bit; the bytes must be
``cobs_encode(cobs_decode(f)) + b"\\0"`` for each frame ``f`` that :func:`~qkdlink.host.wire.cobs_decode` accepts, and
nothing for the others. Every wait is bounded.
"""

import random
from pathlib import Path

import cocotb
from amaranth import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from cocotb.triggers import ClockCycles, FallingEdge, RisingEdge, Timer

from qkdlink.gateware.cobs import CobsDecoder, CobsEncoder, FrameByte, ReplyByte
from qkdlink.gateware.uart import UARTRx, UARTTx, uart_divisor
from qkdlink.host.wire import CobsError, cobs_decode, cobs_encode, frame
from tests.cocotb import harness


CLOCK_NS = 10
DIVISOR = uart_divisor(12_000_000, 3_000_000)   # the iCEBreaker's link
MAX_FRAME = 512


class _GoodFrames(wiring.Component):
    """Frames from a :class:`CobsDecoder` as bodies for a :class:`CobsEncoder`, without those flagged ``error``
    (or longer than ``depth``): each frame is held whole until its end beat says whether to send it."""

    def __init__(self, depth):
        self._depth = depth
        super().__init__({"i": In(stream.Signature(FrameByte)), "o": Out(stream.Signature(ReplyByte))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.frame = storage = Memory(shape=8, depth=self._depth, init=[])
        w_port = storage.write_port()
        r_port = storage.read_port(domain="comb")
        count = Signal(range(self._depth + 1))
        sent = Signal(range(self._depth + 1))
        overlong = Signal()
        m.d.comb += [w_port.addr.eq(count), w_port.data.eq(self.i.p.data), r_port.addr.eq(sent)]
        with m.FSM():
            with m.State("FILL"):
                m.d.comb += self.i.ready.eq(1)
                with m.If(self.i.valid & self.i.p.end):
                    m.d.sync += [sent.eq(0), overlong.eq(0)]
                    with m.If(self.i.p.error | overlong):
                        m.d.sync += count.eq(0)
                    with m.Else():
                        m.next = "SEND"
                with m.Elif(self.i.valid & (count == self._depth)):
                    m.d.sync += overlong.eq(1)
                with m.Elif(self.i.valid):
                    m.d.comb += w_port.en.eq(1)
                    m.d.sync += count.eq(count + 1)
            with m.State("SEND"):
                m.d.comb += [
                    self.o.valid.eq(1),
                    self.o.p.data.eq(r_port.data),
                    self.o.p.end.eq(sent == count),
                ]
                with m.If(self.o.ready):
                    m.d.sync += sent.eq(sent + 1)
                    with m.If(sent == count):
                        m.d.sync += count.eq(0)
                        m.next = "FILL"
        return m


class SerialEcho(wiring.Component):
    rx:       In(1)
    tx:       Out(1)
    error:    Out(1)
    overflow: Out(1)

    def elaborate(self, platform):
        m = Module()
        m.submodules.uart_rx = uart_rx = UARTRx(divisor=DIVISOR)
        m.submodules.decoder = decoder = CobsDecoder()
        m.submodules.filter = good = _GoodFrames(MAX_FRAME)
        m.submodules.encoder = encoder = CobsEncoder()
        m.submodules.uart_tx = uart_tx = UARTTx(divisor=DIVISOR)
        wiring.connect(m, uart_rx.o, decoder.i)
        wiring.connect(m, decoder.o, good.i)
        wiring.connect(m, good.o, encoder.i)
        wiring.connect(m, encoder.o, uart_tx.i)
        m.d.comb += [
            uart_rx.rx.eq(self.rx),
            self.tx.eq(uart_tx.tx),
            self.error.eq(uart_rx.error),
            self.overflow.eq(uart_rx.overflow),
        ]
        return m


def _echo(wire):
    """What the echo board sends back for ``wire``: each non-empty frame that decodes, re-encoded."""
    out = b""
    for encoded in wire.split(b"\0")[:-1]:
        if not encoded:
            continue
        try:
            out += cobs_encode(cobs_decode(encoded)) + b"\0"
        except CobsError:
            pass
    return out


class TB:
    """Drives ``rx`` at ``1 + mismatch`` times the board's bit time; decodes ``tx`` at the board's own; counts the
    receiver's ``error`` and ``overflow`` pulses."""

    def __init__(self, dut, *, seed, mismatch):
        self.dut = dut
        self.rng = random.Random(seed)
        self.bit_ps = DIVISOR * CLOCK_NS * 1000
        self.send_ps = round(self.bit_ps * (1 + mismatch))
        self.received = bytearray()
        self.pulses = {"error": 0, "overflow": 0}

    async def start(self):
        self.dut.rx.value = 1
        await harness.start(self.dut)
        cocotb.start_soon(self._decode_tx())
        for name in self.pulses:
            cocotb.start_soon(self._count(name))

    async def _count(self, name):
        while True:
            await RisingEdge(self.dut[name])
            self.pulses[name] += 1

    async def _decode_tx(self):
        while True:
            await FallingEdge(self.dut.tx)
            await Timer(self.bit_ps // 2, unit="ps")
            assert self.dut.tx.value == 0, "a start bit shorter than half a bit"
            value = 0
            for index in range(8):
                await Timer(self.bit_ps, unit="ps")
                value |= int(self.dut.tx.value) << index
            await Timer(self.bit_ps, unit="ps")
            assert self.dut.tx.value == 1, f"byte {len(self.received)} ({value:#04x}) has a 0 stop bit"
            self.received.append(value)

    async def send(self, data, *, bad_stop=()):
        """``data`` on ``rx``, with random idle gaps; the bytes at the indices in ``bad_stop`` get a 0 stop bit
        and an idle bit after it."""
        for index, byte in enumerate(data):
            stop = 0 if index in bad_stop else 1
            for level in [0, *((byte >> bit) & 1 for bit in range(8)), stop]:
                self.dut.rx.value = level
                await Timer(self.send_ps, unit="ps")
            self.dut.rx.value = 1
            if not stop:
                await Timer(self.send_ps, unit="ps")
            if self.rng.random() < 0.2:
                await Timer(self.rng.randrange(1, 3 * self.bit_ps), unit="ps")

    async def expect(self, data):
        """Wait (boundedly) until ``data`` follows what has been received, and nothing else."""
        start = len(self.received)
        for _ in range(len(data) + 2 * MAX_FRAME):
            if len(self.received) >= start + len(data):
                break
            await ClockCycles(self.dut.clk, 10 * DIVISOR)
        assert bytes(self.received[start:]) == data, \
            f"echoed {bytes(self.received[start:]).hex()}, not {data.hex()}"

    async def check_quiet(self):
        before = len(self.received)
        await ClockCycles(self.dut.clk, 40 * DIVISOR)
        assert len(self.received) == before, f"unexpected bytes {bytes(self.received[before:]).hex()}"


def _damage(rng, wire):
    """``wire`` (a frame ending with its zero byte) with one byte before the zero dropped, flipped or inserted."""
    where = rng.randrange(len(wire) - 1)
    match rng.randrange(3):
        case 0:
            return wire[:where] + wire[where + 1:]
        case 1:
            return wire[:where] + bytes([wire[where] ^ (1 << rng.randrange(8))]) + wire[where + 1:]
        case _:
            return wire[:where] + bytes([rng.randrange(256)]) + wire[where:]


def _body(rng):
    """Short, long, or a zero-free run around a block's 254 bytes (the CRC may add to the run)."""
    match rng.randrange(3):
        case 0:
            return bytes(rng.randrange(1, 256) for _ in range(rng.randrange(246, 258)))
        case _:
            zeros = rng.random() / 4
            return bytes(0 if rng.random() < zeros else rng.randrange(256)
                         for _ in range(rng.choice([rng.randrange(0, 12), rng.randrange(0, 400)])))


@cocotb.test()
@cocotb.parametrize(mismatch=[0.0, -0.02, 0.02])
async def frames_echo(dut, mismatch):
    """Frames, a quarter of them damaged, sometimes with extra zero bytes; one at a time, as a host waits for each
    reply. An echo of a damaged frame that still decodes is expected too (the filter checks no CRC)."""
    tb = TB(dut, seed=cocotb.RANDOM_SEED, mismatch=mismatch)
    await tb.start()
    rng = random.Random(cocotb.RANDOM_SEED + 1)
    damaged = 0
    for _ in range(24):
        wire = frame(_body(rng))
        if rng.random() < 0.25:
            wire = _damage(rng, wire)
            damaged += 1
        if rng.random() < 0.2:
            wire = b"\0" + wire
        # A damage that put a zero inside cut the frame in two: a host waits for each reply, so it sends the second
        # part only once the first is echoed (the board cannot take bytes while its echo holds the line).
        for part in wire.split(b"\0")[:-1]:
            await tb.send(part + b"\0")
            await tb.expect(_echo(part + b"\0"))
    assert damaged > 0
    await tb.check_quiet()
    assert tb.pulses == {"error": 0, "overflow": 0}, tb.pulses


@cocotb.test()
async def bad_stop_bit_drops_a_byte(dut):
    """A byte with a 0 stop bit is dropped with an error pulse; the frame it was in is echoed as it decodes without
    it, and the next frame is echoed intact."""
    tb = TB(dut, seed=cocotb.RANDOM_SEED + 2, mismatch=0.0)
    await tb.start()
    rng = random.Random(cocotb.RANDOM_SEED + 3)
    for errors in range(1, 6):
        wire = frame(_body(rng))
        where = rng.randrange(len(wire) - 1)         # not the zero: the frames would merge
        await tb.send(wire, bad_stop={where})
        await tb.expect(_echo(wire[:where] + wire[where + 1:]))
        good = frame(_body(rng))
        await tb.send(good)
        await tb.expect(good)
        assert tb.pulses == {"error": errors, "overflow": 0}, tb.pulses
    await tb.check_quiet()


def test_serial_verilator(tmp_path):
    harness.run(tmp_path, SerialEcho(), toplevel="serial_echo", test_module=Path(__file__).stem)


if __name__ == "__main__":
    harness.main(test_serial_verilator)
