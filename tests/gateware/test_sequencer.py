# amaranth: UnusedElaboratable=no
import os
import random
import unittest
from contextlib import nullcontext

from amaranth import Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from qkdlink.gateware.choices import ChoiceMemory
from qkdlink.gateware.sequencer import SlotSequencer
from qkdlink.gateware.stream import stream_get, stream_put
from qkdlink.sim.sequencer import NOT_SENT, ChoiceMemoryModel, SlotSequencerModel, choose


OUTPUTS = ("basis", "bit", "intensity", "emit", "sync", "starved")
CHOICE_FIELDS = ("frame", "slot", "basis", "bit", "intensity")
ANSWER_FIELDS = ("basis", "alice_basis", "bit", "intensity")


def fields(const, names):
    return {name: int(getattr(const, name)) for name in names}


def run(testcase, dut, *benches):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for bench in benches:
        sim.add_testbench(bench)
    with sim.write_vcd(f"{testcase.id()}.vcd") if os.getenv("GENERATE_VCDS") else nullcontext():
        sim.run()


def random_word(rng, p_z, t0, t1):
    """A random word whose draws often sit on a threshold's edge, where an off-by-one shows."""
    def draw(*edges):
        value = rng.choice([rng.randrange(1 << 16), 0, 0xFFFF] + [e + d for e in edges for d in (-1, 0)])
        return min(max(value, 0), 0xFFFF)
    return {"basis": draw(p_z), "intensity": draw(t0, t1), "bit": rng.getrandbits(1)}


def sequencer_and_memory(*, frame_bits, frames, frame_width=32):
    """Alice's capture pair as a board wires it: the sequencer's choices into the memory, room back."""
    m = Module()
    m.submodules.sequencer = sequencer = SlotSequencer(frame_bits=frame_bits, frame_width=frame_width)
    m.submodules.memory = memory = ChoiceMemory(frame_bits=frame_bits, frames=frames, frame_width=frame_width)
    wiring.connect(m, sequencer.o_choices, memory.i_choices)
    m.d.comb += sequencer.i_frame_free.eq(memory.o_frame_free)
    return m, sequencer, memory


def set_settings(ctx, dut, *, period, p_z, t0, t1):
    ctx.set(dut.period, period)
    ctx.set(dut.p_z, p_z)
    ctx.set(dut.intensity_thresholds, {"t0": t0, "t1": t1})


class SlotSequencerTestCase(unittest.TestCase):
    def test_cycle_by_cycle(self):
        # Every output in every cycle against the model, with words missing at random, enable and room going
        # up and down, and the settings changing while frames run (they are read at each slot's start).
        configs = [
            # frame_bits, frame_width, periods, offer, settings (p_z, t0, t1)
            (2, 3, (1,), 0.9, [(32768, 20000, 40000), (0, 0, 0), (65536, 65536, 65536)]),
            (3, 8, (1, 2), 0.7, [(1, 0, 65536), (65535, 1, 65535), (30000, 30000, 30001)]),
            (2, 32, (3, 1, 0, 5), 0.5, [(40000, 10000, 10000), (65536, 0, 65536)]),
        ]
        for index, (frame_bits, frame_width, periods, offer, settings) in enumerate(configs):
            with self.subTest(frame_bits=frame_bits, periods=periods):
                self.check_cycles(frame_bits, frame_width, periods, offer, settings, cycles=700, seed=index)

    def check_cycles(self, frame_bits, frame_width, periods, offer, settings, *, cycles, seed):
        dut = SlotSequencer(frame_bits=frame_bits, frame_width=frame_width)
        model = SlotSequencerModel(frame_bits=frame_bits, frame_width=frame_width)
        rng = random.Random(seed)
        counts = {"emit": 0, "sync": 0, "starved slots": 0}

        async def bench(ctx):
            offered = None
            period, (p_z, t0, t1) = periods[0], settings[0]
            for cycle in range(cycles):
                if rng.random() < 0.03:
                    period = rng.choice(periods)
                    p_z, t0, t1 = rng.choice(settings)
                set_settings(ctx, dut, period=period, p_z=p_z, t0=t0, t1=t1)
                model.period, model.p_z, model.t0, model.t1 = period, p_z, t0, t1
                if offered is None and rng.random() < offer:
                    offered = random_word(rng, p_z, t0, t1)
                ctx.set(dut.i_random.valid, offered is not None)
                if offered is not None:
                    ctx.set(dut.i_random.payload, offered)
                enable = rng.random() < 0.9
                free = rng.random() < 0.6
                ctx.set(dut.enable, enable)
                ctx.set(dut.i_frame_free, free)

                expected = model.outputs()
                got = {name: ctx.get(getattr(dut, name)) for name in OUTPUTS}
                self.assertEqual(got, {name: int(expected[name]) for name in OUTPUTS}, f"cycle {cycle}")
                self.assertEqual(bool(ctx.get(dut.o_choices.valid)), expected["choice"] is not None,
                                 f"cycle {cycle}")
                if expected["choice"] is not None:
                    self.assertEqual(fields(ctx.get(dut.o_choices.payload), CHOICE_FIELDS), expected["choice"],
                                     f"cycle {cycle}")
                ready = bool(ctx.get(dut.i_random.ready))
                self.assertEqual(ready, model.ready(enable=enable, frame_free=free), f"cycle {cycle}")
                model.step(enable=enable, frame_free=free, word=offered)
                counts["emit"] += got["emit"]
                counts["sync"] += got["sync"]
                if ready:
                    counts["starved slots"] += offered is None
                    offered = None
                await ctx.tick()

        run(self, dut, bench)
        # The run must have exercised what it checks.
        self.assertGreater(counts["emit"], 50)
        self.assertGreater(counts["sync"], 5)
        self.assertGreater(counts["starved slots"], 3)

    def test_timeline(self):
        # Hand-worked: period 3, four slots a frame, a word always on offer. Slots are decided in cycles
        # 0, 3, 6, ... and shown from the next cycle for three cycles; sync every 12 cycles.
        dut = SlotSequencer(frame_bits=2)
        words = [{"basis": 0, "intensity": 150, "bit": 1},         # Z, decoy
                 {"basis": 40000, "intensity": 99, "bit": 0},      # X, signal
                 {"basis": 32768, "intensity": 200, "bit": 1},     # X (p_z is not below it), weakest
                 {"basis": 32767, "intensity": 65535, "bit": 0},   # Z, weakest
                 {"basis": 65535, "intensity": 0, "bit": 1}]       # X, signal
        expected = [(0, 1, 1), (1, 0, 0), (1, 1, 2), (0, 0, 2), (1, 1, 0)]
        trace = []

        async def bench(ctx):
            set_settings(ctx, dut, period=3, p_z=32768, t0=100, t1=200)
            ctx.set(dut.enable, 1)
            ctx.set(dut.i_frame_free, 1)
            ctx.set(dut.i_random.valid, 1)
            taken = 0
            for cycle in range(16):
                ctx.set(dut.i_random.payload, words[min(taken, len(words) - 1)])
                trace.append({name: ctx.get(getattr(dut, name)) for name in OUTPUTS})
                trace[-1]["beat"] = (fields(ctx.get(dut.o_choices.payload), ("frame", "slot"))
                                     if ctx.get(dut.o_choices.valid) else None)
                if ctx.get(dut.i_random.ready):
                    self.assertEqual(cycle % 3, 0, cycle)
                    taken += 1
                await ctx.tick()

        run(self, dut, bench)
        self.assertEqual([c for c, out in enumerate(trace) if out["emit"]], [1, 4, 7, 10, 13])
        self.assertEqual([c for c, out in enumerate(trace) if out["sync"]], [1, 13])
        self.assertEqual((trace[0]["basis"], trace[0]["bit"], trace[0]["intensity"]), (0, 0, NOT_SENT))
        for cycle in range(1, 16):
            out = trace[cycle]
            self.assertEqual((out["basis"], out["bit"], out["intensity"]), expected[(cycle - 1) // 3], cycle)
        self.assertEqual([out["beat"] for out in trace if out["beat"]],
                         [{"frame": f, "slot": s} for f, s in [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0)]])
        self.assertEqual(trace[-1]["starved"], 0)

    def test_starvation(self):
        # No random words at all: every slot is not sent and counted, the source never fires, and sync still
        # marks each frame so that Bob keeps counting frames.
        dut = SlotSequencer(frame_bits=2)
        trace = []

        async def bench(ctx):
            set_settings(ctx, dut, period=2, p_z=65536, t0=65536, t1=65536)
            ctx.set(dut.enable, 1)
            ctx.set(dut.i_frame_free, 1)
            for _ in range(18):
                trace.append({name: ctx.get(getattr(dut, name)) for name in OUTPUTS})
                trace[-1]["beat"] = (fields(ctx.get(dut.o_choices.payload), CHOICE_FIELDS)
                                     if ctx.get(dut.o_choices.valid) else None)
                await ctx.tick()

        run(self, dut, bench)
        self.assertFalse(any(out["emit"] for out in trace))
        self.assertEqual([c for c, out in enumerate(trace) if out["sync"]], [1, 9, 17])
        self.assertEqual([out["starved"] for out in trace[::2]], list(range(9)))
        self.assertEqual([out["beat"] for out in trace if out["beat"]],
                         [{"frame": f, "slot": s, "basis": 0, "bit": 0, "intensity": NOT_SENT}
                          for f in range(3) for s in range(4)][:9])
        self.assertTrue(all(out["intensity"] == NOT_SENT for out in trace))

    def test_parameters(self):
        with self.assertRaisesRegex(TypeError, r"Frame bits must be an integer of at least 2, not 1"):
            SlotSequencer(frame_bits=1)
        with self.assertRaisesRegex(TypeError, r"Frame width must be a positive integer, not 0"):
            SlotSequencer(frame_bits=4, frame_width=0)
        with self.assertRaisesRegex(TypeError, r"Frame count must be a positive integer, not 0"):
            ChoiceMemory(frame_bits=4, frames=0)
        dut = ChoiceMemory(frame_bits=16, frames=3, frame_width=24)
        self.assertEqual((dut.frame_bits, dut.frames, dut.frame_width, dut.depth), (16, 3, 24, 3 << 14))
        self.assertEqual(SlotSequencer(frame_bits=5, frame_width=9).o_choices.payload.shape().size, 5 + 9 + 4)


class ChoiceMemoryTestCase(unittest.TestCase):
    def test_lookups(self):
        # A writer fills frames at up to one slot a cycle, as the sequencer does at period 1; the host looks
        # up slots of each held frame with random gaps and random back-pressure, adds lookups of frames not
        # held, and releases each frame once answered, with bad releases among them. Answers against the model.
        configs = [
            # frame_bits, frames, write gap probability, frames to write
            (4, 2, 0.0, 7),
            (3, 3, 0.3, 8),
            (2, 1, 0.0, 5),
        ]
        for index, (frame_bits, frames, gap, count) in enumerate(configs):
            with self.subTest(frame_bits=frame_bits, frames=frames, gap=gap):
                self.check_lookups(frame_bits, frames, gap, count, seed=index)

    def check_lookups(self, frame_bits, frames, gap, count, *, seed):
        slots = 1 << frame_bits
        dut = ChoiceMemory(frame_bits=frame_bits, frames=frames, frame_width=8)
        model = ChoiceMemoryModel(frame_bits=frame_bits, frames=frames)
        rng = random.Random(seed)
        # Frame numbers start near the 8-bit wrap, as after a long run.
        numbers = [(250 + k) % 256 for k in range(count)]
        stored = {}
        completed = []
        state = {"writing": False, "answers while writing": 0, "distances": set(), "done": False}
        expected, received = [], []

        async def writer(ctx):
            for frame in numbers:
                for _ in range(10_000):
                    if ctx.get(dut.o_frame_free):
                        break
                    await ctx.tick()
                else:
                    self.fail(f"no room for frame {frame}")
                stored[frame] = [(rng.getrandbits(1), rng.getrandbits(1), rng.randrange(4)) for _ in range(slots)]
                state["writing"] = True
                for slot, (basis, bit, intensity) in enumerate(stored[frame]):
                    ctx.set(dut.i_choices.valid, 1)
                    ctx.set(dut.i_choices.payload, {"frame": frame, "slot": slot, "basis": basis, "bit": bit,
                                                    "intensity": intensity})
                    await ctx.tick()
                    ctx.set(dut.i_choices.valid, 0)
                    while rng.random() < gap:
                        await ctx.tick()
                state["writing"] = False
                completed.append(frame)

        async def host(ctx):
            fed = 0
            for k, frame in enumerate(numbers):
                # Now and then let the writer get ahead, so that several frames are held.
                for _ in range(rng.choice([0, 0, slots * 2])):
                    await ctx.tick()
                for _ in range(10_000):
                    if frame in completed:
                        break
                    await ctx.tick()
                else:
                    self.fail(f"frame {frame} was never written")
                # Frames the writer has completed are held until released here, whenever a lookup arrives.
                while fed < len(completed):
                    for slot, (basis, bit, intensity) in enumerate(stored[completed[fed]]):
                        model.write({"frame": completed[fed], "slot": slot, "basis": basis, "bit": bit,
                                     "intensity": intensity})
                    fed += 1
                held = completed[k:fed]
                lookups = [(rng.choice(held), rng.randrange(slots), rng.getrandbits(1))
                           for _ in range(rng.randrange(2, 8))]
                # Frames not held: never begun (the writer cannot begin it before this one is released), far
                # away (a large distance from the oldest), and released.
                lookups += [((frame + frames) % 256, rng.randrange(slots), 1), ((frame + 128) % 256, 0, 0)]
                if k:
                    lookups.append((numbers[k - 1], rng.randrange(slots), 0))
                rng.shuffle(lookups)
                for lookup in lookups:
                    expected.append(model.lookup(*lookup))
                    if lookup[0] in held:
                        state["distances"].add((lookup[0] - frame) % 256)
                    while rng.random() < 0.3:
                        await ctx.tick()
                    await stream_put(ctx, dut.i_lookup, dict(zip(("frame", "slot", "basis"), lookup)))
                for _ in range(10_000):
                    if len(received) == len(expected):
                        break
                    await ctx.tick()
                else:
                    self.fail(f"lookups of frame {frame} not answered")
                # Releases not of the oldest held frame are ignored; then the right one.
                bad = [(frame + 1) % 256, numbers[k - 1] if k else (frame + 5) % 256]
                for release in bad[rng.randrange(3):] + [frame]:
                    self.assertEqual(model.release(release), release == frame)
                    await stream_put(ctx, dut.i_release, release)
            await ctx.tick().repeat(3)              # a refused release is counted three cycles after it came
            state["counters"] = (ctx.get(dut.bad_lookup), ctx.get(dut.bad_release))
            state["done"] = True

        async def reader(ctx):
            while not state["done"]:
                if rng.random() < 0.4:
                    await ctx.tick()
                    continue
                ctx.set(dut.o_lookup.ready, 1)
                _, _, valid, payload = await ctx.tick().sample(dut.o_lookup.valid, dut.o_lookup.payload)
                ctx.set(dut.o_lookup.ready, 0)
                if valid:
                    received.append(fields(payload, ANSWER_FIELDS))
                    state["answers while writing"] += state["writing"]

        run(self, dut, writer, host, reader)
        self.assertEqual(received, expected)
        self.assertTrue(any(answer["intensity"] == NOT_SENT for answer in received))
        self.assertTrue(any(answer["intensity"] != NOT_SENT for answer in received))
        self.assertGreater(model.bad_release, 0)
        self.assertEqual(state["counters"], (model.bad_lookup, model.bad_release))
        # Lookups reached every region the memory has, counted from the oldest held frame.
        self.assertEqual(state["distances"], set(range(frames)))
        if frames > 1 and gap == 0:
            # At one slot a cycle the memory still answers lookups while it writes.
            self.assertGreater(state["answers while writing"], 5)

    def test_frame_not_yet_held(self):
        # Before a frame's last slot is written, lookups of it are bad and releasing it is ignored; a lookup
        # offered in the very cycle after the last slot arrives reads the word that slot completed.
        dut = ChoiceMemory(frame_bits=3, frames=2)
        values = [(s & 1, (s >> 1) & 1, (s % 3) + 1) for s in range(8)]
        answers = []

        async def bench(ctx):
            async def write(slots):
                for slot in slots:
                    basis, bit, intensity = values[slot]
                    ctx.set(dut.i_choices.valid, 1)
                    ctx.set(dut.i_choices.payload, {"frame": 0, "slot": slot, "basis": basis, "bit": bit,
                                                    "intensity": intensity})
                    await ctx.tick()
                ctx.set(dut.i_choices.valid, 0)

            async def lookup(slot, basis):
                await stream_put(ctx, dut.i_lookup, {"frame": 0, "slot": slot, "basis": basis})
                answers.append(fields(await stream_get(ctx, dut.o_lookup, timeout=10), ANSWER_FIELDS))

            ctx.set(dut.o_lookup.ready, 0)
            await lookup(0, 1)
            await stream_put(ctx, dut.i_release, 0)
            await write(range(6))
            self.assertEqual(ctx.get(dut.o_frame_free), 1)
            await lookup(1, 0)
            await stream_put(ctx, dut.i_release, 0)
            await write(range(6, 8))
            await lookup(7, 1)
            await lookup(5, 0)
            self.assertEqual((ctx.get(dut.bad_lookup), ctx.get(dut.bad_release)), (2, 2))
            await stream_put(ctx, dut.i_release, 0)
            await lookup(5, 0)
            self.assertEqual((ctx.get(dut.bad_lookup), ctx.get(dut.bad_release)), (3, 2))

        run(self, dut, bench)
        not_sent = {"alice_basis": 0, "bit": 0, "intensity": NOT_SENT}
        self.assertEqual(answers, [
            {"basis": 1, **not_sent},
            {"basis": 0, **not_sent},
            {"basis": 1, "alice_basis": 1, "bit": 1, "intensity": 2},   # slot 7
            {"basis": 0, "alice_basis": 1, "bit": 0, "intensity": 3},   # slot 5
            {"basis": 0, **not_sent},
        ])


    def test_check_timing(self):
        # Hand-worked edges of "held" (from two cycles after the last slot's choice arrives) and of a release
        # (acts two cycles after it is accepted), for a lookup that is checked in the cycle after it is
        # accepted. Frames of four slots; slot s of frame f holds basis 1, bit f, intensity s.
        dut = ChoiceMemory(frame_bits=2, frames=2)
        schedule = {
            # cycle: (choice beat (frame, slot), lookup (frame, slot, basis), release)
            0: ((0, 0), None, None), 1: ((0, 1), None, None), 2: ((0, 2), None, None),
            3: ((0, 3), None, None),
            4: (None, (0, 1, 1), None),         # checked in cycle 5, the first in which frame 0 is held: found
            10: ((1, 0), None, None), 11: ((1, 1), None, None), 12: ((1, 2), None, None),
            13: ((1, 3), (1, 2, 0), None),      # checked in cycle 14, the last before frame 1 is held: not found
            20: (None, None, 0),
            21: (None, (0, 3, 0), None),        # checked in cycle 22, where the release acts: not found
            25: (None, (1, 1, 1), None),        # held: found
            26: (None, None, 0),                # already released: bad
            # With o_lookup stalled from cycle 32 to 39: the answer to the lookup of cycle 28 waits, the lookup
            # of cycle 33 is found in cycle 34 but cannot read; its frame's release acts in cycle 38, so when
            # it reads (cycle 40) it answers not sent, as the region may have been written again meanwhile.
            28: (None, (1, 0, 0), None),
            33: (None, (1, 2, 1), None),
            36: (None, None, 1),
        }
        answers = []

        async def bench(ctx):
            for cycle in range(48):
                ready = not 32 <= cycle < 40
                ctx.set(dut.o_lookup.ready, ready)
                beat, lookup, release = schedule.get(cycle, (None, None, None))
                ctx.set(dut.i_choices.valid, beat is not None)
                if beat is not None:
                    frame, slot = beat
                    ctx.set(dut.i_choices.payload, {"frame": frame, "slot": slot, "basis": 1, "bit": frame,
                                                    "intensity": slot})
                ctx.set(dut.i_lookup.valid, lookup is not None)
                if lookup is not None:
                    self.assertEqual(ctx.get(dut.i_lookup.ready), 1, cycle)
                    ctx.set(dut.i_lookup.payload, dict(zip(("frame", "slot", "basis"), lookup)))
                ctx.set(dut.i_release.valid, release is not None)
                if release is not None:
                    ctx.set(dut.i_release.payload, release)
                if ready and ctx.get(dut.o_lookup.valid):
                    answers.append(fields(ctx.get(dut.o_lookup.payload), ANSWER_FIELDS))
                await ctx.tick()
            self.assertEqual((ctx.get(dut.bad_lookup), ctx.get(dut.bad_release)), (3, 1))

        run(self, dut, bench)
        not_sent = {"alice_basis": 0, "bit": 0, "intensity": NOT_SENT}
        self.assertEqual(answers, [
            {"basis": 1, "alice_basis": 1, "bit": 0, "intensity": 1},
            {"basis": 0, **not_sent},
            {"basis": 0, **not_sent},
            {"basis": 1, "alice_basis": 1, "bit": 1, "intensity": 1},
            {"basis": 0, "alice_basis": 1, "bit": 1, "intensity": 0},
            {"basis": 1, **not_sent},
        ])


class CaptureTestCase(unittest.TestCase):
    """The sequencer and the choice memory wired together, as on Alice's board."""

    def test_pause_and_resume(self):
        # Hand-worked, period 1, frames of four slots, room for two. Frames 0 and 1 are decided in cycles
        # 0..7; in cycle 8 the memory is full, so the outputs idle from cycle 9. A release accepted in cycle 20
        # acts in cycle 22 and frees a region in cycle 23, where frame 2 is decided: sync in cycle 24. A release
        # of frame 2 (not the oldest) in cycle 35 is refused in cycle 36 and counted in cycle 38; frame 1's in
        # cycle 45 lets frame 3 start in 48 (sync 49). Enable falls in cycle 50, inside frame 3, which runs to
        # its end: frame 4 waits for enable (cycle 60, sync 61) even though releases in cycles 55 and 56 (back to
        # back, the second checked while the first acts) made room for it and frame 5 (sync 65).
        top, sequencer, memory = sequencer_and_memory(frame_bits=2, frames=2)
        releases = {20: 0, 35: 2, 45: 1, 55: 2, 56: 3}
        trace = []

        async def bench(ctx):
            set_settings(ctx, sequencer, period=1, p_z=65536, t0=65536, t1=65536)
            ctx.set(sequencer.i_random.valid, 1)
            ctx.set(sequencer.i_random.payload, {"basis": 0, "intensity": 0, "bit": 1})
            for cycle in range(76):
                ctx.set(sequencer.enable, not 50 <= cycle < 60)
                ctx.set(memory.i_release.valid, cycle in releases)
                ctx.set(memory.i_release.payload, releases.get(cycle, 0))
                self.assertEqual(ctx.get(memory.i_release.ready), 1)
                trace.append({
                    "sync": ctx.get(sequencer.sync), "emit": ctx.get(sequencer.emit),
                    "intensity": ctx.get(sequencer.intensity),
                    "beat": (fields(ctx.get(sequencer.o_choices.payload), ("frame", "slot"))
                             if ctx.get(sequencer.o_choices.valid) else None),
                    "bad_release": ctx.get(memory.bad_release),
                })
                await ctx.tick()

        run(self, top, bench)
        self.assertEqual([c for c, out in enumerate(trace) if out["sync"]], [1, 5, 24, 49, 61, 65])
        emitting = [c for c, out in enumerate(trace) if out["emit"]]
        self.assertEqual(emitting, [*range(1, 9), *range(24, 28), *range(49, 53), *range(61, 69)])
        self.assertEqual([c for c, out in enumerate(trace) if out["intensity"] == 0], emitting)
        beats = [(c, out["beat"]["frame"], out["beat"]["slot"]) for c, out in enumerate(trace) if out["beat"]]
        self.assertEqual(beats, [(c, f, s) for f, start in enumerate((1, 5, 24, 49, 61, 65))
                                 for s, c in enumerate(range(start, start + 4))])
        self.assertEqual([out["bad_release"] for out in trace][37:39], [0, 1])
        self.assertEqual(trace[-1]["bad_release"], 1)

    def test_emission_with_lookups(self):
        # The sequencer runs frames without end while the host looks up each frame as it completes and then
        # releases it; the choice stream must follow the model from the words the sequencer took, and every
        # answer must be the choice of its slot. At period 1 lookups share the memory with a write every
        # fourth cycle; at period 2 with one every eighth.
        for period in (1, 2):
            with self.subTest(period=period):
                self.check_emission(period=period, frame_bits=4, frames=2, count=6, seed=period)

    def check_emission(self, *, period, frame_bits, frames, count, seed):
        slots = 1 << frame_bits
        top, sequencer, memory = sequencer_and_memory(frame_bits=frame_bits, frames=frames)
        rng = random.Random(seed)
        p_z, t0, t1 = 45000, 30000, 50000
        sent = {}                       # (frame, slot) -> what the model chose from the word taken
        beats = {}                      # (frame, slot) -> the o_choices beat
        expected, received = [], []
        state = {"done": False, "lookups while emitting": 0}

        async def source(ctx):
            # The sequencer (a registered pipeline) decides slot k in the cycle it takes word k, and shows it in
            # the next: remember each slot's word, or its absence, in decision order.
            set_settings(ctx, sequencer, period=period, p_z=p_z, t0=t0, t1=t1)
            ctx.set(sequencer.enable, 1)
            decisions = []
            offered = None
            while not state["done"]:
                if offered is None and rng.random() < 0.9:
                    offered = random_word(rng, p_z, t0, t1)
                ctx.set(sequencer.i_random.valid, offered is not None)
                if offered is not None:
                    ctx.set(sequencer.i_random.payload, offered)
                _, _, ready, valid, payload = await ctx.tick().sample(
                    sequencer.i_random.ready, sequencer.o_choices.valid, sequencer.o_choices.payload)
                if valid:
                    beat = fields(payload, CHOICE_FIELDS)
                    key = (beat["frame"], beat["slot"])
                    beats[key] = beat
                    sent[key] = decisions.pop(0)
                if ready:
                    decisions.append(choose(offered, p_z=p_z, t0=t0, t1=t1))
                    offered = None

        async def host(ctx):
            for frame in range(count):
                for _ in range(20_000):
                    if (frame, slots - 1) in beats:
                        break
                    await ctx.tick()
                else:
                    self.fail(f"frame {frame} was never sent")
                lookups = [(frame, rng.randrange(slots), rng.getrandbits(1)) for _ in range(4)]
                lookups.insert(rng.randrange(4), (frame + 7, 0, 1))
                for lookup_frame, slot, basis in lookups:
                    if lookup_frame == frame:
                        alice = beats[(frame, slot)]
                        expected.append({"basis": basis, "alice_basis": alice["basis"], "bit": alice["bit"],
                                         "intensity": alice["intensity"]})
                    else:
                        expected.append({"basis": basis, "alice_basis": 0, "bit": 0, "intensity": NOT_SENT})
                    await stream_put(ctx, memory.i_lookup, {"frame": lookup_frame, "slot": slot, "basis": basis},
                                     timeout=200)
                    state["lookups while emitting"] += ctx.get(sequencer.intensity) != NOT_SENT or \
                        ctx.get(sequencer.emit)
                for _ in range(1000):
                    if len(received) == len(expected):
                        break
                    await ctx.tick()
                else:
                    self.fail(f"lookups of frame {frame} not answered")
                await stream_put(ctx, memory.i_release, frame)
            state["done"] = True

        async def reader(ctx):
            while not state["done"]:
                ready = rng.random() < 0.6
                ctx.set(memory.o_lookup.ready, ready)
                _, _, valid, payload = await ctx.tick().sample(memory.o_lookup.valid, memory.o_lookup.payload)
                if ready and valid:
                    received.append(fields(payload, ANSWER_FIELDS))

        run(self, top, source, host, reader)
        self.assertEqual(received, expected)
        self.assertGreaterEqual(len(beats), count * slots)
        self.assertEqual(sorted(beats), [(f, s) for f in range(len(beats) // slots) for s in range(slots)]
                         + [(len(beats) // slots, s) for s in range(len(beats) % slots)])
        for key, beat in beats.items():
            self.assertEqual((beat["basis"], beat["bit"], beat["intensity"]), sent[key], key)
        self.assertTrue(any(intensity == NOT_SENT for _, _, intensity in sent.values()))
        self.assertGreater(state["lookups while emitting"], count * 2)
