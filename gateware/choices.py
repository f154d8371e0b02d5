"""Alice's choice memory: what she sent in every slot of the frames not yet sifted, and lookups into it.

The memory is one :class:`qkdlink.gateware.memory.SinglePortMemory` (SPRAM on the UP5K), 4 bits a slot (the
:class:`qkdlink.gateware.sequencer.Choice` nibble), four slots a 16-bit word, ``frames`` regions of one frame each
used in turn. Writes are whole words: the memory gathers four slots' choices and writes them in one cycle, so even
at one slot a cycle (``period`` = 1) it writes in one cycle of four and lookups have the other three; lookups never
wait for a pause in emission. The model is :class:`qkdlink.sim.sequencer.ChoiceMemoryModel`.
"""

from amaranth import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .memory import SinglePortMemory
from ..numbering import NOT_SENT
from .sequencer import Choice, _check_frame, choice_layout


__all__ = ["ChoiceMemory"]


class ChoiceMemory(wiring.Component):
    """Alice's choices of up to ``frames`` frames, kept until each is released, with lookups by (frame, slot).

    A frame is *begun* two cycles after the choice of its slot 0 arrives, and *held* from two cycles after the
    choice of its last slot arrives until it is released. Releases must come oldest first: a release that does
    not name the oldest held frame (a frame never held, already released, still being written, or younger than
    the oldest) is ignored and counted in ``bad_release``. A release is checked in the cycle after it is
    accepted (after any release that acts in that cycle) and acts in the cycle after that.

    A lookup is checked in the cycle after it is accepted: it is answered from its frame's choices if the frame
    is held then (a frame whose release acts in that cycle is not) and is not released before the lookup reads
    the memory (sift a frame's lookups before releasing it); otherwise it is answered as not sent and counted
    in ``bad_lookup``.

    One memory access a cycle: a word write (one cycle in four at most) takes priority over a lookup's read.
    Lookups are answered in order, at most one every three cycles; the answer is on ``o_lookup`` four cycles
    after the lookup is accepted when the memory is free and ``o_lookup`` is not stalled.

    Parameters
    ----------
    frame_bits : int
        A frame has 2**frame_bits slots (at least 4). The memory has ``frames * 2**frame_bits / 4`` words; on the
        UP5K that must be 16384, 32768, 49152 or 65536 (one to four SPRAMs).
    frames : int
        Frames held at once (begun and not released).
    frame_width : int
        Width of frame numbers, as the sequencer's.

    Members
    -------
    i_choices : In(stream.Signature(choice_layout(frame_bits, frame_width), always_ready=True))
        ``SlotSequencer.o_choices``: every slot of each frame, in order; frames held at once have different
        numbers. A frame may begin only while ``o_frame_free`` is high (the sequencer sees to it).
    o_frame_free : Out(1)
        Fewer than ``frames`` frames are begun and not released; it falls two cycles after a slot 0 arrives and
        rises three cycles after a release is accepted.
    i_release : In(stream.Signature(frame_width))
        Frees a frame once it is sifted. Always ready.
    i_lookup : In(stream.Signature(StructLayout({"frame": frame_width, "slot": frame_bits, "basis": 1})))
        Bob's detections, with Bob's basis.
    o_lookup : Out(stream.Signature(StructLayout({"basis": 1, "alice_basis": 1, "bit": 1, "intensity": 2})))
        One beat per lookup, in order: Bob's basis passed through and Alice's choice in that slot. A lookup of a
        frame not held answers ``alice_basis`` 0, ``bit`` 0, ``intensity`` 3 (not sent) and counts in
        ``bad_lookup``.
    bad_lookup, bad_release : Out(32)
        Counters (wrap).
    """

    def __init__(self, *, frame_bits, frames=2, frame_width=32):
        _check_frame(frame_bits, frame_width)
        if not isinstance(frames, int) or frames < 1:
            raise TypeError(f"Frame count must be a positive integer, not {frames!r}")
        self._frame_bits = frame_bits
        self._frames = frames
        self._frame_width = frame_width
        super().__init__({
            "i_choices":    In(stream.Signature(choice_layout(frame_bits, frame_width), always_ready=True)),
            "o_frame_free": Out(1, init=1),
            "i_release":    In(stream.Signature(frame_width)),
            "i_lookup":     In(stream.Signature(data.StructLayout({
                "frame": frame_width, "slot": frame_bits, "basis": 1}))),
            "o_lookup":     Out(stream.Signature(data.StructLayout({
                "basis": 1, "alice_basis": 1, "bit": 1, "intensity": 2}))),
            "bad_lookup":   Out(32),
            "bad_release":  Out(32),
        })

    @property
    def frame_bits(self):
        return self._frame_bits

    @property
    def frames(self):
        return self._frames

    @property
    def frame_width(self):
        return self._frame_width

    @property
    def depth(self):
        """Words of memory."""
        return self._frames << (self._frame_bits - 2)

    def _equal_bytes(self, a, b):
        # Frame numbers are compared a byte at a time in one cycle and the bytes' results combined in the next:
        # yosys maps a 32-bit comparison to a chain of LUTs too slow for the UP5K at 48 MHz.
        return Cat(a[i:i + 8] == b[i:i + 8] for i in range(0, self._frame_width, 8))

    def elaborate(self, platform):
        m = Module()
        m.submodules.memory = memory = SinglePortMemory(self.depth)
        frames = self._frames

        # The memory has a region of one frame per held frame, used in turn: frames begin in the region after
        # the write region and are released from the head region. Each region is tagged with its frame's number
        # and whether that frame is held, so that lookups and releases find their frame by equality (no
        # subtraction: its carry chain would not meet timing on the UP5K at 48 MHz). The head and write regions
        # are one-hot, which keeps the release logic shallow; the write region is binary too, for addresses.
        begun        = Signal(range(frames + 1))
        head         = Signal(frames, init=1)
        write        = Signal(frames, init=1 << (frames - 1))
        write_region = Signal(range(frames), init=frames - 1)
        tags = [Signal(self._frame_width, name=f"tag{region}") for region in range(frames)]
        held = Signal(frames)

        def rotate(one_hot):
            return Cat(one_hot[-1], one_hot[:-1])

        # Write side. The beat goes into registers first, with flags for the slots that begin a frame, end a
        # word and end a frame (comparisons of the whole slot number, kept off the paths that act on them).
        beat = self.i_choices.payload
        beat_valid = Signal()
        beat_frame = Signal(self._frame_width)
        beat_word  = Signal(self._frame_bits - 2)
        nibble     = Signal(Choice)
        beat_first = Signal()
        beat_ends_word  = Signal()
        beat_ends_frame = Signal()
        m.d.sync += [
            beat_valid.eq(self.i_choices.valid),
            beat_frame.eq(beat.frame),
            beat_word.eq(beat.slot[2:]),
            nibble.eq(Cat(beat.basis, beat.bit, beat.intensity)),
            beat_first.eq(beat.slot == 0),
            beat_ends_word.eq(beat.slot[:2].all()),
            beat_ends_frame.eq(beat.slot.all()),
        ]
        # Gather three nibbles, write the word with the fourth one in the next cycle.
        gathered      = Signal(12)
        write_pending = Signal()
        write_addr    = Signal(range(self.depth))
        write_data    = Signal(16)
        starts   = Signal()
        finishes = Signal()
        m.d.comb += [
            starts.eq(beat_valid & beat_first),
            finishes.eq(beat_valid & beat_ends_frame),
        ]
        m.d.sync += write_pending.eq(beat_valid & beat_ends_word)
        with m.If(beat_valid):
            m.d.sync += [
                gathered.eq(Cat(gathered[4:], nibble)),
                write_addr.eq(Cat(beat_word, write_region)),
                write_data.eq(Cat(gathered, nibble)),
            ]
        with m.If(starts):
            # The word holding slot 0 is written three slots later, when the write region has moved on to it.
            m.d.sync += [
                write.eq(rotate(write)),
                write_region.eq(Mux(write_region == frames - 1, 0, write_region + 1)),
            ]
            for region in range(frames):
                with m.If(rotate(write)[region]):
                    m.d.sync += tags[region].eq(beat_frame)

        # Releases: compared with every region's tag when accepted, checked against the head region in the
        # next cycle (as it will be after a release acting in that cycle), and acted on in the cycle after that.
        # Each step is a short path into registers; the last one fans out.
        release_valid   = Signal()
        release_bytes   = [Signal(-(-self._frame_width // 8)) for _ in range(frames)]
        release_matches = Signal(frames)
        released        = Signal()              # the release checked in the previous cycle acts now
        checked         = Signal()              # a release was checked in the previous cycle
        m.d.comb += self.i_release.ready.eq(1)
        m.d.sync += [
            release_valid.eq(self.i_release.valid),
            *(equal.eq(self._equal_bytes(tag, self.i_release.payload)) for equal, tag in zip(release_bytes, tags)),
        ]
        m.d.comb += release_matches.eq(Cat(equal.all() for equal in release_bytes))
        head_then = Mux(released, rotate(head), head)
        held_then = held & ~Mux(released, head, 0)
        held_next = held_then | Mux(finishes, write, 0)
        m.d.sync += [held.eq(held_next), head.eq(head_then)]
        # The check needs the head region, if held, as it is and as a release acting in the same cycle leaves
        # it; both are kept in registers, a cycle ahead, so that `released` (which fans out widely) only picks
        # one of two short checks.
        oldest       = Signal(frames)           # held & head
        oldest_moved = Signal(frames)           # held & ~head & rotate(head): the head region after a release
        m.d.sync += [
            oldest.eq(held_next & head_then),
            oldest_moved.eq(held_next & ~head_then & rotate(head_then)),
        ]
        names_head = Signal(frames)
        m.d.comb += names_head.eq(release_matches & Mux(released, oldest_moved, oldest))
        m.d.sync += [
            released.eq(release_valid & names_head.any()),
            checked.eq(release_valid),
        ]
        with m.If(checked & ~released):
            m.d.sync += self.bad_release.eq(self.bad_release + 1)
        # `o_frame_free` is a register (the sequencer's decision to start a frame fans out widely), set from
        # the count it follows.
        begun_next = Signal.like(begun)
        m.d.comb += begun_next.eq(begun + starts - released)
        m.d.sync += [begun.eq(begun_next), self.o_frame_free.eq(begun_next < frames)]

        # Lookups: compared with every region's tag when accepted, matched against the held frames in the next
        # cycle (two short paths instead of one long one), then read when the memory is free (writes first) and
        # answered the cycle after. A lookup waiting to read loses its match if its frame is released meanwhile:
        # the frame's region may be written again before the lookup reads it. (A tag changes only when its
        # region begins a frame, which is not held then nor in the next cycle.)
        lookup = self.i_lookup.payload
        pending         = Signal()              # an accepted lookup waits for the memory
        checking        = Signal()              # ...and is matched in this cycle
        tag_bytes       = [Signal(-(-self._frame_width // 8)) for _ in range(frames)]
        tag_matches     = Signal(frames)
        pending_matches = Signal(frames)        # the region holding its frame, if any (one-hot)
        pending_slot    = Signal(self._frame_bits)
        pending_basis   = Signal()
        m.d.comb += self.i_lookup.ready.eq(~pending)
        with m.If(self.i_lookup.valid & ~pending):
            m.d.sync += [
                pending.eq(1),
                checking.eq(1),
                *(equal.eq(self._equal_bytes(tag, lookup.frame)) for equal, tag in zip(tag_bytes, tags)),
                pending_slot.eq(lookup.slot),
                pending_basis.eq(lookup.basis),
            ]
        # The read address is a register too: on the ECP5 it fans out to dozens of block RAMs across the chip.
        matches   = Signal(frames)
        region    = Signal(range(frames))
        read_addr = Signal(range(self.depth))
        m.d.comb += [
            tag_matches.eq(Cat(equal.all() for equal in tag_bytes)),
            matches.eq(held & tag_matches),
        ]
        for index in range(frames):
            with m.If(matches[index]):
                m.d.comb += region.eq(index)
        with m.If(checking):
            m.d.sync += [
                checking.eq(0),
                pending_matches.eq(matches),
                read_addr.eq(Cat(pending_slot[2:], region)),
            ]
        with m.If(released):
            m.d.sync += pending_matches.eq(Mux(checking, matches, pending_matches) & ~head)

        found = Signal()
        m.d.comb += found.eq(pending_matches.any())
        reading = Signal()
        in_flight        = Signal()             # the lookup's word is on memory.rdata this cycle
        in_flight_found  = Signal()
        in_flight_basis  = Signal()
        in_flight_nibble = Signal(2)
        # One lookup at a time is between acceptance and answer, so if o_lookup is free now it is still free
        # when the word arrives.
        m.d.comb += reading.eq(pending & ~checking & ~write_pending & (~self.o_lookup.valid | self.o_lookup.ready))
        with m.If(reading):
            m.d.sync += [
                pending.eq(0),
                in_flight_found.eq(found),
                in_flight_basis.eq(pending_basis),
                in_flight_nibble.eq(pending_slot[:2]),
            ]
        m.d.sync += in_flight.eq(reading)
        # Counted a cycle after the read, from registers: the counter's enable fans out widely.
        with m.If(in_flight & ~in_flight_found):
            m.d.sync += self.bad_lookup.eq(self.bad_lookup + 1)
        m.d.comb += [
            memory.addr.eq(Mux(write_pending, write_addr, read_addr)),
            memory.wdata.eq(write_data),
            memory.wmask.eq(Mux(write_pending, 0b1111, 0)),
        ]

        # The word goes into a register as it is (the SPRAM's output is slow), or, for a lookup not found, a word
        # of "not sent" choices; the answer's payload picks the nibble out of that register, one 4:1 multiplexer
        # deep for the consumer.
        not_sent    = Const({"basis": 0, "bit": 0, "intensity": NOT_SENT}, Choice).as_value()
        word        = Signal(16)
        word_basis  = Signal()
        word_nibble = Signal(2)
        stored = Signal(Choice)
        with m.If(in_flight):
            m.d.sync += [
                self.o_lookup.valid.eq(1),
                word.eq(Mux(in_flight_found, memory.rdata, Cat(not_sent, not_sent, not_sent, not_sent))),
                word_basis.eq(in_flight_basis),
                word_nibble.eq(in_flight_nibble),
            ]
        with m.Elif(self.o_lookup.ready):
            m.d.sync += self.o_lookup.valid.eq(0)
        m.d.comb += [
            stored.eq(word.word_select(word_nibble, 4)),
            self.o_lookup.payload.basis.eq(word_basis),
            self.o_lookup.payload.alice_basis.eq(stored.basis),
            self.o_lookup.payload.bit.eq(stored.bit),
            self.o_lookup.payload.intensity.eq(stored.intensity),
        ]
        return m
