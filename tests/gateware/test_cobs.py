# amaranth: UnusedElaboratable=no
"""The COBS decoder and encoder against :func:`qkdlink.host.wire.cobs_decode`/:func:`~qkdlink.host.wire.cobs_encode`,
and once against the PyPI ``cobs`` package, written by others: random bodies, damaged wire bytes, random stalls on
every stream."""

import os
import random
import unittest
from contextlib import nullcontext

from amaranth.sim import Simulator
from cobs import cobs as pypi_cobs

from qkdlink.gateware.cobs import CobsDecoder, CobsEncoder
from qkdlink.gateware.stream import stream_get, stream_put
from qkdlink.host.wire import CobsError, cobs_decode, cobs_encode


def _simulate(test, dut, testbenches):
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    for testbench in testbenches:
        sim.add_testbench(testbench)
    with sim.write_vcd(f"{test.id()}.vcd") if os.getenv("GENERATE_VCDS") else nullcontext():
        sim.run()


def _staller(rng, probability):
    async def stall(ctx):
        while rng.random() < probability:
            await ctx.tick()
    return stall


def _body(rng, length):
    """A random body of ``length`` bytes: uniform, zero-heavy, 0xff-heavy or without zeros."""
    match rng.randrange(4):
        case 0:
            return bytes(rng.randrange(256) for _ in range(length))
        case 1:
            return bytes(0 if rng.random() < 0.5 else rng.randrange(256) for _ in range(length))
        case 2:
            return bytes(0xff if rng.random() < 0.8 else rng.randrange(256) for _ in range(length))
        case _:
            return bytes(rng.randrange(1, 256) for _ in range(length))


def _bodies(rng, count):
    """Bodies of 0 to 600 bytes, with many around the block size: zero-free runs of 253 to 255 and 507 to 509
    bytes, alone, between zeros or at either end."""
    bodies = [b"", b"\0", b"\0\0", bytes(range(1, 256))]
    for _ in range(count):
        if rng.random() < 0.5:
            bodies.append(_body(rng, rng.choice([rng.randrange(0, 20), rng.randrange(0, 601)])))
        else:
            run = bytes(rng.randrange(1, 256) for _ in range(rng.choice([253, 254, 255, 507, 508, 509])))
            before = _body(rng, rng.randrange(3)) + b"\0" if rng.random() < 0.5 else b""
            after = b"\0" + _body(rng, rng.randrange(3)) if rng.random() < 0.5 else b""
            bodies.append(before + run + after)
    return bodies


def _damage(rng, encoded):
    """``encoded`` with one byte dropped, flipped or inserted (the result may hold zeros: more frames)."""
    if not encoded:
        return bytes([rng.randrange(256)])
    where = rng.randrange(len(encoded))
    match rng.randrange(3):
        case 0:
            return encoded[:where] + encoded[where + 1:]
        case 1:
            return encoded[:where] + bytes([encoded[where] ^ rng.randrange(1, 256)]) + encoded[where + 1:]
        case _:
            return encoded[:where] + bytes([rng.randrange(256)]) + encoded[where:]


def _expected_frames(wire):
    """What a decoder must give for ``wire`` (which ends with a zero byte): per non-empty frame, the body
    :func:`cobs_decode` finds and ``False``; for a frame it rejects, the bytes decoded before the frame ended inside
    a block and ``True``."""
    frames = []
    for encoded in wire.split(b"\0")[:-1]:
        if not encoded:
            continue
        try:
            frames.append((cobs_decode(encoded), False))
        except CobsError:
            # Complete the last block with non-zero bytes; they decode to the end of the body.
            index = 0
            while index + encoded[index] <= len(encoded):
                index += encoded[index]
                if index == len(encoded):
                    raise AssertionError(f"cobs_decode rejected a well-formed frame {encoded.hex()}")
            missing = index + encoded[index] - len(encoded)
            frames.append((cobs_decode(encoded + b"\x01" * missing)[:-missing], True))
    return frames


class CobsDecoderTestCase(unittest.TestCase):
    def decode(self, wire, *, stall, seed, expected_count):
        """``wire`` through the decoder: the frames it gives, as (body, error), once ``expected_count`` end beats
        have come; then no further beat may come."""
        dut = CobsDecoder()
        rng = random.Random(seed)
        put_stall, get_stall = _staller(random.Random(rng.random()), stall), _staller(rng, stall)
        frames = []
        done = []

        async def put(ctx):
            for byte in wire:
                await put_stall(ctx)
                await stream_put(ctx, dut.i, byte)
            done.append(True)

        async def get(ctx):
            body = bytearray()
            while len(frames) < expected_count:
                await get_stall(ctx)
                beat = await stream_get(ctx, dut.o)
                if beat.end:
                    self.assertEqual(beat.data, 0)
                    frames.append((bytes(body), bool(beat.error)))
                    body.clear()
                else:
                    self.assertEqual(beat.error, 0)
                    body.append(beat.data)
            self.assertEqual(body, b"", "body bytes after the last frame")
            ctx.set(dut.o.ready, 1)
            for _ in range(10_000):
                if done:
                    break
                _, _, valid = await ctx.tick().sample(dut.o.valid)
                self.assertFalse(valid, "a beat after the last frame")
            else:
                raise AssertionError("the decoder stopped taking bytes")
            for _ in range(5):
                _, _, valid = await ctx.tick().sample(dut.o.valid)
                self.assertFalse(valid, "a beat after the last frame")

        _simulate(self, dut, [put, get])
        return frames

    def check(self, wire, *, stall=0.3, seed=0):
        expected = _expected_frames(wire)
        actual = self.decode(wire, stall=stall, seed=seed, expected_count=len(expected))
        self.assertEqual(len(actual), len(expected))
        for index, (frame, reference) in enumerate(zip(actual, expected)):
            self.assertEqual(frame, reference, f"frame {index}")
        return actual

    def test_by_hand(self):
        # 01 00 is an empty body; a frame of no bytes gives nothing; 02 and 05 end inside their blocks.
        wire = (b"\x01\0" + b"\0\0" + b"\x03ab\x02c\0" + b"\x02\0" + b"\x02a\x05bc\0" +
                b"\x03\x11\x22\x01\0")
        self.assertEqual(_expected_frames(wire), [(b"", False), (b"ab\0c", False), (b"", True), (b"a\0bc", True),
                                                  (b"\x11\x22\0", False)])
        self.check(wire)

    def test_random_bodies(self):
        for stall in (0.0, 0.3, 0.7):
            with self.subTest(stall=stall):
                rng = random.Random(f"decode/{stall}")
                bodies = _bodies(rng, 20)
                wire = b"".join(cobs_encode(body) + b"\0" * rng.choice([1, 1, 2]) for body in bodies)
                frames = self.check(wire, stall=stall, seed=stall)
                self.assertEqual(frames, [(body, False) for body in bodies])

    def test_damaged_frames_resynchronise(self):
        for stall in (0.0, 0.4):
            with self.subTest(stall=stall):
                rng = random.Random(f"damage/{stall}")
                wire = b""
                for body in _bodies(rng, 24):
                    encoded = cobs_encode(body)
                    if rng.random() < 0.5:
                        encoded = _damage(rng, encoded)
                    wire += encoded + b"\0"
                expected = _expected_frames(wire)
                errors = sum(error for _, error in expected)
                self.assertGreater(errors, 5)       # the damage must reach the error path often
                self.assertLess(errors, len(expected))
                self.check(wire, stall=stall, seed=stall)

    def test_garbage(self):
        rng = random.Random("garbage")
        wire = bytes(rng.choice([0, rng.randrange(1, 8), rng.randrange(256)]) for _ in range(3000)) + b"\0"
        self.check(wire, stall=0.2)

    def test_pypi_cobs_encodings(self):
        # The PyPI package ends a body whose zero-free tail is a multiple of 254 bytes without the final 01 code.
        rng = random.Random("pypi-decode")
        bodies = _bodies(rng, 16) + [b"\x01" * 254, b"\x02" * 508]
        wire = b"".join(pypi_cobs.encode(body) + b"\0" for body in bodies)
        frames = self.decode(wire, stall=0.3, seed=1, expected_count=len(bodies))
        self.assertEqual(frames, [(body, False) for body in bodies])

    def test_one_byte_per_cycle(self):
        rng = random.Random("rate")
        wire = b"".join(cobs_encode(body) + b"\0" for body in _bodies(rng, 4))
        dut = CobsDecoder()
        cycles = []

        async def put(ctx):
            ctx.set(dut.i.valid, 1)
            for byte in wire:
                ctx.set(dut.i.payload, byte)
                _, _, ready = await ctx.tick().sample(dut.i.ready)
                self.assertTrue(ready)
            ctx.set(dut.i.valid, 0)

        async def get(ctx):
            ctx.set(dut.o.ready, 1)
            for cycle in range(len(wire) + 5):
                _, _, valid = await ctx.tick().sample(dut.o.valid)
                if valid:
                    cycles.append(cycle)

        _simulate(self, dut, [put, get])
        self.assertEqual(len(cycles), sum(len(body) + 1 for body, _ in _expected_frames(wire)))


class CobsEncoderTestCase(unittest.TestCase):
    def encode(self, bodies, *, stall, seed):
        """``bodies`` through the encoder, with random stalls; the wire bytes, once as many as the reference gives
        have come; then no further byte may come."""
        dut = CobsEncoder()
        rng = random.Random(seed)
        put_stall, get_stall = _staller(random.Random(rng.random()), stall), _staller(rng, stall)
        expected_length = sum(len(cobs_encode(body)) + 1 for body in bodies)
        wire = bytearray()

        async def put(ctx):
            for body in bodies:
                for byte in body:
                    await put_stall(ctx)
                    await stream_put(ctx, dut.i, {"data": byte, "end": 0})
                await put_stall(ctx)
                await stream_put(ctx, dut.i, {"data": rng.randrange(256), "end": 1})    # data is ignored

        async def get(ctx):
            while len(wire) < expected_length:
                await get_stall(ctx)
                wire.append(await stream_get(ctx, dut.o))
            ctx.set(dut.o.ready, 1)
            for _ in range(300):
                _, _, valid = await ctx.tick().sample(dut.o.valid)
                self.assertFalse(valid, "a byte after the last frame")

        _simulate(self, dut, [put, get])
        return bytes(wire)

    def test_by_hand(self):
        self.assertEqual(self.encode([b"", b"ab\0c", b"\0"], stall=0.3, seed=0),
                         b"\x01\0" + b"\x03ab\x02c\0" + b"\x01\x01\0")

    def test_random_bodies(self):
        for stall in (0.0, 0.3, 0.7):
            with self.subTest(stall=stall):
                bodies = _bodies(random.Random(f"encode/{stall}"), 20)
                wire = self.encode(bodies, stall=stall, seed=stall)
                self.assertEqual(wire, b"".join(cobs_encode(body) + b"\0" for body in bodies))

    def test_pypi_cobs_decodes(self):
        bodies = _bodies(random.Random("pypi-encode"), 16) + [b"\x01" * 254, b"\x02" * 508]
        frames = self.encode(bodies, stall=0.3, seed=2).split(b"\0")
        self.assertEqual(frames[-1], b"")
        self.assertEqual([pypi_cobs.decode(frame) for frame in frames[:-1]], bodies)

    def test_rate(self):
        """With no stall the encoder takes each block at a byte a cycle, then sends it at a byte a cycle."""
        body = bytes(random.Random("rate").randrange(1, 256) for _ in range(600)) + b"\0\0\x05"
        dut = CobsEncoder()
        cycles = []

        async def put(ctx):
            for byte in body:
                await stream_put(ctx, dut.i, {"data": byte, "end": 0})
            await stream_put(ctx, dut.i, {"data": 0, "end": 1})

        async def get(ctx):
            ctx.set(dut.o.ready, 1)
            for cycle in range(3 * len(body)):
                _, _, valid, payload = await ctx.tick().sample(dut.o.valid, dut.o.payload)
                if valid:
                    cycles.append((cycle, payload))

        _simulate(self, dut, [put, get])
        encoded = cobs_encode(body) + b"\0"
        self.assertEqual(bytes(payload for _, payload in cycles), encoded)
        # Blocks: 254 + 254 + 92 bytes, then the two zeros' blocks and the last: six blocks of taking and sending.
        self.assertLessEqual(cycles[-1][0], len(body) + 1 + len(encoded) + 2 * 6)


if __name__ == "__main__":
    unittest.main()
