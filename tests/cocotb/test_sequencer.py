# amaranth: UnusedElaboratable=no
"""Alice's slot sequencer and choice memory as Verilog under Verilator, driven by cocotb, against the models.

The two cores are wired as on the board (choices into the memory, room back to the sequencer) in one top-level,
built once. Each test drives every input cycle by cycle with random words missing, random lookups (good and bad)
with random back-pressure and releases (good and bad), and checks every output in every cycle against
:class:`~qkdlink.sim.sequencer.SlotSequencerModel` and :class:`~qkdlink.sim.sequencer.ChoiceMemoryModel`.
"""

import random
from pathlib import Path

import cocotb
from amaranth import Module
from amaranth.lib import data, wiring
from amaranth.lib.wiring import Out
from cocotb.triggers import ReadOnly, RisingEdge

from qkdlink.gateware.choices import ChoiceMemory
from qkdlink.gateware.sequencer import SlotSequencer
from qkdlink.sim.sequencer import ChoiceMemoryModel, SlotSequencerModel
from tests.cocotb import harness


FRAME_BITS, FRAMES = 3, 3


class Capture(wiring.Component):
    """The sequencer and the choice memory connected; the choice stream and the memory's room are also outputs."""

    def __init__(self, *, frame_bits, frames):
        self.sequencer = SlotSequencer(frame_bits=frame_bits)
        self.memory = ChoiceMemory(frame_bits=frame_bits, frames=frames)
        sequencer = self.sequencer.signature.members
        memory = self.memory.signature.members
        super().__init__({
            **{name: sequencer[name] for name in ("period", "p_z", "intensity_thresholds", "enable", "i_random",
                                                  "basis", "bit", "intensity", "emit", "sync", "starved",
                                                  "o_choices")},
            **{name: memory[name] for name in ("i_release", "i_lookup", "o_lookup", "bad_lookup", "bad_release")},
            "frame_free": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.sequencer = sequencer = self.sequencer
        m.submodules.memory = memory = self.memory
        wiring.connect(m, sequencer.o_choices, memory.i_choices)
        wiring.connect(m, sequencer.o_choices, wiring.flipped(self.o_choices))
        m.d.comb += [
            sequencer.i_frame_free.eq(memory.o_frame_free),
            self.frame_free.eq(memory.o_frame_free),
        ]
        for name in ("period", "p_z", "intensity_thresholds", "enable"):
            m.d.comb += getattr(sequencer, name).eq(getattr(self, name))
        for name in ("basis", "bit", "intensity", "emit", "sync", "starved"):
            m.d.comb += getattr(self, name).eq(getattr(sequencer, name))
        for name in ("bad_lookup", "bad_release"):
            m.d.comb += getattr(self, name).eq(getattr(memory, name))
        wiring.connect(m, wiring.flipped(self.i_random), sequencer.i_random)
        wiring.connect(m, wiring.flipped(self.i_release), memory.i_release)
        wiring.connect(m, wiring.flipped(self.i_lookup), memory.i_lookup)
        wiring.connect(m, wiring.flipped(self.o_lookup), memory.o_lookup)
        return m


def _layout(core, *path):
    signature = core.signature
    for name in path[:-1]:
        signature = signature.members[name].signature
    return data.Layout.cast(signature.members[path[-1]].shape)


def _fields(layout, bits, names):
    const = layout.from_bits(bits)
    return {name: int(getattr(const, name)) for name in names}


class TB:
    """Drives every input of :class:`Capture` cycle by cycle and checks every output against the models."""

    def __init__(self, dut, *, seed, period, offer, settings, lookup_rate=0.15, ready_rate=0.6):
        self.dut = dut
        self.core = Capture(frame_bits=FRAME_BITS, frames=FRAMES)
        self.rng = random.Random(seed)
        self.period = period
        self.offer = offer
        self.settings = settings
        self.lookup_rate = lookup_rate
        self.ready_rate = ready_rate
        self.sequencer = SlotSequencerModel(frame_bits=FRAME_BITS, period=period)
        self.memory = ChoiceMemoryModel(frame_bits=FRAME_BITS, frames=FRAMES)
        self.word_layout = _layout(self.core, "i_random", "payload")
        self.thresholds_layout = _layout(self.core, "intensity_thresholds")
        self.choice_layout = _layout(self.core, "o_choices", "payload")
        self.lookup_layout = _layout(self.core, "i_lookup", "payload")
        self.answer_layout = _layout(self.core, "o_lookup", "payload")
        self.expected, self.received = [], []
        self.released = []
        self.counts = {"emit": 0, "starved": 0, "good lookups": 0, "bad lookups": 0, "releases": 0,
                       "bad releases": 0, "paused": 0}

    async def start(self):
        await harness.start(self.dut, zero=("i_random__valid", "i_release__valid", "i_lookup__valid",
                                            "o_lookup__ready", "enable"))

    def _set_settings(self, period, p_z, t0, t1):
        self.dut.period.value = period
        self.dut.p_z.value = p_z
        self.dut.intensity_thresholds.value = harness.pack(self.thresholds_layout, {"t0": t0, "t1": t1})
        self.sequencer.period, self.sequencer.p_z, self.sequencer.t0, self.sequencer.t1 = period, p_z, t0, t1

    def _random_word(self):
        rng = self.rng
        p_z, t0, t1 = self.sequencer.p_z, self.sequencer.t0, self.sequencer.t1

        def draw(*edges):
            value = rng.choice([rng.randrange(1 << 16)] * 2 + [e + d for e in edges for d in (-1, 0)])
            return min(max(value, 0), 0xFFFF)
        return {"basis": draw(p_z), "intensity": draw(t0, t1), "bit": rng.getrandbits(1)}

    def _new_lookup(self):
        """A lookup of a held frame mostly; else of one being written, one released, or one never begun."""
        rng = self.rng
        held = list(self.memory.held)
        if held and rng.random() < 0.8:
            frame = rng.choice(held)
        else:
            candidates = [self.sequencer.frame + 2] + self.released[-2:]
            if self.memory.writing is not None:
                candidates.append(self.memory.writing[0])
            frame = rng.choice(candidates)
        return {"frame": frame, "slot": rng.randrange(1 << FRAME_BITS), "basis": rng.getrandbits(1)}

    def _new_release(self):
        """The oldest held frame mostly; else one not begun, a younger held one, or one released already."""
        held = list(self.memory.held)
        if held and self.rng.random() < 0.85:
            return held[0]
        return self.rng.choice([self.sequencer.frame + 1, *held[1:], *self.released[-2:]])

    async def run(self, cycles, *, drain=30):
        """Run ``cycles`` cycles of random traffic, then ``drain`` more with no new lookups or releases.

        The memory acts on a release two cycles after accepting it, checks a lookup in the cycle after accepting
        it, and counts a choice in the second cycle after it arrives; the model is updated at the same points. A
        release is offered only while no lookup is outstanding, as a host sifts a frame before releasing it (a
        lookup that is waiting to read when its frame is released is answered as not sent, depending on when it
        reads).
        """
        dut, rng = self.dut, self.rng
        offered = lookup = None
        to_check = stored = None                # accepted, or shown, in the previous cycle
        releases = {}                           # cycle -> frame released in it
        settings = self.settings[0]
        enable = True
        for cycle in range(cycles + drain):
            quiet = cycle >= cycles
            # Drive this cycle's inputs (the edge that ends the previous cycle has just passed).
            if rng.random() < 0.02:
                settings = rng.choice(self.settings)
            self._set_settings(self.period, *settings)
            if offered is None and rng.random() < self.offer:
                offered = self._random_word()
            dut.i_random__valid.value = offered is not None
            if offered is not None:
                dut.i_random__payload.value = harness.pack(self.word_layout, offered)
            if rng.random() < 0.01:
                enable = not enable
            dut.enable.value = enable
            # Release the oldest frame now and then (a bad release now and then), so emission goes on.
            outstanding = lookup is not None or to_check is not None or len(self.received) < len(self.expected)
            release = None
            if not quiet and not outstanding and rng.random() < 0.15:
                release = self._new_release()
            dut.i_release__valid.value = release is not None
            if release is not None:
                dut.i_release__payload.value = release
            elif not quiet and lookup is None and rng.random() < self.lookup_rate:
                lookup = self._new_lookup()
            dut.i_lookup__valid.value = lookup is not None
            if lookup is not None:
                dut.i_lookup__payload.value = harness.pack(self.lookup_layout, lookup)
            ready = rng.random() < self.ready_rate
            dut.o_lookup__ready.value = ready

            await ReadOnly()
            self._check_outputs(cycle)
            frame_free = bool(dut.frame_free.value)
            assert frame_free == self.memory.frame_free, f"cycle {cycle}: frame_free {frame_free}"
            random_ready = bool(dut.i_random__ready.value)
            assert random_ready == self.sequencer.ready(enable=enable, frame_free=frame_free), \
                f"cycle {cycle}: i_random.ready {random_ready}"
            choice = self.sequencer.outputs()["choice"]
            self.sequencer.step(enable=enable, frame_free=frame_free, word=offered)
            if random_ready:
                offered = None
            # The memory's order within a cycle: the release accepted two cycles ago acts, the lookup accepted
            # in the previous cycle is checked, the choice shown in the previous cycle is stored.
            if cycle - 2 in releases:
                frame = releases.pop(cycle - 2)
                if self.memory.release(frame):
                    self.released.append(frame)
                    self.counts["releases"] += 1
                else:
                    self.counts["bad releases"] += 1
            if to_check is not None:
                bad = self.memory.bad_lookup
                self.expected.append(self.memory.lookup(to_check["frame"], to_check["slot"], to_check["basis"]))
                self.counts["bad lookups" if self.memory.bad_lookup > bad else "good lookups"] += 1
            if stored is not None:
                self.memory.write(stored)
            to_check, stored = None, choice
            if release is not None:
                assert dut.i_release__ready.value, f"cycle {cycle}: release refused"
                releases[cycle] = release
            if lookup is not None and dut.i_lookup__ready.value:
                to_check, lookup = lookup, None
            if ready and dut.o_lookup__valid.value:
                self.received.append(_fields(self.answer_layout, int(dut.o_lookup__payload.value),
                                             ("basis", "alice_basis", "bit", "intensity")))
                assert self.received == self.expected[:len(self.received)], \
                    f"cycle {cycle}: answer {self.received[-1]}, model {self.expected[len(self.received) - 1]}"
            self.counts["paused"] += not self.sequencer.running
            await RisingEdge(dut.clk)

        await ReadOnly()
        assert self.received == self.expected, "lookups went unanswered"
        assert int(dut.bad_release.value) == self.memory.bad_release
        assert int(dut.bad_lookup.value) == self.memory.bad_lookup

    def _check_outputs(self, cycle):
        dut = self.dut
        expected = self.sequencer.outputs()
        got = {name: int(dut[name].value) for name in ("basis", "bit", "intensity", "emit", "sync", "starved")}
        assert got == {name: int(expected[name]) for name in got}, f"cycle {cycle}: {got} != model {expected}"
        valid = bool(dut.o_choices__valid.value)
        assert valid == (expected["choice"] is not None), f"cycle {cycle}: o_choices.valid {valid}"
        if valid:
            beat = _fields(self.choice_layout, int(dut.o_choices__payload.value),
                           ("frame", "slot", "basis", "bit", "intensity"))
            assert beat == expected["choice"], f"cycle {cycle}: choice {beat} != model {expected['choice']}"
        self.counts["emit"] += got["emit"]
        self.counts["starved"] = got["starved"]


SETTINGS = [(32768, 20000, 40000), (0, 0, 65536), (65536, 65536, 65536), (50000, 1, 65535)]


@cocotb.test()
@cocotb.parametrize(period=[1, 2, 5])
async def capture_matches_models(dut, period):
    """Every output, every cycle: the modulators, the choice stream, the room, and every lookup's answer."""
    # A word is on offer in about 85 % of slots at period 1 and fewer at longer periods, so some starve.
    tb = TB(dut, seed=cocotb.RANDOM_SEED + period, period=period, offer={1: 0.85, 2: 0.6, 5: 0.25}[period],
            settings=SETTINGS)
    await tb.start()
    await tb.run(4000)
    counts = tb.counts
    dut._log.info("period %d: %s", period, counts)
    for name in ("emit", "starved", "good lookups", "bad lookups", "releases", "bad releases", "paused"):
        assert counts[name] > 3, f"the run did not exercise {name}: {counts}"


def test_capture_verilator(tmp_path):
    harness.run(tmp_path, Capture(frame_bits=FRAME_BITS, frames=FRAMES), toplevel="capture",
                test_module=Path(__file__).stem)


if __name__ == "__main__":
    harness.main(test_capture_verilator)
