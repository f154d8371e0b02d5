# amaranth: UnusedElaboratable=no
"""The host link's gateware against :class:`qkdlink.sim.hostlink.HostLinkModel`, reply byte for reply byte.

Requests go in as the beats a :class:`~qkdlink.gateware.cobs.CobsDecoder` gives for their wire bytes; the model gets
the wire bytes themselves (:meth:`HostLinkModel.receive`), so damaged frames are judged by the model's own framing.
Every stream port is stalled at random, and every wait is bounded.
"""

import os
import random
import struct
import unittest
import zlib
from contextlib import nullcontext

from amaranth.hdl import Shape
from amaranth.lib import data
from amaranth.lib.crc import catalog
from amaranth.sim import Simulator

from qkdlink.gateware.hostlink import HostLink, stream_layout
from qkdlink.host.wire import (READ_ARGUMENTS, READ_STREAM_ARGUMENTS, STREAM_REPLY_HEADER, WRITE_STREAM_HEADER,
                               CobsError, cobs_decode, cobs_encode, seal, unseal)
from qkdlink.sim.hostlink import HostLinkModel
from qkdlink.wire import MAX_BODY, MAX_DATA, MAX_REGISTERS, Command, Role, Status, register_map, stream_map


PHASES = 4
FRAME_BITS = 6
CONSTANTS = {"clock_hz": 48_000_000, "baud": 3_000_000, "key_bits": 0x1_0000}
WRAP = 1 << 32


def small_depths(role, depth=64):
    return {s.name: depth for s in stream_map(role, frame_bits=FRAME_BITS, phases=PHASES)}


def alternating_depths(role, small=16, large=64):
    """Every other stream's ring small: the narrow offsets of neighbouring streams differ in width."""
    return {s.name: small if i % 2 and small >= s.beat_bytes else large
            for i, s in enumerate(stream_map(role, frame_bits=FRAME_BITS, phases=PHASES))}


def mixed_depths(role, rng):
    """Rings of different sizes, so that the narrow offsets of the streams differ in width."""
    return {s.name: rng.choice([d for d in (8, 16, 32, 64, 128) if d >= s.beat_bytes])
            for s in stream_map(role, frame_bits=FRAME_BITS, phases=PHASES)}


# ---- Requests (bodies without the CRC).

def hello(tag=1, extra=b""):
    return bytes([Command.HELLO, tag]) + extra


def read(address, count, tag=2):
    return bytes([Command.READ, tag]) + READ_ARGUMENTS.pack(address, count)


def write(address, values, tag=3):
    return bytes([Command.WRITE, tag]) + struct.pack("<H", address) + b"".join(struct.pack("<I", v) for v in values)


def read_stream(number, ack, offset, length, tag=4):
    return bytes([Command.READ_STREAM, tag]) + READ_STREAM_ARGUMENTS.pack(number, ack % WRAP, offset % WRAP, length)


def write_stream(number, offset, data, tag=5):
    return bytes([Command.WRITE_STREAM, tag]) + WRITE_STREAM_HEADER.pack(number, offset % WRAP) + bytes(data)


# ---- Frames: (wire bytes for the model, FrameByte beats for the gateware).

def _beats(sealed, error=False):
    return [{"data": byte, "end": 0, "error": 0} for byte in sealed] + [{"data": 0, "end": 1, "error": int(error)}]


def intact(body):
    sealed = seal(body)
    return cobs_encode(sealed) + b"\0", _beats(sealed)


def raw(sealed):
    """A frame whose decoded bytes are ``sealed`` as they are (too short, too long, or with a CRC that fails)."""
    return cobs_encode(sealed) + b"\0", _beats(sealed)


def bad_crc(body, rng):
    sealed = bytearray(seal(body))
    sealed[rng.randrange(len(sealed))] ^= 1 << rng.randrange(8)
    return raw(bytes(sealed))


def bad_cobs(body):
    """A frame that ends inside a COBS block; the decoder flags it, whatever body beats it gave before."""
    sealed = seal(body)
    encoded = cobs_encode(sealed) + b"\x05"
    try:
        cobs_decode(encoded)
    except CobsError:
        return encoded + b"\0", _beats(sealed, error=True)
    raise AssertionError("the test's damaged frame decodes")


def empty_frame():
    """Two zero bytes in a row: ignored, no beats."""
    return b"\0", []


def nothing_frame():
    """``01 00``: a frame of no body bytes, only an end beat."""
    return b"\x01\0", _beats(b"")


# ---- Simulation agents, driven once a cycle by one testbench.

class _Source:
    """Offers beats (ints, or dicts for a struct) with random gaps; holds each until it is taken."""

    def __init__(self, port, beats, rng, stall, *, as_int=True):
        self.port = port
        self.payload = port.payload.as_value() if as_int else port.payload
        self.beats = list(beats)
        self.rng = rng
        self.stall = stall
        self.taken = 0
        self.offering = False

    @property
    def done(self):
        return self.taken == len(self.beats)

    def drive(self, ctx):
        if not self.offering and not self.done and self.rng.random() >= self.stall:
            ctx.set(self.payload, self.beats[self.taken])
            ctx.set(self.port.valid, 1)
            self.offering = True

    def sample(self, ctx):
        return self.offering and ctx.get(self.port.ready)

    def after(self, ctx, fired):
        if fired:
            self.taken += 1
            self.offering = False
            ctx.set(self.port.valid, 0)


class _Sink:
    """Takes ``count`` beats (ints) with random back-pressure."""

    def __init__(self, port, count, rng, stall):
        self.port = port
        self.count = count
        self.rng = rng
        self.stall = stall
        self.beats = []
        self.ready = False

    @property
    def done(self):
        return len(self.beats) == self.count

    def drive(self, ctx):
        self.ready = not self.done and self.rng.random() >= self.stall
        ctx.set(self.port.ready, int(self.ready))

    def sample(self, ctx):
        if self.ready and ctx.get(self.port.valid):
            return ctx.get(self.port.payload.as_value())
        return None

    def after(self, ctx, beat):
        if beat is not None:
            self.beats.append(beat)
        if self.done:
            ctx.set(self.port.ready, 0)


class _ReplySink(_Sink):
    """Takes ``count`` replies from o_frames: each its bytes up to an end beat."""

    def __init__(self, port, count, rng, stall):
        super().__init__(port, count, rng, stall)
        self.current = bytearray()

    def sample(self, ctx):
        if self.ready and ctx.get(self.port.valid):
            payload = ctx.get(self.port.payload)
            return int(payload.data), int(payload.end)
        return None

    def after(self, ctx, beat):
        if beat is not None:
            byte, end = beat
            if end:
                self.beats.append(bytes(self.current))
                self.current.clear()
            else:
                self.current.append(byte)
        if self.done:
            ctx.set(self.port.ready, 0)


async def _run_agents(ctx, agents, *, limit, what, background=()):
    """Drive ``agents`` and ``background`` a cycle at a time until every one of ``agents`` is done."""
    everyone = [*agents, *background]
    for _ in range(limit):
        if all(agent.done for agent in agents):
            return
        for agent in everyone:
            agent.drive(ctx)
        fired = [agent.sample(ctx) for agent in everyone]
        await ctx.tick()
        for agent, event in zip(everyone, fired):
            agent.after(ctx, event)
    raise AssertionError(f"{what} not done within {limit} cycles")


# ---- The bench: a HostLink and a HostLinkModel, given the same operations.

class LinkBench:
    """Runs operations on a :class:`HostLink` and a :class:`HostLinkModel` and compares what they give.

    Operations (tuples):

    - ``("frames", [frame, ...])``: frames (see :func:`intact`) sent back to back while the replies are taken;
      every reply body (with its CRC) must equal the model's.
    - ``("produce", name, [beat, ...])``: beats (ints) into out stream ``name``; the model must have room.
    - ``("consume", name, count)``: ``count`` beats from in stream ``name``, equal to the model's bytes.
    - ``("blocked", name, beat, frame)``: a beat for a full out stream is not taken until ``frame`` (a
      READ_STREAM that acknowledges) has been executed; then it is.
    - ``("poke", name, value)``: a read-only register port; ``("pulse", port, count)``: rx_error/rx_overflow.
    - ``("writable",)``: every writable register's port equals the model's value.

    After each operation the in streams must offer a beat exactly when the model holds one, and no reply may be
    left over.
    """

    def __init__(self, test, role, *, depths=None, seed=0, stall=0.3, initial_offset=0):
        self.test = test
        self.role = Role(role)
        self.depths = depths or small_depths(role)
        self.streams = {s.name: s for s in stream_map(role, frame_bits=FRAME_BITS, phases=PHASES)}
        self.map = register_map(role)
        self.dut = HostLink(role, board="sim", phases=PHASES, frame_bits=FRAME_BITS, depths=self.depths,
                            constants=CONSTANTS, initial_offset=initial_offset)
        self.model = HostLinkModel(role, board="sim", phases=PHASES, frame_bits=FRAME_BITS, depths=self.depths,
                                   constants=CONSTANTS)
        for buffer in self.model.streams.values():
            buffer.low = buffer.high = initial_offset
        self.rng = random.Random(seed)
        self.stall = stall
        self.inputs = [r.name for r in self.map
                       if not r.writable and hasattr(self.dut, r.name)]
        # A bound on the cycles a beat takes between port and ring: the link's servicer visits the streams in
        # turn, a few cycles each and a cycle per byte.
        self.round = 4 * (8 * len(self.streams) + 2 * max(s.beat_bytes for s in self.streams.values()))

    def port(self, name):
        stream = self.streams[name]
        return getattr(self.dut, f"i_{name}" if stream.out else f"o_{name}")

    def run(self, operations):
        async def testbench(ctx):
            for name in self.inputs:
                value = self.rng.getrandbits(self.map[name].width)
                ctx.set(getattr(self.dut, name), value)
                self.model.registers[name] = value
            for index, operation in enumerate(operations):
                await self._do(ctx, operation, f"operation {index} {operation[0]!r}")
                await self._check_quiet(ctx, f"after operation {index} {operation[0]!r}")

        sim = Simulator(self.dut)
        sim.add_clock(1e-6)
        sim.add_testbench(testbench)
        with sim.write_vcd(f"{self.test.id()}.vcd") if os.getenv("GENERATE_VCDS") else nullcontext():
            sim.run()

    def expect(self, frames):
        """The model's sealed reply bodies for ``frames``."""
        wire = self.model.receive(b"".join(frame_wire for frame_wire, _ in frames))
        return [cobs_decode(encoded) for encoded in wire.split(b"\0")[:-1]]

    async def _frames(self, ctx, frames, what, *, background=()):
        expected = self.expect(frames)
        beats = [beat for _, frame_beats in frames for beat in frame_beats]
        sender = _Source(self.dut.i_frames, beats, self.rng, self.stall, as_int=False)
        replies = _ReplySink(self.dut.o_frames, len(expected), self.rng, self.stall)
        size = len(beats) + sum(map(len, expected))
        await _run_agents(ctx, [sender, replies], limit=60 * size + 2000, what=what, background=background)
        for index, (got, want) in enumerate(zip(replies.beats, expected)):
            self.test.assertIsNotNone(unseal(got), f"{what}: reply {index} has a bad CRC")
            self.test.assertEqual(got.hex(" "), want.hex(" "), f"{what}: reply {index}")

    async def _do(self, ctx, operation, what):
        match operation:
            case ("frames", frames):
                await self._frames(ctx, frames, what)
            case ("produce", name, beats):
                stream = self.streams[name]
                for beat in beats:
                    self.test.assertTrue(self.model.produce(name, beat.to_bytes(stream.beat_bytes, "little")),
                                         f"{what}: the test produces into a full ring")
                source = _Source(self.port(name), beats, self.rng, self.stall)
                await _run_agents(ctx, [source], limit=len(beats) * self.round + 100, what=what)
            case ("consume", name, count):
                stream = self.streams[name]
                want = self.model.consume(name, count * stream.beat_bytes)
                self.test.assertEqual(len(want), count * stream.beat_bytes, f"{what}: the test over-consumes")
                sink = _Sink(self.port(name), count, self.rng, self.stall)
                await _run_agents(ctx, [sink], limit=count * self.round + 100, what=what)
                got = b"".join(beat.to_bytes(stream.beat_bytes, "little") for beat in sink.beats)
                self.test.assertEqual(got.hex(" "), want.hex(" "), f"{what}: {name} beats")
            case ("blocked", name, beat, frame):
                stream = self.streams[name]
                source = _Source(self.port(name), [beat], self.rng, 0.0)
                for _ in range(50):
                    source.drive(ctx)
                    self.test.assertFalse(source.sample(ctx), f"{what}: a beat taken into a full ring")
                    await ctx.tick()
                await self._frames(ctx, [frame], what, background=[source])
                for _ in range(100):
                    if source.done:
                        break
                    fired = source.sample(ctx)
                    await ctx.tick()
                    source.after(ctx, fired)
                self.test.assertTrue(source.done, f"{what}: the beat was not taken after the ack")
                self.test.assertTrue(self.model.produce(name, beat.to_bytes(stream.beat_bytes, "little")))
            case ("poke", name, value):
                ctx.set(getattr(self.dut, name), value)
                self.model.registers[name] = value
            case ("pulse", port, count):
                register = {"rx_error": "uart_errors", "rx_overflow": "rx_overflows"}[port]
                for _ in range(count):
                    ctx.set(getattr(self.dut, port), 1)
                    await ctx.tick()
                    ctx.set(getattr(self.dut, port), 0)
                    await ctx.tick().repeat(self.rng.randrange(1, 3))
                self.model.registers[register] = (self.model.registers[register] + count) % WRAP
            case ("writable",):
                for register in self.map:
                    if register.writable:
                        self.test.assertEqual(ctx.get(getattr(self.dut, register.name)),
                                              self.model.registers[register.name], f"{what}: {register.name}")
            case _:
                raise ValueError(f"no operation {operation!r}")

    async def _check_quiet(self, ctx, what):
        for stream in self.streams.values():
            if not stream.out:
                ctx.set(self.port(stream.name).ready, 0)
        ctx.set(self.dut.o_frames.ready, 1)
        # The link's servicer visits each stream in turn (a few cycles each) and fills one beat a visit.
        for _ in range(self.round // 4):
            self.test.assertFalse(ctx.get(self.dut.o_frames.valid), f"{what}: a reply the model does not send")
            await ctx.tick()
        ctx.set(self.dut.o_frames.ready, 0)
        for stream in self.streams.values():
            if not stream.out:
                holds = self.model.streams[stream.name].level >= stream.beat_bytes
                self.test.assertEqual(bool(ctx.get(self.port(stream.name).valid)), holds,
                                      f"{what}: {stream.name} offers a beat: expected {holds}")


def _numbers(role):
    streams = stream_map(role, frame_bits=FRAME_BITS, phases=PHASES)
    return {s.name: s.number for s in streams}


def _beat(rng, stream):
    return rng.getrandbits(stream.beat_bits)


# ---- Tests.

class LayoutTestCase(unittest.TestCase):
    def test_stream_layout_is_the_beat_bytes(self):
        for role in Role:
            for stream in stream_map(role, frame_bits=FRAME_BITS, phases=PHASES):
                layout = stream_layout(stream)
                self.assertEqual(layout.size, 8 * stream.beat_bytes, stream.name)
                offset = 0
                for field in stream.fields:
                    self.assertEqual((layout[field.name].offset, Shape.cast(layout[field.name].shape).width),
                                     (offset, field.bits), f"{stream.name}.{field.name}")
                    offset += field.bits
                if offset < 8 * stream.beat_bytes:
                    self.assertEqual(layout["padding"].offset, offset)
                # A beat's bytes, little-endian, are its payload bits.
                values = {field.name: (1 << field.bits) - 1 - i % 2 for i, field in enumerate(stream.fields)}
                packed = int(data.Layout.cast(layout).const(values).as_value().value)
                expected = 0
                for field in reversed(stream.fields):
                    expected = expected << field.bits | values[field.name]
                self.assertEqual(packed, expected)

    def test_bit_serial_crc_is_zlib(self):
        # The link feeds its CRC a bit a cycle, least significant bit of each byte first.
        parameters = catalog.CRC32_ISO_HDLC(1)
        rng = random.Random(1)
        for size in (0, 1, 5, 64):
            body = rng.randbytes(size)
            bits = [byte >> bit & 1 for byte in body for bit in range(8)]
            self.assertEqual(parameters.compute(bits), zlib.crc32(body))

    def test_bad_parameters(self):
        depths = small_depths(Role.BOB)
        good = dict(board="sim", phases=PHASES, frame_bits=FRAME_BITS, depths=depths, constants=CONSTANTS)
        for change in [{"board": "nope"}, {"phases": 0}, {"frame_bits": 33},
                       {"depths": {**depths, "tags": 48}}, {"depths": {**depths, "tags": 8}},
                       {"depths": {k: v for k, v in depths.items() if k != "tags"}},
                       {"constants": {"clock_hz": 1}}, {"constants": {**CONSTANTS, "baud": 1 << 32}},
                       {"initial_offset": -1}]:
            with self.assertRaises(ValueError, msg=change):
                HostLink(Role.BOB, **{**good, **change})
        with self.assertRaises(ValueError):
            HostLink(7, **good)


class CommandTestCase(unittest.TestCase):
    """Every command and every status, for both roles."""

    def commands(self, role, seed):
        bench = LinkBench(self, role, seed=seed)
        numbers = _numbers(role)
        regs = bench.map
        out_name = next(s.name for s in bench.streams.values() if s.out)
        in_name = next(s.name for s in bench.streams.values() if not s.out)
        out_stream, in_stream = bench.streams[out_name], bench.streams[in_name]
        rng = random.Random(seed)
        writable = [r for r in regs if r.writable]
        last = len(regs)
        requests = [
            hello(), hello(extra=b"\0"),
            read(0, 1), read(0, last), read(last - 1, 1), read(last, 1), read(last - 3, 4), read(0, 0),
            read(0, MAX_REGISTERS + 1), read(0xffff, 64), read(0, 1)[:-1], read(0, 1) + b"\0",
            write(regs.writable_base, [rng.getrandbits(32) for _ in writable]),
            read(regs.writable_base, len(writable)),
            write(regs.writable_base - 1, [1, 2]), write(last - 1, [1, 2]), write(last, [1]),
            write(regs.writable_base, [0] * (MAX_REGISTERS + 1)), write(regs.writable_base, []),
            write(regs.writable_base, [5])[:-1], write(0xffff, [1]),
            read(0, last),
            bytes([0, 9]), bytes([6, 9]), bytes([0xff, 9, 1, 2, 3]),
            read_stream(numbers[out_name], 0, 0, 100), read_stream(numbers[in_name], 0, 0, 100),
            read_stream(len(numbers), 0, 0, 100), read_stream(0xff, 0, 0, 1),
            read_stream(numbers[out_name], 0, 0, 100)[:-1],
            write_stream(numbers[in_name], 0, b""), write_stream(numbers[out_name], 0, b"x"),
            write_stream(numbers[in_name], 0, bytes(MAX_DATA + 1)), write_stream(numbers[in_name], 0, b"")[:-1],
            write_stream(0xee, 0, b"x"),
        ]
        operations = [("frames", [intact(body)]) for body in requests]
        operations.append(("writable",))
        # Streams: data through one of each direction.
        beats = [_beat(rng, out_stream) for _ in range(5)]
        operations += [
            ("produce", out_name, beats),
            ("frames", [intact(read_stream(numbers[out_name], 0, 0, 3))]),
            ("frames", [intact(read_stream(numbers[out_name], out_stream.beat_bytes, out_stream.beat_bytes,
                                           MAX_DATA + 100))]),
            ("frames", [intact(read_stream(numbers[out_name], 5 * out_stream.beat_bytes + 1, 0, 1))]),
            ("frames", [intact(read_stream(numbers[out_name], 0, 1, 1))]),
            ("frames", [intact(read_stream(numbers[out_name], 0, 5 * out_stream.beat_bytes, 1))]),
            ("frames", [intact(read_stream(numbers[out_name], 0, 5 * out_stream.beat_bytes + 1, 1))]),
            ("frames", [intact(write_stream(numbers[in_name], 0, rng.randbytes(3 * in_stream.beat_bytes)))]),
            ("consume", in_name, 2),
            ("frames", [intact(write_stream(numbers[in_name], 0, rng.randbytes(2)))]),           # a retry
            ("frames", [intact(write_stream(numbers[in_name], 1, rng.randbytes(2)))]),           # a retry too
            ("frames", [intact(write_stream(numbers[in_name], 3 * in_stream.beat_bytes + 1, b"x"))]),  # beyond
            ("frames", [intact(write_stream(numbers[in_name], 3 * in_stream.beat_bytes,
                                            rng.randbytes(bench.depths[in_name])))]),             # full
            ("consume", in_name, 1),
            ("frames", [intact(hello())]),
            ("pulse", "rx_error", 3), ("pulse", "rx_overflow", 2),
            ("poke", bench.inputs[0], 0xdead_beef),
            ("frames", [intact(read(0, last))]),
        ]
        bench.run(operations)

    def test_alice(self):
        self.commands(Role.ALICE, seed=1)

    def test_bob(self):
        self.commands(Role.BOB, seed=2)


class FrameTestCase(unittest.TestCase):
    def test_damaged_frames(self):
        """COBS errors, CRC errors, too short and too long: counted and answered, nothing executed."""
        bench = LinkBench(self, Role.BOB, seed=3)
        rng = random.Random(3)
        base = bench.map.writable_base
        write_session = write(base, [0x1234_5678])
        frames = [
            bad_cobs(write_session), bad_crc(write_session, rng), nothing_frame(), empty_frame(),
            raw(seal(b"")), raw(seal(bytes([Command.HELLO]))), raw(b"\x01\x01\x01\x01\x01"),
            raw(seal(hello(extra=bytes(MAX_BODY - 5)))),            # MAX_BODY + 1 bytes with the CRC
            raw(rng.randbytes(1000)),
            intact(hello(extra=bytes(MAX_BODY - 6))),                # exactly MAX_BODY: ARGUMENT
            intact(read(0, len(bench.map))),
        ]
        bench.run([("frames", [frame]) for frame in frames] + [
            ("frames", frames),                                      # the same, back to back
            ("frames", [intact(read(0, len(bench.map)))]),
            ("writable",),
        ])
        self.assertEqual(bench.model.registers["session"], 0)

    def test_requests_queue_while_a_reply_waits(self):
        """With o_frames stalled, the link keeps taking requests into its queue, then answers them in order."""
        self.queue(Role.ALICE, [intact(read(0, 16, tag=t)) for t in range(12)], fits=True)

    def test_full_queue_holds_the_sender(self):
        """Requests beyond the queue's room wait at i_frames (not taken, not lost) until replies go out."""
        stream = next(s for s in stream_map(Role.BOB, frame_bits=FRAME_BITS, phases=PHASES) if not s.out)
        rng = random.Random(12)
        frames = [intact(write_stream(stream.number, 0, rng.randbytes(400), tag=t)) for t in range(4)]
        self.queue(Role.BOB, frames, fits=False, depth=2048)

    def queue(self, role, requests, *, fits, depth=64):
        bench = LinkBench(self, role, depths=small_depths(role, depth), seed=4)

        async def testbench(ctx):
            beats = [beat for _, frame_beats in requests for beat in frame_beats]
            sender = _Source(bench.dut.i_frames, beats, bench.rng, 0.0, as_int=False)
            ctx.set(bench.dut.o_frames.ready, 0)
            for _ in range(len(beats) * 12):
                sender.drive(ctx)
                fired = sender.sample(ctx)
                await ctx.tick()
                sender.after(ctx, fired)
            self.assertEqual(sender.done, fits, f"{sender.taken} of {len(beats)} beats taken")
            expected = bench.expect(requests)
            replies = _ReplySink(bench.dut.o_frames, len(expected), bench.rng, 0.5)
            await _run_agents(ctx, [sender, replies], limit=200_000, what="replies")
            self.assertEqual([reply.hex(" ") for reply in replies.beats], [reply.hex(" ") for reply in expected])

        sim = Simulator(bench.dut)
        sim.add_clock(1e-6)
        sim.add_testbench(testbench)
        sim.run()


class StreamTestCase(unittest.TestCase):
    def test_out_streams(self):
        """Every out stream: beats in through its port, out through READ_STREAM, acknowledged, wrapping the ring."""
        for role in Role:
            with self.subTest(role=role):
                bench = LinkBench(self, role, depths=alternating_depths(role), seed=5)
                bench.run(self.out_operations(bench, random.Random(5)))

    def out_operations(self, bench, rng):
        # Generated as the run goes: each operation is chosen from the model's state after the previous one.
        numbers = _numbers(bench.role)
        for stream in bench.streams.values():
            if not stream.out:
                continue
            n = numbers[stream.name]
            buffer = bench.model.streams[stream.name]
            for round_ in range(3):
                room = buffer.free // stream.beat_bytes
                yield ("produce", stream.name, [_beat(rng, stream) for _ in range(room - (round_ == 0))])
                low, high = buffer.low, buffer.high
                yield ("frames", [intact(read_stream(n, low, low, 7)),
                                  intact(read_stream(n, low + 3, low + 7, 600)),
                                  intact(read_stream(n, low, low + 7, 600))])
                yield ("frames", [intact(read_stream(n, high, high, 1))])

    def test_in_streams(self):
        """Every in stream: WRITE_STREAM into the ring, beats out through its port, FULL, retries, wrapping."""
        for role in Role:
            with self.subTest(role=role):
                bench = LinkBench(self, role, depths=alternating_depths(role), seed=6)
                bench.run(self.in_operations(bench, random.Random(6)))

    def in_operations(self, bench, rng):
        numbers = _numbers(bench.role)
        for stream in bench.streams.values():
            if stream.out:
                continue
            n = numbers[stream.name]
            buffer = bench.model.streams[stream.name]
            for round_ in range(4):
                size = buffer.free if round_ == 2 else rng.randrange(1, buffer.free + 1)     # round 2 fills it
                chunk = rng.randbytes(size)
                high, free = buffer.high, buffer.free
                yield ("frames", [intact(write_stream(n, high, chunk)), intact(write_stream(n, high, chunk)),
                                  intact(write_stream(n, high + size, rng.randbytes(free - size + 1)))])
                if buffer.level >= stream.beat_bytes:
                    yield ("consume", stream.name, rng.randrange(1, buffer.level // stream.beat_bytes + 1))

    def test_longest_transfers(self):
        """READ_STREAM and WRITE_STREAM of MAX_DATA bytes, the most one request moves, in 1024-byte rings."""
        depths = {**small_depths(Role.BOB, 16), "key_words": 1024, "flips": 1024}
        bench = LinkBench(self, Role.BOB, depths=depths, seed=13, stall=0.1)
        rng = random.Random(13)
        words, flips = bench.streams["key_words"], bench.streams["flips"]
        n_words, n_flips = _numbers(Role.BOB)["key_words"], _numbers(Role.BOB)["flips"]
        data = rng.randbytes(1024)
        bench.run([
            ("produce", "key_words", [_beat(rng, words) for _ in range(1024 // words.beat_bytes)]),
            ("frames", [intact(read_stream(n_words, 0, 0, 0xffff))]),
            ("frames", [intact(read_stream(n_words, 0, 1, MAX_DATA + 1))]),
            ("frames", [intact(read_stream(n_words, 0, 900, 0xffff))]),
            ("frames", [intact(write_stream(n_flips, 0, data[:MAX_DATA]))]),
            ("frames", [intact(write_stream(n_flips, MAX_DATA, data[MAX_DATA:] + b"x"))]),
            ("frames", [intact(write_stream(n_flips, MAX_DATA, data[MAX_DATA:]))]),
            ("consume", "flips", 1024 // flips.beat_bytes),
        ])

    def test_blocked_producer_resumes(self):
        """A beat for a full ring waits at the port, not taken, until a READ_STREAM acknowledges room."""
        bench = LinkBench(self, Role.BOB, depths=small_depths(Role.BOB, 16), seed=7)
        rng = random.Random(7)
        stream = bench.streams["detections"]
        n = _numbers(Role.BOB)["detections"]
        beats = [_beat(rng, stream) for _ in range(16 // stream.beat_bytes)]
        bench.run([
            ("produce", "detections", beats),
            ("blocked", "detections", _beat(rng, stream),
             intact(read_stream(n, stream.beat_bytes, stream.beat_bytes, 3))),     # an ack one beat on
            ("frames", [intact(read_stream(n, stream.beat_bytes, stream.beat_bytes, 100))]),
        ])

    def test_wrap_around_2_32(self):
        """Offsets that cross 2**32, in both directions, with acks and retries across the wrap."""
        for role in Role:
            with self.subTest(role=role):
                depths = {**small_depths(role, 64), **{s.name: 16 for s in self.wrap_streams(role)[::2]}}
                bench = LinkBench(self, role, depths=depths, seed=8, initial_offset=WRAP - 40)
                bench.run(self.wrap_operations(bench, random.Random(8)))

    @staticmethod
    def wrap_streams(role):
        """An out and an in stream of one-byte beats and of the longest beats: every stream has the same logic."""
        streams = stream_map(role, frame_bits=FRAME_BITS, phases=PHASES)
        chosen = []
        for out in (True, False):
            ours = [s for s in streams if s.out == out]
            chosen += [min(ours, key=lambda s: s.beat_bytes), max(ours, key=lambda s: s.beat_bytes)]
        return chosen

    def wrap_operations(self, bench, rng):
        numbers = _numbers(bench.role)
        yield ("frames", [intact(read(0, len(bench.map)))])
        for stream in self.wrap_streams(bench.role):
            n = numbers[stream.name]
            buffer = bench.model.streams[stream.name]
            beats = min(32, buffer.depth) // stream.beat_bytes
            for _ in range(80 // (beats * stream.beat_bytes) + 1):
                if stream.out:
                    yield ("produce", stream.name, [_beat(rng, stream) for _ in range(beats)])
                    low, high = buffer.low, buffer.high
                    yield ("frames", [intact(read_stream(n, low, low, 300)),
                                      intact(read_stream(n, low - 1, low + 3, 5)),          # an older ack
                                      intact(read_stream(n, low + WRAP // 2, low, 5)),      # 2**31 ahead
                                      intact(read_stream(n, low - WRAP // 2 + 1, low, 5)),  # just older
                                      intact(read_stream(n, high, high - 1, 5)),
                                      intact(read_stream(n, high, high, 5))])
                else:
                    chunk = rng.randbytes(beats * stream.beat_bytes)
                    high = buffer.high
                    yield ("frames", [intact(write_stream(n, high, chunk)),
                                      intact(write_stream(n, high + 1 - WRAP // 2, b"")),
                                      intact(write_stream(n, high - WRAP // 2, b"")),
                                      intact(write_stream(n, high + len(chunk) - 5, chunk[-5:])),
                                      intact(write_stream(n, high, chunk[:4]))])
                    yield ("consume", stream.name, beats)
            self.assertGreater(buffer.high, 0)


class RandomTestCase(unittest.TestCase):
    """Random request sequences, valid and not, with stream traffic between them, against the model."""

    def random_operations(self, bench, rng, count):
        numbers = _numbers(bench.role)
        regs = bench.map
        streams = list(bench.streams.values())
        model = bench.model

        def offset_near(buffer):
            choice = rng.randrange(8)
            if choice < 4:
                return buffer.low + rng.randrange(buffer.level + 1)
            if choice == 4:
                return buffer.low - rng.randrange(1, 100)
            if choice == 5:
                return buffer.high + rng.randrange(1, 100)
            if choice == 6:
                return buffer.low + rng.choice([WRAP // 2, WRAP // 2 + 1, WRAP // 2 - 1, -WRAP // 2])
            return rng.getrandbits(32)

        def request():
            kind = rng.randrange(12)
            if kind == 0:
                return hello(tag=rng.getrandbits(8), extra=b"" if rng.random() < 0.8 else b"x")
            if kind == 1:
                address = rng.randrange(len(regs) + 2) if rng.random() < 0.9 else rng.getrandbits(16)
                return read(address, rng.choice([1, 2, rng.randrange(0, 70)]), tag=rng.getrandbits(8))
            if kind == 2:
                address = rng.randrange(regs.writable_base - 1, len(regs) + 1)
                values = [rng.getrandbits(32) for _ in range(rng.choice([1, 2, rng.randrange(0, 66)]))]
                return write(address, values, tag=rng.getrandbits(8))
            if kind in (3, 4, 5, 6):
                stream = rng.choice([s for s in streams if s.out])
                buffer = model.streams[stream.name]
                number = numbers[stream.name] if rng.random() < 0.95 else rng.randrange(len(streams) + 1)
                return read_stream(number, offset_near(buffer), offset_near(buffer),
                                   rng.choice([rng.randrange(40), 512, 600, 0xffff]), tag=rng.getrandbits(8))
            if kind in (7, 8, 9):
                stream = rng.choice([s for s in streams if not s.out])
                buffer = model.streams[stream.name]
                number = numbers[stream.name] if rng.random() < 0.95 else rng.randrange(len(streams) + 1)
                choice = rng.randrange(4)
                if choice < 2:
                    offset, size = buffer.high, rng.randrange(buffer.free + 4)
                elif choice == 2:
                    offset = buffer.high - rng.randrange(0, 40)
                    size = rng.randrange(45)
                else:
                    offset, size = offset_near(buffer), rng.randrange(10)
                return write_stream(number, offset, rng.randbytes(size), tag=rng.getrandbits(8))
            if kind == 10:
                return bytes([rng.choice([0, 6, 7, 0x80, 0xff]), rng.getrandbits(8)]) + rng.randbytes(
                    rng.randrange(5))
            return bytes([rng.randrange(1, 6), rng.getrandbits(8)]) + rng.randbytes(rng.randrange(20))

        def frame():
            body = request()
            damage = rng.randrange(20)
            if damage == 0:
                return bad_cobs(body)
            if damage == 1:
                return bad_crc(body, rng)
            if damage == 2:
                return raw(rng.randbytes(rng.randrange(6)))
            if damage == 3:
                return rng.choice([empty_frame(), nothing_frame()])
            return intact(body)

        for _ in range(count):
            kind = rng.randrange(10)
            if kind < 5:
                yield ("frames", [frame() for _ in range(rng.choice([1, 1, 2, 4]))])
            elif kind < 7:
                stream = rng.choice([s for s in streams if s.out])
                room = model.streams[stream.name].free // stream.beat_bytes
                if room:
                    yield ("produce", stream.name, [_beat(rng, stream) for _ in range(rng.randrange(1, room + 1))])
            elif kind < 9:
                stream = rng.choice([s for s in streams if not s.out])
                held = model.streams[stream.name].level // stream.beat_bytes
                if held:
                    yield ("consume", stream.name, rng.randrange(1, held + 1))
            else:
                name = rng.choice(bench.inputs)
                yield ("poke", name, rng.getrandbits(regs[name].width))
        yield ("writable",)

    def run_random(self, role, seed, count):
        bench = LinkBench(self, role, depths=mixed_depths(role, random.Random(seed)), seed=seed, stall=0.25)
        rng = random.Random(seed)
        bench.run(self.random_operations(bench, rng, count))

    def test_alice(self):
        for seed in (10, 11):
            with self.subTest(seed=seed):
                self.run_random(Role.ALICE, seed, 60)

    def test_bob(self):
        for seed in (20, 21):
            with self.subTest(seed=seed):
                self.run_random(Role.BOB, seed, 60)


class ConcurrentTestCase(unittest.TestCase):
    """Producers and consumers running freely while requests move the data: no byte lost, repeated or changed."""

    def test_free_running(self):
        depths = small_depths(Role.BOB, 32)
        dut = HostLink(Role.BOB, board="sim", phases=PHASES, frame_bits=FRAME_BITS, depths=depths,
                       constants=CONSTANTS)
        streams = {s.name: s for s in stream_map(Role.BOB, frame_bits=FRAME_BITS, phases=PHASES)}
        numbers = _numbers(Role.BOB)
        rng = random.Random(9)
        out_stream, in_stream = streams["detections"], streams["flips"]
        produced = [_beat(rng, out_stream) for _ in range(40)]
        written = rng.randbytes(40 * in_stream.beat_bytes)
        result = {}

        async def host(ctx, agents):
            """READ_STREAM from where it has received, acking it; WRITE_STREAM what is left at the reported high."""
            received = bytearray()
            sent = 0
            tag = 0
            replies = _ReplySink(dut.o_frames, 0, rng, 0.3)
            want_out = len(produced) * out_stream.beat_bytes
            for _ in range(400):
                if len(received) == want_out and sent == len(written):
                    break
                tag = (tag + 1) % 256
                if rng.random() < 0.5 and len(received) < want_out:
                    body = read_stream(numbers["detections"], len(received), len(received), rng.randrange(1, 40),
                                       tag=tag)
                else:
                    body = write_stream(numbers["flips"], sent, written[sent:sent + rng.randrange(1, 40)], tag=tag)
                sender = _Source(dut.i_frames, intact(body)[1], rng, 0.3, as_int=False)
                replies.count += 1
                await _run_agents(ctx, [sender, replies], limit=20_000, what="request", background=agents)
                reply = unseal(replies.beats[-1])
                self.assertIsNotNone(reply)
                self.assertEqual((reply[1], reply[2]), (body[0], tag), reply.hex(" "))
                self.assertIn(reply[0], (Status.OK, Status.FULL), reply.hex(" "))
                low, high = STREAM_REPLY_HEADER.unpack_from(reply, 3)
                if body[0] == Command.READ_STREAM:
                    self.assertEqual(low, len(received))
                    received += reply[11:]
                    self.assertLessEqual(len(received), high)
                else:
                    self.assertEqual(len(reply), 11)
                    sent = high
            result["received"] = bytes(received)
            result["sent"] = sent

        async def testbench(ctx):
            source = _Source(dut.i_detections, produced, rng, 0.5)
            sink = _Sink(dut.o_flips, 40, rng, 0.5)
            await host(ctx, [source, sink])
            await _run_agents(ctx, [sink], limit=2000, what="the last flips", background=[source])
            result["consumed"] = b"".join(beat.to_bytes(in_stream.beat_bytes, "little") for beat in sink.beats)

        sim = Simulator(dut)
        sim.add_clock(1e-6)
        sim.add_testbench(testbench)
        sim.run()
        expected = b"".join(beat.to_bytes(out_stream.beat_bytes, "little") for beat in produced)
        self.assertEqual(result["received"].hex(), expected.hex())
        self.assertEqual(result["sent"], len(written))
        self.assertEqual(result["consumed"].hex(), written.hex())


if __name__ == "__main__":
    unittest.main()
