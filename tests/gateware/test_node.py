# amaranth: UnusedElaboratable=no
"""The node cores, driven as the host driver will drive them: wire frames of ``qkdlink.host.wire`` into
``i_bytes``, replies out of ``o_bytes`` through a ``FrameSplitter``; every core's output compared with its model."""

import os
import struct
import unittest
from contextlib import nullcontext

import numpy as np
from amaranth import ClockDomain, Module
from amaranth.sim import Simulator

from qkdlink.gateware.node import AliceNode, BobNode, NodeConfig, _SeedGearbox
from qkdlink.gateware.stream import stream_get, stream_put
from qkdlink.host.sifting import matches, sift, squash
from qkdlink.host.toeplitz import toeplitz_hash
from qkdlink.host.wire import (READ_ARGUMENTS, READ_STREAM_ARGUMENTS, STREAM_REPLY_HEADER, WRITE_STREAM_HEADER,
                               FrameSplitter, Request, decode_reply, encode_reply, encode_request, frame)
from qkdlink.sim.hostlink import HostLinkModel
from qkdlink.sim.keymemory import to_beats
from qkdlink.sim.sequencer import SlotSequencerModel, thresholds
from qkdlink.sim.slots import assign
from qkdlink.sim.timetagger import sample, tag
from qkdlink.sim.toeplitz import beats_to_bits, passes, seed_beats
from qkdlink.wire import MAX_DATA, Command, Control, Role, Status, register_map, stream_map
from tests.gateware.test_keymemory import _staller


def _simulate(test, dut, testbenches, background):
    """Run until the ``testbenches`` end; the ``background`` ones (sources that never run dry) run beside."""
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    for testbench in testbenches:
        sim.add_testbench(testbench)
    for testbench in background:
        sim.add_testbench(testbench, background=True)
    with sim.write_vcd(f"{test.id()}.vcd") if os.getenv("GENERATE_VCDS") else nullcontext():
        sim.run()


async def _offer(ctx, port, payload):
    """Offer ``payload`` on ``port`` until it is taken, however long (for background sources)."""
    ctx.set(port.payload, payload)
    ctx.set(port.valid, 1)
    while True:
        _, _, ready = await ctx.tick().sample(port.ready)
        if ready:
            break
    ctx.set(port.valid, 0)


class _Host:
    """The host's end of the wire inside a testbench: one request at a time, its reply awaited (bounded).

    Streams are written and read with the offsets the protocol keeps (``docs/protocol.md``), and beats are packed
    and unpacked with the role's ``stream_map``, as the driver does.
    """

    def __init__(self, dut, role, config, *, seed, stall=0.3):
        self.dut = dut
        self.map = register_map(role)
        self.streams = {stream.name: stream for stream in stream_map(role, frame_bits=config.frame_bits,
                                                                       phases=config.phases)}
        self.depths = config.stream_depths(role)
        self.offsets = {name: 0 for name in self.streams}
        self.splitter = FrameSplitter(header=3)
        self.tag = 0
        self.pause_in = _staller(seed, "i_bytes", stall)
        self.pause_out = _staller(seed, "o_bytes", stall)

    async def exchange(self, ctx, body):
        """Send a request body; returns the body (or Status) of the one reply frame."""
        for byte in frame(body):
            await self.pause_in(ctx)
            await stream_put(ctx, self.dut.i_bytes, byte, timeout=2000)
        for _ in range(4 * MAX_DATA):
            await self.pause_out(ctx)
            results = self.splitter.feed([await stream_get(ctx, self.dut.o_bytes, timeout=5000)])
            if results:
                assert len(results) == 1, results
                return results[0]
        raise AssertionError("a reply longer than any frame")

    async def request(self, ctx, command, arguments=b"", *, status=Status.OK):
        tag, self.tag = self.tag, (self.tag + 1) % 256
        body = await self.exchange(ctx, encode_request(Request(command, tag, arguments)))
        assert isinstance(body, bytes), f"reply to {Command(command).name}: {body!r}"
        reply = decode_reply(body)
        assert (reply.status, reply.command, reply.tag) == (status, command, tag), reply
        return reply

    async def read(self, ctx, name, count=1):
        address = self.map[name].address
        reply = await self.request(ctx, Command.READ, READ_ARGUMENTS.pack(address, count))
        return list(struct.unpack(f"<{count}I", reply.payload))

    async def write(self, ctx, name, *values):
        address = self.map[name].address
        await self.request(ctx, Command.WRITE, struct.pack(f"<H{len(values)}I", address, *values))

    async def wait_register(self, ctx, name, value, *, tries=50, gap=50):
        for _ in range(tries):
            (current,) = await self.read(ctx, name)
            if current == value:
                return
            await ctx.tick().repeat(gap)
        raise AssertionError(f"register {name} is {current}, not {value}")

    def pack(self, name, beats):
        stream = self.streams[name]
        data = bytearray()
        for beat in beats:
            value, shift = 0, 0
            for field in stream.fields:
                assert 0 <= beat[field.name] < 1 << field.bits, (field, beat)
                value |= beat[field.name] << shift
                shift += field.bits
            data += value.to_bytes(stream.beat_bytes, "little")
        return bytes(data)

    def unpack(self, name, data):
        stream = self.streams[name]
        assert len(data) % stream.beat_bytes == 0, (name, len(data))
        beats = []
        for index in range(0, len(data), stream.beat_bytes):
            value = int.from_bytes(data[index:index + stream.beat_bytes], "little")
            beat = {}
            for field in stream.fields:
                beat[field.name] = value & ((1 << field.bits) - 1)
                value >>= field.bits
            assert value == 0, f"padding of a {name} beat is not zero"
            beats.append(beat)
        return beats

    async def write_stream(self, ctx, name, beats, *, tries=100):
        stream = self.streams[name]
        assert not stream.out
        data = self.pack(name, beats)
        for _ in range(tries):
            if not data:
                return
            chunk = data[:min(MAX_DATA, self.depths[name])]
            arguments = WRITE_STREAM_HEADER.pack(stream.number, self.offsets[name]) + chunk
            tag, self.tag = self.tag, (self.tag + 1) % 256
            reply = decode_reply(await self.exchange(ctx, encode_request(Request(Command.WRITE_STREAM, tag,
                                                                                   arguments))))
            assert reply.status in (Status.OK, Status.FULL) and reply.tag == tag, reply
            if reply.status is Status.OK:
                self.offsets[name] += len(chunk)
                data = data[len(chunk):]
                low, high = STREAM_REPLY_HEADER.unpack(reply.payload)
                assert high == self.offsets[name], (name, low, high)
            else:
                await ctx.tick().repeat(100)
        raise AssertionError(f"stream {name}: {len(data)} bytes not taken")

    async def read_stream(self, ctx, name, count, *, tries=100, gap=100):
        """The next ``count`` beats of out stream ``name``."""
        stream = self.streams[name]
        assert stream.out
        wanted = count * stream.beat_bytes
        data = b""
        for _ in range(tries):
            if len(data) == wanted:
                return self.unpack(name, data)
            offset = self.offsets[name]
            arguments = READ_STREAM_ARGUMENTS.pack(stream.number, offset, offset, min(MAX_DATA, wanted - len(data)))
            reply = await self.request(ctx, Command.READ_STREAM, arguments)
            chunk = reply.payload[STREAM_REPLY_HEADER.size:]
            data += chunk
            self.offsets[name] += len(chunk)
            if not chunk:
                await ctx.tick().repeat(gap)
        raise AssertionError(f"stream {name}: {len(data)} of {wanted} bytes came")

    async def assert_drained(self, ctx, name):
        """Nothing more has come on out stream ``name``; frees what was read."""
        offset = self.offsets[name]
        stream = self.streams[name]
        reply = await self.request(ctx, Command.READ_STREAM,
                                   READ_STREAM_ARGUMENTS.pack(stream.number, offset, offset, MAX_DATA))
        assert reply.payload == STREAM_REPLY_HEADER.pack(offset, offset), f"more on {name}: {reply.payload!r}"

    async def read_key(self, ctx):
        """The key memory's words read out (READ command, ``key_words``), ``last`` checked, and its bit count."""
        (count,) = await self.read(ctx, "key_count")
        await self.write_stream(ctx, "key_commands", [{"op": 1, "passes": 0}])
        words = await self.read_stream(ctx, "key_words", -(-count // 16))
        assert [word["last"] for word in words] == [0] * (len(words) - 1) + [1] * bool(words)
        return [word["data"] for word in words], count

    async def hash(self, ctx, key, seed, m, config):
        """Hash the key memory (HASH command, ``hash_blocks``, ``seed``); returns the hash bits."""
        W, A = config.toeplitz_width, config.toeplitz_accumulator
        n = len(key)
        bits = np.concatenate([beats_to_bits(beats, W, len(beats) * W)
                               for beats in seed_beats(seed, n, m, accumulator=A, width=W)])
        padded = np.zeros(-(-bits.size // 8) * 8, dtype=np.uint8)
        padded[:bits.size] = bits
        await self.write_stream(ctx, "hash_blocks", [{"n": n, "m": m}])
        seed_bytes = np.packbits(padded, bitorder="little")
        await self.write_stream(ctx, "seed", [{"bits": int(byte)} for byte in seed_bytes])
        await self.write_stream(ctx, "key_commands", [{"op": 2, "passes": passes(m, A)}])
        beats = await self.read_stream(ctx, "hash", -(-m // W))
        assert [beat["last"] for beat in beats] == [0] * (len(beats) - 1) + [1]
        assert all(beat["data"] < 1 << W for beat in beats)
        return beats_to_bits([beat["data"] for beat in beats], W, m)


def _words(bits):
    return to_beats(np.asarray(bits, dtype=np.uint8), 16)


class _KeyChecks:
    """Flips and hashing of the key memory over the wire, against the host's functions."""

    async def check_key(self, ctx, host, key, config, rng):
        key = np.asarray(key, dtype=np.uint8).copy()
        n = key.size
        self.assertGreaterEqual(n, 4, "the test needs a key of a few bits")
        words, count = await host.read_key(ctx)
        self.assertEqual(count, n)
        self.assertEqual(words, _words(key))

        # Flips: valid ones, one at the block's length, one whose index aliases bit 3 once truncated.
        index_width = (config.key_bits - 1).bit_length()
        flips = [int(index) for index in rng.integers(0, n, 5)]
        for index in flips:
            key[index] ^= 1
        (bad_before,) = await host.read(ctx, "bad_flips")
        await host.write_stream(ctx, "flips", [{"index": index} for index in flips] +
                                [{"index": n}, {"index": (1 << index_width) + 3}])
        await host.wait_register(ctx, "bad_flips", bad_before + 2)
        words, _ = await host.read_key(ctx)
        self.assertEqual(words, _words(key))

        # A block too long for the core is ignored, not truncated into one that would take the next key stream.
        await host.write_stream(ctx, "hash_blocks", [{"n": (1 << 32) - 1, "m": 3}])
        # Two blocks: the first of several passes and a seed that ends inside a byte, whose padding the second
        # must not take.
        A, W = config.toeplitz_accumulator, config.toeplitz_width
        first = [m for m in range(A + 1, n + 1) if passes(m, A) * (A + -(-n // W) * W) % 8]
        self.assertTrue(first, f"no hash length for the test with a key of {n} bits")
        for m in (first[-1], 3):
            seed = rng.integers(0, 2, n + m - 1, dtype=np.uint8)
            hashed = await host.hash(ctx, key, seed, m, config)
            np.testing.assert_array_equal(hashed, toeplitz_hash(key, seed, m), f"hash of m = {m}")
        for name in ("key_words", "hash"):
            await host.assert_drained(ctx, name)


class AliceNodeTestCase(_KeyChecks, unittest.TestCase):
    def test_alice(self):
        seed = 1
        config = NodeConfig.for_tests(toeplitz_accumulator=4)
        dut = AliceNode(config)
        rng = np.random.default_rng(seed)
        frame_bits, frames = config.frame_bits, config.choice_frames
        slots = 1 << frame_bits
        p_z, t0, t1 = thresholds(0.5, (0.5, 0.3, 0.2))
        period = 3
        state = {"choices": {}, "frames": 0, "released": 0, "done": False}

        async def random_words(ctx):
            pause = _staller(seed, "random", 0.6)
            words = np.random.default_rng(seed + 100)
            while True:
                await pause(ctx)
                await _offer(ctx, dut.i_random, {"basis": int(words.integers(0, 1 << 16)),
                                                 "intensity": int(words.integers(0, 1 << 16)),
                                                 "bit": int(words.integers(0, 2))})

        async def monitor(ctx):
            # The sequencer's model in lockstep: the node's i_random.ready says when a slot starts; within a
            # frame the model says when it must, and at a frame's end the node may wait (for RUN or room).
            model = SlotSequencerModel(frame_bits=frame_bits, period=period, p_z=p_z, t0=t0, t1=t1)
            while True:
                _, _, ready, valid, word, outputs = await ctx.tick().sample(
                    dut.i_random.ready, dut.i_random.valid, dut.i_random.payload, dut.modulators)
                expected = model.outputs()
                self.assertEqual(outputs, expected["basis"] | expected["bit"] << 1 | expected["intensity"] << 2 |
                                 expected["emit"] << 4 | expected["sync"] << 5)
                may_start = model.ready(enable=True, frame_free=True)
                must_start = model.ready(enable=False, frame_free=False)
                self.assertIn(ready, {may_start, must_start})
                if ready and not must_start:
                    self.assertGreaterEqual(state["released"], model.frame + 2 - frames,
                                            f"frame {model.frame + 1} began before a frame was released")
                offered = {"basis": word.basis, "intensity": word.intensity, "bit": word.bit} if valid else None
                model.step(enable=ready, frame_free=ready, word=offered)
                if ready:
                    choice = model.outputs()["choice"]
                    state["choices"][choice["frame"], choice["slot"]] = (choice["basis"], choice["bit"],
                                                                         choice["intensity"])
                    state["frames"] = choice["frame"] + 1
                    state["starved"] = model.starved

        async def wait_for(ctx, condition, what):
            for _ in range(20_000):
                if condition():
                    return
                await ctx.tick()
            raise AssertionError(f"waited in vain for {what}")

        async def bench(ctx):
            host = _Host(dut, Role.ALICE, config, seed=seed)
            hello = await host.request(ctx, Command.HELLO)
            model = HostLinkModel(Role.ALICE, board=config.board, phases=config.phases, frame_bits=frame_bits,
                                  depths=config.stream_depths(Role.ALICE),
                                  constants={"clock_hz": config.clock_hz, "baud": config.baud,
                                             "key_bits": config.key_bits})
            self.assertEqual(encode_reply(hello), encode_reply(model.execute(encode_request(
                Request(Command.HELLO, hello.tag)))))

            await host.write(ctx, "period", period, p_z, t0, t1)
            await host.write(ctx, "control", Control.RUN)
            # Two frames fill the choice memory; the sequencer must wait for a release.
            await wait_for(ctx, lambda: len(state["choices"]) == frames * slots, "two frames")
            await ctx.tick().repeat(5 * slots * period)
            self.assertEqual(len(state["choices"]), frames * slots)

            # Bob's lookups: every slot of both frames, mostly in Alice's basis, and one of a frame not held.
            lookups = [(frame, slot, state["choices"][frame, slot][0] ^ int(rng.random() < 0.2))
                       for frame in range(frames) for slot in range(slots)]
            lookups.append((7, 3, 0))
            choices = [state["choices"].get((frame, slot), (0, 0, 3)) for frame, slot, _ in lookups]
            bases, alice_bases, bits, intensities = (np.array(column, dtype=np.uint8) for column in (
                [basis for _, _, basis in lookups], *zip(*choices)))
            await host.write_stream(ctx, "lookups", [{"frame": frame, "slot": slot, "basis": basis}
                                                     for frame, slot, basis in lookups])
            matched = await host.read_stream(ctx, "matches", len(lookups))
            self.assertEqual([(beat["match"], beat["intensity"]) for beat in matched],
                             list(zip(matches(bases, alice_bases, intensities), intensities)))
            sifted = sift(bases, bits, alice_bases, intensities)
            tests = await host.read_stream(ctx, "test", len(sifted.test))
            self.assertEqual([(beat["bit"], beat["intensity"]) for beat in tests],
                             list(zip(sifted.test, sifted.test_intensity)))
            await host.wait_register(ctx, "key_count", len(sifted.key))
            await self.check_key(ctx, host, sifted.key, config, rng)
            for name in ("matches", "test"):
                await host.assert_drained(ctx, name)

            # A bad release, then frame 0: the sequencer goes on with frame 2 (and waits again after it).
            await host.write_stream(ctx, "releases", [{"frame": 5}])
            state["released"] = 1
            await host.write_stream(ctx, "releases", [{"frame": 0}])
            await wait_for(ctx, lambda: len(state["choices"]) == (frames + 1) * slots, "frame 2")
            await ctx.tick().repeat(5 * slots * period)
            self.assertEqual(state["frames"], frames + 1)
            self.assertEqual(await host.read(ctx, "bad_lookups", 3), [1, 1, 0])   # bad_lookups, bad_releases,
            self.assertEqual(await host.read(ctx, "starved"), [state["starved"]])  # then the writable session
            self.assertGreater(state["starved"], 0, "the test needs starved slots")
            state["done"] = True

        _simulate(self, dut, [bench], [monitor, random_words])
        self.assertTrue(state["done"])


class BobNodeTestCase(_KeyChecks, unittest.TestCase):
    def test_bob(self):
        seed = 2
        # The link writes an out stream's beat a byte a cycle: the tags (10 bytes) of clicks a few cycles apart
        # need a deeper queue than the smallest, and a ring that holds them all.
        config = NodeConfig.for_tests(toeplitz_accumulator=4, event_depth=64,
                                      depths={**NodeConfig.for_tests().depths, "tags": 2048})
        dut = BobNode(config)
        rng = np.random.default_rng(seed)
        phases, frame_bits = config.phases, config.frame_bits
        clock_ns, pulse_ns, bin_ns = 10.0, 4.0, 10.0 / config.phases
        settings = {"dead_cycles": 2, "delay": 3, "period": int(5.5 * (1 << 24)), "gate_start": 1, "gate_width": 3}
        sync_cycles, frames = 60, 10

        def pulses(start_ns, frame_count):
            """Sample words of ``frame_count`` frames: a sync every ``sync_cycles`` and random clicks, some of
            them on two detectors at once."""
            cycles = frame_count * sync_cycles + 20
            times = [[] for _ in range(5)]
            for index in range(frame_count):
                sync = start_ns + index * sync_cycles * clock_ns + rng.uniform(0, bin_ns)
                times[4].append(sync)
                for time in sync + rng.uniform(0, sync_cycles * clock_ns, 10):
                    for detector in rng.choice(4, 1 + (rng.random() < 0.3), replace=False):
                        times[detector].append(time)
            words = np.zeros(cycles, dtype=np.uint64)
            for channel, channel_times in enumerate(times):
                words |= sample(channel_times, channel, channels=5, phases=phases, clock_ns=clock_ns,
                                pulse_ns=pulse_ns, cycles=cycles)
            return [int(word) for word in words]

        early = pulses(20.0, 1)
        main = pulses(20.0, frames)
        random_bits = rng.integers(0, 4, 200)
        state = {"presented": [], "phase": "idle", "main_from": None}

        async def drive_samples(ctx):
            # Zeros, the early clicks (control 0: counted as edges only), zeros, then the run.
            for phase, words in (("early", early), ("main", main)):
                for _ in range(100_000):
                    if state["phase"] == phase:
                        break
                    ctx.set(dut.samples, 0)
                    state["presented"].append(0)
                    await ctx.tick()
                else:
                    raise AssertionError(f"no {phase} phase")
                if phase == "main":
                    state["main_from"] = len(state["presented"])
                for word in words:
                    ctx.set(dut.samples, word)
                    state["presented"].append(word)
                    await ctx.tick()
                ctx.set(dut.samples, 0)
                state["phase"] += " done"

        async def random_source(ctx):
            pause = _staller(seed, "random", 0.3)
            for bits in random_bits:
                await pause(ctx)
                await _offer(ctx, dut.i_random, int(bits))

        async def wait_phase(ctx, phase):
            for _ in range(20_000):
                if state["phase"] == phase:
                    return
                await ctx.tick()
            raise AssertionError(f"waited in vain for {phase}")

        async def bench(ctx):
            host = _Host(dut, Role.BOB, config, seed=seed)
            await host.write(ctx, "dead_cycles", settings["dead_cycles"], settings["delay"],
                             settings["period"] & 0xFFFF_FFFF, settings["period"] >> 32, settings["gate_start"],
                             settings["gate_width"])
            state["phase"] = "early"
            await wait_phase(ctx, "early done")
            await ctx.tick().repeat(20)
            await host.write(ctx, "control", Control.RUN | Control.TAGS)
            state["phase"] = "main"
            await wait_phase(ctx, "main done")
            await ctx.tick().repeat(30)

            tags = tag(state["presented"], channels=5, phases=phases, dead_cycles=settings["dead_cycles"])
            events = [event for event in tags.events() if event[0] >= state["main_from"]]
            self.assertLess(len(events), len(tags.events()), "the early clicks must be tagged")
            assignment = assign(events, phases=phases, frame_bits=frame_bits, **{
                name: settings[name] for name in ("period", "delay", "gate_start", "gate_width")})
            detections = assignment.detections
            count = len(detections)
            self.assertTrue(10 <= count <= 50, f"{count} detections")
            self.assertTrue(any(bin(pattern).count("1") > 1 for _, _, pattern in detections))
            basis, bit = squash(np.array([pattern for _, _, pattern in detections], dtype=np.uint8),
                                np.array([[bits & 1, bits >> 1] for bits in random_bits[:count]], dtype=np.uint8))

            received = await host.read_stream(ctx, "tags", len(events))
            self.assertEqual([(beat["cycle"], beat["hits"], tuple(beat[f"fine{c}"] for c in range(5)))
                              for beat in received], events)
            received = await host.read_stream(ctx, "detections", count)
            self.assertEqual([(beat["frame"], beat["slot"], beat["basis"]) for beat in received],
                             [(frame, slot, int(b)) for (frame, slot, _), b in zip(detections, basis)])
            counters = await host.read(ctx, "edges", 8)
            self.assertEqual(counters, [tags.edges, tags.suppressed, 0, assignment.frames, assignment.gated,
                                        assignment.outside, assignment.overrun, 0])
            self.assertTrue(tags.suppressed and assignment.gated and assignment.outside)
            self.assertEqual(assignment.frames, frames)

            # Alice's answers; the test bits and the key as the host sifts them with Bob's bits.
            alice_bases = (basis ^ (rng.random(count) < 0.1)).astype(np.uint8)
            intensities = rng.choice(4, count, p=[0.4, 0.3, 0.2, 0.1]).astype(np.uint8)
            sifted = sift(basis, bit, alice_bases, intensities)
            await host.write_stream(ctx, "answers", [{"alice_basis": int(a), "intensity": int(i)}
                                                     for a, i in zip(alice_bases, intensities)])
            tests = await host.read_stream(ctx, "test", len(sifted.test))
            self.assertEqual([(beat["bit"], beat["intensity"]) for beat in tests],
                             list(zip(sifted.test, sifted.test_intensity)))
            await host.wait_register(ctx, "key_count", len(sifted.key))
            await self.check_key(ctx, host, sifted.key, config, rng)
            for name in ("tags", "detections", "test"):
                await host.assert_drained(ctx, name)
            state["phase"] = "done"

        _simulate(self, dut, [bench, drive_samples], [random_source])
        self.assertEqual(state["phase"], "done")


class SeedGearboxTestCase(unittest.TestCase):
    def check(self, width, *, seed, stall=0.4):
        """Blocks of a multiple of ``width`` bits, each padded to whole bytes, come out as the bits alone when the
        consumer flushes after each block."""
        rng = np.random.default_rng(seed)
        blocks = [rng.integers(0, 2, width * int(rng.integers(1, 40 // width + 3)), dtype=np.uint8)
                  for _ in range(12)]
        self.assertTrue(any(block.size % 8 for block in blocks) or width == 8)
        dut = _SeedGearbox(width)
        done = []

        async def put(ctx):
            pause = _staller(seed, "i", stall)
            for block in blocks:
                for byte in np.packbits(block, bitorder="little"):
                    await pause(ctx)
                    await stream_put(ctx, dut.i, int(byte), timeout=100)

        async def get(ctx):
            pause = _staller(seed, "o", stall)
            for index, block in enumerate(blocks):
                beats = []
                for _ in range(block.size // width):
                    await pause(ctx)
                    beats.append(await stream_get(ctx, dut.o, timeout=100))
                np.testing.assert_array_equal(beats_to_bits(beats, width, block.size), block, f"block {index}")
                await pause(ctx)
                ctx.set(dut.flush, 1)
                await ctx.tick()
                ctx.set(dut.flush, 0)
            done.append(True)

        top = Module()
        top.domains.sync = ClockDomain()        # at width 8 the gearbox is only wires: the testbench's clock
        top.submodules.dut = dut
        _simulate(self, top, [put, get], [])
        self.assertEqual(done, [True])

    def test_widths(self):
        for width in (1, 2, 4, 8):
            with self.subTest(width=width):
                self.check(width, seed=width)

    def test_width_check(self):
        with self.assertRaisesRegex(ValueError, r"Width must be 1, 2, 4 or 8, not 3"):
            _SeedGearbox(3)


class NodeConfigTestCase(unittest.TestCase):
    def test_checks(self):
        with self.assertRaisesRegex(ValueError, r"Board must be one of .*, not 'nope'"):
            NodeConfig.for_tests(board="nope")
        with self.assertRaisesRegex(ValueError, r"Toeplitz width must be 1, 2, 4 or 8, not 16"):
            NodeConfig.for_tests(toeplitz_width=16)
        with self.assertRaisesRegex(ValueError, r"Key bits must not exceed the largest block 256, not 512"):
            NodeConfig.for_tests(key_bits=512)
        depths = {name: depth for name, depth in NodeConfig.for_tests().depths.items() if name != "tags"}
        AliceNode(NodeConfig.for_tests(depths=depths))
        with self.assertRaisesRegex(ValueError, r"depths has no ring size for stream\(s\) tags"):
            BobNode(NodeConfig.for_tests(depths=depths))
        with self.assertRaisesRegex(TypeError, r"Configuration must be a NodeConfig, not 3"):
            AliceNode(3)

    def test_ports(self):
        config = NodeConfig.for_tests(phases=4)
        bob = BobNode(config)
        self.assertEqual(len(bob.samples), 20)
        self.assertEqual(len(bob.i_random.payload), 2)
        alice = AliceNode(config)
        self.assertEqual(len(alice.modulators), 6)
        self.assertEqual(alice.config, config)
