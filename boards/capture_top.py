"""Bench top-levels that put the capture path of each node on a board, for synthesis, timing and resource figures.

:class:`BobCaptureTop` is the receiver: the detector pins through the board's sampler into the time-tagger, slot
assignment and squashing, Bob's detection memory, sifting against Alice's announcement and the key memory.
:class:`AliceCaptureTop` is the sender: the slot sequencer driving the modulator outputs, the choice memory
answering Bob's detections, sifting and the key memory. Each is built for any board of
:data:`qkdlink.boards.platforms.BOARDS`, with the sizes that board names (``frame_bits``, ``choice_frames``,
``key_bits``, ``event_depth``, ``detection_depth``).

What the host link of the next issue will provide comes from stand-ins that synthesis cannot see through, so
that no logic is folded away and the figures are those of the real path:

- Run-time settings (delay, period, gate, dead time, thresholds, ...) are not constants: they sit in a shift
  register that takes one bit a clock cycle, least significant first, from the UART's receive pin (through a
  two-stage synchronizer). Bit ``i`` of :attr:`BobCaptureTop.SETTINGS` / :attr:`AliceCaptureTop.SETTINGS` is the
  bit shifted in ``len - 1 - i`` cycles ago; the cores read the register directly, as they will read the host
  link's registers.
- Random numbers (the squasher's, Alice's random words), Alice's announcement to Bob, Bob's lookups on Alice,
  frame releases, key memory commands and flips come from free-running PRBS31 generators (one for every 31 bits
  needed, each from its own seed), as streams that keep their payload until it is taken, like a FIFO's output
  register; the consumers of every output stream are ready at random.
- Every output (stream payloads and handshakes, all counters) is folded into LED 0 by a pipelined XOR tree, so
  that nothing is optimised away and the fold adds no long path of its own.

These stand-ins cost about 0.4 logic cells per observed bit, 1 per random bit and 1 per setting bit: a few
hundred cells, counted in the figures of ``bench/capture_build.py``.

On Alice the modulator outputs (basis, bit, intensity, emit, sync) drive the ``modulators`` pins of the board
(:data:`qkdlink.boards.platforms.MODULATOR_OUTPUTS`).
"""

import json
import random
from pathlib import Path

from amaranth import *
from amaranth.lib import data, io, stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.fifo import SyncFIFO, SyncFIFOBuffered

from ..gateware.choices import ChoiceMemory
from ..gateware.keymemory import KeyMemory
from ..gateware.queue import EventQueue
from ..gateware.sampler import DDRSampler, ECP5GearboxSampler
from ..gateware.sequencer import SlotSequencer, Thresholds
from ..gateware.sifter import Sifter
from ..gateware.slots import SlotAssigner, Squasher, detection_layout
from ..gateware.timetagger import TimeTagger, event_layout
from .clocks import add_gearbox_domains, add_sync_domain
from .platforms import DETECTOR_CHANNELS


__all__ = ["BobCaptureTop", "AliceCaptureTop", "critical_paths"]


class _PRBS(Elaboratable):
    """``width`` bits a cycle of PRBS31 sequences (x^31 + x^28 + 1), one generator for each 31 bits, each from its
    own seed, so that synthesis finds no two bits equal and simplifies nothing they drive."""

    def __init__(self, width, *, seed=0):
        self.width = width
        self.seed = seed
        self.o = Signal(width)

    def elaborate(self, platform):
        m = Module()
        rng = random.Random(self.seed)
        outputs = []
        for low in range(0, self.width, 31):
            width = min(31, self.width - low)
            state = Signal(31, init=rng.randrange(1, 1 << 31), name=f"state{low}")
            bits = list(state)                  # bits[0] is the newest
            for _ in range(width):
                bits = [bits[30] ^ bits[27]] + bits[:30]
            outputs.append(state[:width])
            m.d.sync += state.eq(Cat(bits))
        m.d.comb += self.o.eq(Cat(*outputs))
        return m


class _StandIns:
    """The stand-ins of one top: random bits for sources and sinks, and the bits to fold into LED 0.

    Call :meth:`finish` once, after the last stand-in.
    """

    def __init__(self, m):
        self._m = m
        self._random = []
        self._observed = []

    def random(self, width):
        """A signal of ``width`` fresh random bits every cycle."""
        bits = Signal(width, name=f"random{len(self._random)}")
        self._random.append(bits)
        return bits

    def source(self, port, *, rarity=1):
        """Offer random beats on the sink ``port`` (an ``In`` stream), each held until it is taken; a new beat
        comes in a cycle with probability ``2 ** -rarity``."""
        width = Shape.cast(port.payload.shape()).width
        bits = self.random(width + rarity)
        # Like the output register of a FIFO: `ready` loads the next beat and drives nothing else.
        with self._m.If(~port.valid | port.ready):
            self._m.d.sync += [port.valid.eq(bits[:rarity].all()), port.payload.eq(bits[rarity:])]

    def sink(self, port):
        """Take beats from the source ``port`` (an ``Out`` stream) in about half of the cycles; observe them."""
        self._m.d.comb += port.ready.eq(self.random(1))
        self.observe(port.valid, port.payload)

    def observe(self, *values):
        self._observed.extend(Value.cast(value) for value in values)

    def finish(self, platform):
        """Make the random bits, and XOR every observed bit into LED 0, four bits a register a stage."""
        m = self._m
        m.submodules.prbs = prbs = _PRBS(sum(len(bits) for bits in self._random))
        m.d.comb += Cat(*self._random).eq(prbs.o)

        bits = list(Cat(*self._observed))
        stage = 0
        while len(bits) > 1:
            folded = []
            for index in range(0, len(bits), 4):
                bit = Signal(name=f"fold{stage}_{index // 4}")
                m.d.sync += bit.eq(Cat(*bits[index:index + 4]).xor())
                folded.append(bit)
            bits = folded
            stage += 1
        m.submodules.led = led = io.Buffer("o", platform.request("led", 0, dir="-"))
        m.d.comb += led.o.eq(bits[0])


def _settings(m, platform, layout):
    """A register of ``layout`` loaded serially from the UART receive pin, one bit a cycle."""
    uart = platform.request("uart", 0, dir="-")
    m.submodules.settings_pin = pin = io.Buffer("i", uart.rx)
    serial = Signal()
    m.submodules.settings_sync = FFSynchronizer(pin.i, serial)
    width = Shape.cast(layout).width
    shift = Signal(width)
    m.d.sync += shift.eq(Cat(shift[1:], serial))
    return data.View(layout, shift)


class BobCaptureTop(Elaboratable):
    """Bob's capture path on ``board`` (a :class:`qkdlink.boards.platforms.Board`).

    The ``detectors`` pins go through the board's sampler (:attr:`Board.phases` says which:
    :class:`~qkdlink.gateware.sampler.DDRSampler`, two samples a cycle, or
    :class:`~qkdlink.gateware.sampler.ECP5GearboxSampler`, four) into a
    five-channel :class:`~qkdlink.gateware.timetagger.TimeTagger`. Its events feed the
    :class:`~qkdlink.gateware.slots.SlotAssigner`, whose detections are queued
    (:class:`~qkdlink.gateware.queue.EventQueue`) and squashed (:class:`~qkdlink.gateware.slots.Squasher`, random
    bits from a PRBS); each squashed detection is announced (frame, slot, basis: observed) and its (basis, bit)
    waits in a FIFO of ``board.detection_depth``, Bob's detection memory, for Alice's answer (basis and intensity
    from a PRBS), with which it goes to the :class:`~qkdlink.gateware.sifter.Sifter`; the raw key fills a
    :class:`~qkdlink.gateware.keymemory.KeyMemory` of ``board.key_bits`` (commands and flips from a PRBS). The
    tagger's events also go raw into a second queue, drained at random.

    Attributes
    ----------
    SETTINGS : StructLayout
        The run-time settings, shifted in from the UART receive pin: ``dead_cycles`` (tagger), ``delay``,
        ``period``, ``gate_start``, ``gate_width`` (slot assigner).
    """

    FRACTION_BITS = 24

    SETTINGS = data.StructLayout({
        "dead_cycles": 16,
        "delay":       32,
        "period":      16 + FRACTION_BITS,
        "gate_start":  16,
        "gate_width":  16,
    })

    def __init__(self, board):
        self.board = board

    def elaborate(self, platform):
        board = self.board
        m = Module()
        stand_ins = _StandIns(m)
        settings = _settings(m, platform, self.SETTINGS)

        pins = platform.request("detectors", 0, dir="-")
        if board.phases == 4:
            add_gearbox_domains(m, platform, board.frequency)
            m.submodules.sampler = sampler = ECP5GearboxSampler(pins)
        else:
            add_sync_domain(m, platform, board.frequency)
            m.submodules.sampler = sampler = DDRSampler(pins)
        channels, phases = len(DETECTOR_CHANNELS), sampler.phases
        detectors = channels - 1

        m.submodules.tagger = tagger = TimeTagger(channels=channels, phases=phases)
        m.d.comb += [tagger.i_samples.eq(sampler.o_samples), tagger.dead_cycles.eq(settings.dead_cycles)]

        # The raw events, as the host will read them for calibration (qkdlink.host.slots.calibrate).
        m.submodules.raw_queue = raw_queue = EventQueue(event_layout(channels, phases), board.event_depth)
        m.submodules.assigner = assigner = SlotAssigner(detectors=detectors, phases=phases,
                                                        frame_bits=board.frame_bits,
                                                        fraction_bits=self.FRACTION_BITS)
        wiring.connect(m, tagger.o_events, assigner.i_events)
        m.d.comb += [raw_queue.i.valid.eq(tagger.o_events.valid), raw_queue.i.payload.eq(tagger.o_events.payload)]
        stand_ins.sink(raw_queue.o)
        m.d.comb += [
            assigner.delay.eq(settings.delay),
            assigner.period.eq(settings.period),
            assigner.gate_start.eq(settings.gate_start),
            assigner.gate_width.eq(settings.gate_width),
        ]

        layout = detection_layout(frame_width=32, frame_bits=board.frame_bits, detectors=detectors)
        m.submodules.detection_queue = detection_queue = EventQueue(layout, board.event_depth)
        m.submodules.squasher = squasher = Squasher(frame_width=32, frame_bits=board.frame_bits,
                                                    detectors=detectors)
        wiring.connect(m, assigner.o_detections, detection_queue.i)
        wiring.connect(m, detection_queue.o, squasher.i_detections)
        stand_ins.source(squasher.i_random)

        # Bob's detection memory: (basis, bit) of each detection until Alice answers it; the announcement of
        # (frame, slot, basis) goes to the host. The deep FIFO's read data comes straight from block RAM, through
        # a multiplexer when it takes several blocks: a two-entry FIFO of flip-flops behind it takes that path
        # alone.
        m.submodules.detection_memory = memory = SyncFIFOBuffered(width=2, depth=board.detection_depth)
        m.submodules.detections = detections = SyncFIFO(width=2, depth=2)
        squashed = squasher.o_detections
        m.d.comb += [
            memory.w_data.eq(Cat(squashed.p.basis, squashed.p.bit)),
            memory.w_en.eq(squashed.valid),
            squashed.ready.eq(memory.w_rdy),
            detections.w_data.eq(memory.r_data),
            detections.w_en.eq(memory.r_rdy),
            memory.r_en.eq(detections.w_rdy),
        ]
        stand_ins.observe(squashed.valid & squashed.ready, squashed.p.frame, squashed.p.slot)

        # Alice's answer to each detection, joined with it.
        m.submodules.sifter = sifter = Sifter()
        answer = stream.Signature(data.StructLayout({"alice_basis": 1, "intensity": 2})).flip().create()
        stand_ins.source(answer)
        joined = detections.r_rdy & answer.valid
        m.d.comb += [
            sifter.i_detections.valid.eq(joined),
            sifter.i_detections.p.basis.eq(detections.r_data[0]),
            sifter.i_detections.p.bit.eq(detections.r_data[1]),
            sifter.i_detections.p.alice_basis.eq(answer.p.alice_basis),
            sifter.i_detections.p.intensity.eq(answer.p.intensity),
            detections.r_en.eq(sifter.i_detections.ready & answer.valid),
            answer.ready.eq(sifter.i_detections.ready & detections.r_rdy),
        ]
        stand_ins.sink(sifter.o_match)
        stand_ins.sink(sifter.o_test)

        _key_memory(m, stand_ins, board, sifter.o_key)

        stand_ins.observe(tagger.edges, tagger.suppressed,
                          assigner.frames, assigner.gated, assigner.outside, assigner.overrun,
                          raw_queue.overflow, detection_queue.overflow)
        stand_ins.finish(platform)
        return m


def _key_memory(m, stand_ins, board, key):
    """The key memory filled from the sifter's ``key`` stream, with random commands and flips."""
    m.submodules.key_memory = key_memory = KeyMemory(max_bits=board.key_bits, width=board.toeplitz_width)
    wiring.connect(m, key, key_memory.i_bits)
    # Commands and flips rarer than bits, so that blocks fill between them.
    stand_ins.source(key_memory.i_command, rarity=4)
    stand_ins.source(key_memory.i_flip, rarity=2)
    stand_ins.sink(key_memory.o_words)
    stand_ins.sink(key_memory.o_key)
    stand_ins.observe(key_memory.count, key_memory.full, key_memory.bad_flip)
    return key_memory


class AliceCaptureTop(Elaboratable):
    """Alice's capture path on ``board`` (a :class:`qkdlink.boards.platforms.Board`).

    A :class:`~qkdlink.gateware.sequencer.SlotSequencer` in frames of ``2 ** board.frame_bits`` slots, random
    words from a PRBS, drives the ``modulators`` pins (basis, bit, intensity, emit, sync) and records
    every slot in a :class:`~qkdlink.gateware.choices.ChoiceMemory` of ``board.choice_frames`` frames. Bob's
    detections (random lookups) are answered from it into the :class:`~qkdlink.gateware.sifter.Sifter`, whose raw
    key fills a :class:`~qkdlink.gateware.keymemory.KeyMemory` of ``board.key_bits``. Frames are released oldest
    first, at random times.

    Attributes
    ----------
    SETTINGS : StructLayout
        The run-time settings, shifted in from the UART receive pin: ``period``, ``p_z``,
        ``intensity_thresholds``, ``enable`` (sequencer).
    """

    SETTINGS = data.StructLayout({
        "period":               16,
        "p_z":                  17,
        "intensity_thresholds": Thresholds,
        "enable":               1,
    })

    def __init__(self, board):
        self.board = board

    def elaborate(self, platform):
        board = self.board
        m = Module()
        add_sync_domain(m, platform, board.frequency)
        stand_ins = _StandIns(m)
        settings = _settings(m, platform, self.SETTINGS)

        m.submodules.sequencer = sequencer = SlotSequencer(frame_bits=board.frame_bits)
        m.d.comb += [
            sequencer.period.eq(settings.period),
            sequencer.p_z.eq(settings.p_z),
            sequencer.intensity_thresholds.eq(settings.intensity_thresholds),
            sequencer.enable.eq(settings.enable),
        ]
        stand_ins.source(sequencer.i_random)
        m.submodules.modulators = modulators = io.Buffer("o", platform.request("modulators", 0, dir="-"))
        m.d.comb += modulators.o.eq(Cat(sequencer.basis, sequencer.bit, sequencer.intensity, sequencer.emit,
                                        sequencer.sync))

        m.submodules.choices = choices = ChoiceMemory(frame_bits=board.frame_bits, frames=board.choice_frames)
        wiring.connect(m, sequencer.o_choices, choices.i_choices)
        m.d.comb += sequencer.i_frame_free.eq(choices.o_frame_free)

        # Releases name the frames in order, each at a random time.
        m.d.comb += choices.i_release.valid.eq(stand_ins.random(1))
        with m.If(choices.i_release.valid & choices.i_release.ready):
            m.d.sync += choices.i_release.payload.eq(choices.i_release.payload + 1)
        stand_ins.source(choices.i_lookup)

        m.submodules.sifter = sifter = Sifter()
        lookup = choices.o_lookup
        m.d.comb += [
            sifter.i_detections.valid.eq(lookup.valid),
            sifter.i_detections.p.basis.eq(lookup.p.basis),
            sifter.i_detections.p.bit.eq(lookup.p.bit),
            sifter.i_detections.p.alice_basis.eq(lookup.p.alice_basis),
            sifter.i_detections.p.intensity.eq(lookup.p.intensity),
            lookup.ready.eq(sifter.i_detections.ready),
        ]
        stand_ins.sink(sifter.o_match)
        stand_ins.sink(sifter.o_test)

        _key_memory(m, stand_ins, board, sifter.o_key)

        stand_ins.observe(sequencer.starved, choices.bad_lookup, choices.bad_release)
        stand_ins.finish(platform)
        return m


def critical_paths(build_dir, clocks=None):
    """nextpnr's critical path of each clock of the build in ``build_dir`` (or of those named in ``clocks``, as
    in :attr:`qkdlink.boards.build.BuildReport.fmax`), as text, one step a line.

    Read from the ``report.json`` that :func:`qkdlink.boards.build.build` asks nextpnr for. Only paths within
    one clock are given (not those from or to pins, nor between clocks, which are not constrained). Each step is
    the arrival time and the delay in ns, the kind (clock-to-out, routing, logic, setup) and the cell and port it
    reaches; cell names start with Amaranth's hierarchy (``assigner.``, ``choices.memory.``) and the name of the
    signal the cell drives or feeds. Steps through a carry chain are merged into one line.
    """
    report = json.loads((Path(build_dir) / "report.json").read_text())
    texts = []
    for path in report.get("critical_paths", []):
        if not (path["from"].startswith("posedge ") and path["from"] == path["to"]):
            continue
        if clocks is not None and path["from"].removeprefix("posedge ") not in clocks:
            continue
        lines = [f"{path['from']} -> {path['to']}:"]
        total = 0.0
        chain = None                            # [cells, delay] of a carry chain being merged
        for step in path["path"]:
            total += step["delay"]
            if step["to"]["port"] in ("CIN", "COUT", "FCI", "FCO"):
                chain = chain or [0, 0.0]
                chain[0] += step["type"] == "logic"
                chain[1] += step["delay"]
                continue
            if chain:
                lines.append(f"  {total - step['delay']:7.3f} ns  {chain[1]:6.3f} carry      "
                             f"through {chain[0]} carry cells")
                chain = None
            cell = step["to"]["cell"]
            if len(cell) > 100:
                cell = cell[:60] + "..." + cell[-37:]
            lines.append(f"  {total:7.3f} ns  {step['delay']:6.3f} {step['type']:<10} {cell}.{step['to']['port']}")
        texts.append("\n".join(lines))
    return "\n".join(texts)
