"""Alice's slot sequencer: one basis, bit and intensity a slot, from random words, for the modulators.

Slots come in frames of 2**frame_bits. A frame starts only when the sequencer is enabled and the choice memory has
room for it, so emission pauses between frames (never inside one) rather than overwrite choices not yet sifted.
Every slot's choice leaves on ``o_choices`` for :class:`qkdlink.gateware.choices.ChoiceMemory`. The model is
:class:`qkdlink.sim.sequencer.SlotSequencerModel`; :func:`qkdlink.sim.sequencer.thresholds` gives the settings.
"""

from amaranth import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..numbering import NOT_SENT


__all__ = ["RandomWord", "Thresholds", "Choice", "choice_layout", "SlotSequencer"]


class RandomWord(data.Struct):
    """One slot's random bits: 16 for the basis draw, 16 for the intensity draw and the bit."""
    basis:     16
    intensity: 16
    bit:       1


class Thresholds(data.Struct):
    """Cumulative intensity thresholds (t0 <= t1, each 0 to 65536)."""
    t0: 17
    t1: 17


class Choice(data.Struct):
    """What Alice sent in one slot; also the 4-bit nibble the choice memory stores per slot."""
    basis:     1    # 0 = Z, 1 = X
    bit:       1
    intensity: 2    # 0, 1, 2 = signal, decoy, weakest decoy; 3 = not sent


def choice_layout(frame_bits, frame_width=32):
    """Layout of an ``o_choices`` beat: the slot's name (frame, slot) and its :class:`Choice` fields."""
    return data.StructLayout({"frame": frame_width, "slot": frame_bits, "basis": 1, "bit": 1, "intensity": 2})


def _check_frame(frame_bits, frame_width):
    # Four slots fill one word of the choice memory, and a frame must last longer than the memory takes to
    # count it as begun (its o_frame_free falls three cycles after the sequencer decides to start a frame),
    # so frames have at least four slots.
    if not isinstance(frame_bits, int) or frame_bits < 2:
        raise TypeError(f"Frame bits must be an integer of at least 2, not {frame_bits!r}")
    if not isinstance(frame_width, int) or frame_width < 1:
        raise TypeError(f"Frame width must be a positive integer, not {frame_width!r}")


class SlotSequencer(wiring.Component):
    """Slots of ``period`` cycles in frames of 2**frame_bits, each with a basis, bit and intensity drawn at random.

    A slot takes the random word on offer at its start: basis Z (0) iff ``basis < p_z``, intensity 0 iff
    ``intensity < t0``, 1 iff ``intensity < t1``, else 2, and ``bit`` as it is. If no word is on offer, the slot
    is *not sent*: intensity 3, basis and bit 0, the source does not fire, and ``starved`` counts it.

    Timing: the cycle in which a slot starts (``i_random.ready`` high) is its *decision* cycle; the outputs show
    the slot from the next cycle on, for ``period`` cycles, with ``emit``, ``sync`` and the ``o_choices`` beat in
    the first of them. A slot follows the previous one with no gap; so at ``period`` = 1 a slot starts, and
    ``emit`` may fire, every cycle. After a frame's last slot the next frame starts at once if ``enable`` and
    ``i_frame_free`` are high in that slot's last cycle; otherwise the outputs idle (intensity 3, basis and bit
    0) from the next cycle, and the next frame starts in the first cycle in which both are high. The first
    frame is frame 0.

    Parameters
    ----------
    frame_bits : int
        Slots per frame as a power of two, at least 2 (four slots).
    frame_width : int
        Width of frame numbers (they wrap).

    Members
    -------
    period : In(16)
        Clock cycles per slot, read at each slot's start; 0 counts as 1.
    p_z : In(17)
        Basis Z iff the basis word is below it: 0 is always X, 65536 always Z.
    intensity_thresholds : In(Thresholds)
        ``t0 <= t1``, 0 to 65536 (see above). :func:`qkdlink.sim.sequencer.thresholds` gives these and ``p_z``.
    enable : In(1)
        Start frames while high; a frame that has started runs to its end.
    i_random : In(stream.Signature(RandomWord))
        One word per slot, taken only in a decision cycle.
    i_frame_free : In(1)
        The choice memory has room for one more frame (``ChoiceMemory.o_frame_free``). It is read only in a cycle
        that may start a frame, at least four cycles after the previous frame started.
    basis, bit : Out(1)
    intensity : Out(2)
        The current slot's choice, registered and held for the whole slot (idle: 0, 0, 3).
    emit : Out(1)
        High in the first cycle of a slot that fires the source (one that had a random word).
    sync : Out(1)
        High in the first cycle of slot 0 of every frame, sent or not.
    o_choices : Out(stream.Signature(choice_layout(frame_bits, frame_width), always_ready=True))
        Every slot's choice with its frame and slot, one beat in the first cycle of each slot.
    starved : Out(32)
        Slots not sent for want of a random word (wraps).
    """

    def __init__(self, *, frame_bits, frame_width=32):
        _check_frame(frame_bits, frame_width)
        self._frame_bits = frame_bits
        self._frame_width = frame_width
        super().__init__({
            "period":               In(16),
            "p_z":                  In(17),
            "intensity_thresholds": In(Thresholds),
            "enable":               In(1),
            "i_random":             In(stream.Signature(RandomWord)),
            "i_frame_free":         In(1),
            "basis":                Out(1),
            "bit":                  Out(1),
            "intensity":            Out(2, init=NOT_SENT),
            "emit":                 Out(1),
            "sync":                 Out(1),
            "o_choices":            Out(stream.Signature(choice_layout(frame_bits, frame_width),
                                                         always_ready=True)),
            "starved":              Out(32),
        })

    @property
    def frame_bits(self):
        return self._frame_bits

    @property
    def frame_width(self):
        return self._frame_width

    def elaborate(self, platform):
        m = Module()

        running   = Signal()                 # a frame is in progress
        remaining = Signal(16)               # cycles of the current slot after this one
        slot_end  = Signal()                 # remaining == 0
        slot      = Signal(self._frame_bits)
        last      = Signal()                 # the current slot is the frame's last
        frame     = Signal(self._frame_width)
        # The next frame's number, counted ahead so that `frame` starts at 0 from a reset value of 0: on the
        # iCE40 a register reset to ones is kept inverted, which puts a LUT and a long route in front of the
        # counter's carry chain.
        following = Signal(self._frame_width)
        # What this cycle may start, kept in registers so that the decision (whose result fans out to most
        # registers here) is one LUT deep at 48 MHz on the UP5K: the frame's next slot, or a new frame.
        slot_due  = Signal()                 # running & slot_end & ~last
        frame_due = Signal(init=1)           # ~running | slot_end & last

        new_frame = Signal()
        start     = Signal()
        m.d.comb += [
            new_frame.eq(frame_due & self.enable & self.i_frame_free),
            start.eq(slot_due | new_frame),
            self.i_random.ready.eq(start),
        ]

        word = self.i_random.payload
        sent = self.i_random.valid
        thresholds = self.intensity_thresholds
        choice = Signal(Choice)
        m.d.comb += [
            choice.basis.eq(word.basis >= self.p_z),
            choice.bit.eq(word.bit),
            choice.intensity.eq(Mux(word.intensity < thresholds.t0, 0,
                                Mux(word.intensity < thresholds.t1, 1, 2))),
        ]

        one_cycle = Signal()                 # the slot starting now lasts one cycle
        last_next = Signal()                 # the slot starting now is the frame's last
        m.d.comb += [
            one_cycle.eq(self.period <= 1),
            last_next.eq(~new_frame & (slot == (1 << self._frame_bits) - 2)),
        ]
        with m.If(start):
            m.d.sync += [
                running.eq(1),
                remaining.eq(Mux(self.period == 0, 0, self.period - 1)),
                slot_end.eq(one_cycle),
                last.eq(last_next),
                slot_due.eq(one_cycle & ~last_next),
                frame_due.eq(one_cycle & last_next),
                self.basis.eq(sent & choice.basis),
                self.bit.eq(sent & choice.bit),
                self.intensity.eq(Mux(sent, choice.intensity, NOT_SENT)),
                self.emit.eq(sent),
                self.sync.eq(new_frame),
                self.o_choices.valid.eq(1),
            ]
            with m.If(new_frame):
                m.d.sync += [frame.eq(following), following.eq(following + 1), slot.eq(0)]
            with m.Else():
                m.d.sync += slot.eq(slot + 1)
            with m.If(~sent):
                m.d.sync += self.starved.eq(self.starved + 1)
        with m.Else():
            m.d.sync += [self.emit.eq(0), self.sync.eq(0), self.o_choices.valid.eq(0)]
            with m.If(running & slot_end):
                # The frame's last slot is over and no frame follows yet: the source idles.
                m.d.sync += [running.eq(0), self.basis.eq(0), self.bit.eq(0), self.intensity.eq(NOT_SENT)]
            with m.Elif(running):
                m.d.sync += [
                    remaining.eq(remaining - 1),
                    slot_end.eq(remaining == 1),
                    slot_due.eq((remaining == 1) & ~last),
                    frame_due.eq((remaining == 1) & last),
                ]

        m.d.comb += [
            self.o_choices.payload.frame.eq(frame),
            self.o_choices.payload.slot.eq(slot),
            self.o_choices.payload.basis.eq(self.basis),
            self.o_choices.payload.bit.eq(self.bit),
            self.o_choices.payload.intensity.eq(self.intensity),
        ]
        return m
