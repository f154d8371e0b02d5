"""Key memory: a block of sifted key bits, corrected in place and streamed out for reading and hashing.

The raw key of a block arrives from the sifter one bit at a time and is kept in a
:class:`~qkdlink.gateware.memory.SinglePortMemory` of 16-bit words: bit ``j`` of the block is bit ``j % 16`` of word
``j // 16`` (``docs/bit-order.md``). Cascade's corrections flip single bits in place; the host reads the block back
(READ) and the privacy amplification core takes it as many times as it makes passes (HASH).
:class:`qkdlink.sim.keymemory.KeyMemoryModel` is the reference model.
"""

from amaranth import *
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out

from .memory import SinglePortMemory


__all__ = ["Op", "Command", "Word", "KeyMemory"]


class Op(enum.Enum, shape=2):
    """What a command does; a command with any other ``op`` is taken and ignored."""
    CLEAR = 0   # empty the block
    READ  = 1   # stream the block once on o_words
    HASH  = 2   # stream the block `passes` times on o_key


class Command(data.Struct):
    op:     Op
    passes: 16  # HASH only: how many times to stream the block


class Word(data.Struct):
    data: 16
    last: 1     # the block's final word


class _Counter:
    """A down-counter with registered ``zero`` and ``one`` flags, so that the handshakes need no wide compare."""

    def __init__(self, maximum, *, name):
        self.value = Signal(range(maximum + 1), name=name)
        self.zero  = Signal(init=1, name=f"{name}_zero")
        self.one   = Signal(name=f"{name}_one")

    def load(self, value):
        return [self.value.eq(value), self.zero.eq(value == 0), self.one.eq(value == 1)]

    def reload(self, other):
        """Take the value and the flags of ``other``, which must fit."""
        return [self.value.eq(other.value), self.zero.eq(other.zero), self.one.eq(other.one)]

    def step(self):
        """Count down by one; only while not zero."""
        return [self.value.eq(self.value - 1), self.zero.eq(self.one), self.one.eq(self.value == 2)]


class KeyMemory(wiring.Component):
    """A block of up to ``max_bits`` key bits: appended one at a time, flipped in place, streamed out.

    The core does one thing at a time: appending bits, flipping a bit, or running a command. While idle it takes
    bits (unless the block is full) and a command, or, if no command is offered, a flip. Operations take effect in
    the order the core takes them; a bit taken in the same cycle as a command or a flip comes first (it is part of
    the block the command sees).

    Timing, with no stream stalled: one appended bit a cycle; a flip every four cycles; after a READ or HASH
    command is taken, seven cycles to the first beat, then one word a cycle on ``o_words`` or one beat a cycle on
    ``o_key`` to the end, across words and passes. A bit taken is counted in ``count`` (and ``full``) in the next
    cycle and written to memory two cycles after it is taken; a flip taken in the same cycle as a bit or in the
    cycle after waits for that write, so it starts up to two cycles later. The handshakes are kept off long paths:
    ``i_bits.ready`` and ``i_command.ready`` come from flip-flops, the outputs' ``valid`` and payload too, a
    consumer's ``ready`` drives only the two-entry output register, a producer's ``valid`` only the enables of the
    counters and of one register that holds the bit taken, and the memory's inputs are small multiplexers of
    registers.

    Parameters
    ----------
    max_bits : int
        Largest block, in bits. The memory holds ``ceil(max_bits / 16)`` words; on the iCE40 UP5K these take
        whole SPRAMs of 16384 words (2^18 bits), the last one partly used, at most four: ``max_bits`` up to 2^20,
        shared with the other users of the SPRAMs (the choice memory).
    width : int
        Bits per ``o_key`` beat: the ``width`` of the :class:`~qkdlink.gateware.toeplitz.ToeplitzHash` it feeds.
        A power of two, at most 16.

    Members
    -------
    i_bits : In(stream.Signature(1))
        Bits to append to the block (the sifter's ``o_key``). Not taken (``ready`` low) while the block is full or
        the core is busy with a flip or a command.
    i_command : In(stream.Signature(Command))
        CLEAR empties the block. READ streams the block once on ``o_words``. HASH streams it ``passes`` times on
        ``o_key``. READ of an empty block, and HASH of an empty block or with ``passes`` zero, send nothing.
    i_flip : In(stream.Signature(range(max_bits)))
        Index of a bit to invert (a correction). An index not below ``count`` changes nothing and counts in
        ``bad_flip``.
    o_words : Out(stream.Signature(Word))
        The block as ``ceil(count / 16)`` words: bit ``j`` is bit ``j % 16`` of word ``j // 16``; the high bits of
        the last word past the block are 0; ``last`` marks the last word.
    o_key : Out(stream.Signature(width))
        The block, ``passes`` times, each time as ``ceil(count / width)`` beats: bit ``w`` of beat ``c`` is bit
        ``c * width + w`` of the block, zero past its end. This is what ``ToeplitzHash.i_key`` takes.
    count : Out(range(max_bits + 1))
        Bits in the block.
    full : Out(1)
        The block holds ``max_bits`` bits.
    bad_flip : Out(32)
        Flips refused because their index was not below ``count``; wraps around.
    """

    def __init__(self, *, max_bits, width=1):
        if not isinstance(max_bits, int) or max_bits < 1:
            raise TypeError(f"Block size must be a positive integer, not {max_bits!r}")
        if not isinstance(width, int) or width not in (1, 2, 4, 8, 16):
            raise TypeError(f"Width must be a power of two no larger than 16, not {width!r}")
        self._max_bits = max_bits
        self._width = width
        super().__init__({
            "i_bits":    In(stream.Signature(1)),
            "i_command": In(stream.Signature(Command)),
            "i_flip":    In(stream.Signature(range(max_bits))),
            "o_words":   Out(stream.Signature(Word)),
            "o_key":     Out(stream.Signature(width)),
            "count":     Out(range(max_bits + 1)),
            "full":      Out(1),
            "bad_flip":  Out(32),
        })

    @property
    def max_bits(self):
        return self._max_bits

    @property
    def width(self):
        return self._width

    def elaborate(self, platform):
        m = Module()

        W = self._width
        beats_per_word = 16 // W
        words = -(-self._max_bits // 16)
        max_beats = -(-self._max_bits // W)
        m.submodules.memory = memory = SinglePortMemory(words)

        # The control is one-hot, in registers of its own.
        idle       = Signal(init=1)
        deciding   = Signal()                           # a command was taken in the previous cycle
        starting   = Signal()                           # a READ or HASH was decided on in the previous cycle
        flip_read  = Signal()                           # reading the word of a flip
        flip_wait  = Signal()                           # ... which arrives in `rdata` in the next cycle
        flip_write = Signal()                           # writing it back
        streaming  = Signal()                           # running a READ or a HASH

        # The memory's read data goes through a register before any use: the block RAM's and SPRAM's output
        # delays are long, and the memory may be spread over a large part of the die.
        rdata = Signal(16)
        m.d.sync += rdata.eq(memory.rdata)

        # The block. A bit taken goes into a register first (`taken_bit`), from there in the next cycle into
        # `tail`, a copy of the block's last word, and the whole word is written to memory in the cycle after that.
        # So the producer's `valid` reaches only the enables of the counters and of that register, and nothing of
        # the producer reaches `tail` or the memory. Whole words keep the bits of the last word past the block zero,
        # which the padding of READ and HASH relies on.
        count       = self.count
        empty       = Signal(init=1)                    # `count` is zero
        last_bit    = Signal(range(self._max_bits))     # else `count - 1`, kept so that no command subtracts
        tail        = Signal(16)
        tail_addr   = Signal(range(words))
        append      = Signal()
        taken       = Signal()                          # a bit was taken in the previous cycle: into `tail` now
        taken_bit   = Signal()
        writing     = Signal()                          # write `tail` at `tail_addr` in this cycle
        offset      = last_bit[:4]                      # of the bit in `taken_bit`, while `taken`
        m.d.comb += [
            self.i_bits.ready.eq(idle & ~self.full),
            append.eq(self.i_bits.valid & self.i_bits.ready),
        ]
        m.d.sync += [taken.eq(append), taken_bit.eq(self.i_bits.payload), writing.eq(taken)]
        with m.If(append):
            m.d.sync += [
                count.eq(count + 1),
                last_bit.eq(count),
                empty.eq(0),
                self.full.eq(count == self._max_bits - 1),
            ]
        with m.If(taken):
            m.d.sync += [
                tail.eq(Mux(offset == 0, 0, tail) | (taken_bit << offset)),
                tail_addr.eq(last_bit >> 4),
            ]

        # Flips.
        flip_index = Signal.like(self.i_flip.payload)
        flip_word  = Signal(range(words))
        flip_mask  = Signal(16)                         # the bit within the word
        flip_valid = Signal()                           # the index is in the block
        flip_tail  = Signal()                           # the word is the block's last, also held in `tail`

        # Streaming (READ and HASH). Reads run ahead into a queue of four words: a read takes two cycles to reach
        # the queue, and the decision to issue one looks only at registers (the queue's occupancy and the reads in
        # flight), so it must find room for every word already on its way.
        op          = Signal(Op)
        passes      = Signal(16)
        no_passes   = Signal()                          # a HASH of zero passes
        hashing     = Signal()                          # HASH, else READ
        last_word   = _Counter(words, name="last_word")         # index of the block's last word (not counted)
        last_beat   = _Counter(max_beats, name="last_beat")     # index of a pass's last beat (not counted)
        address     = Signal(range(words))              # next word to read
        word_left   = _Counter(words, name="word_left")         # words to read in this pass after `address`
        read_passes = _Counter((1 << 16) - 1, name="read_passes")
        beat_left   = _Counter(max_beats, name="beat_left")     # beats in this pass after the next one sent
        send_passes = _Counter((1 << 16) - 1, name="send_passes")
        beat        = Signal(range(beats_per_word))     # which beat of the queue's head word is next
        queue       = [Signal(16, name=f"queue{index}") for index in range(4)]
        occupied    = Signal(4)                         # queue entries in use: a thermometer code from entry 0
        in_flight   = Signal(2)                         # reads issued one and two cycles ago

        issue = Signal()
        m.d.comb += issue.eq(streaming & ~read_passes.zero &
                             ~(occupied[3] | (occupied[2] & (in_flight != 0)) | (occupied[1] & in_flight.all())))
        m.d.sync += in_flight.eq(Cat(issue, in_flight[0]))
        with m.If(issue):
            with m.If(word_left.zero):
                m.d.sync += [address.eq(0), word_left.reload(last_word), read_passes.step()]
            with m.Else():
                m.d.sync += [address.eq(address + 1), word_left.step()]

        # Beats leave through a two-entry output register (`out`, and `spare` while the consumer stalls), so that
        # the consumer's `ready` drives only that register; the queue and the counters move on `send`, which
        # depends on registers alone. Each entry says which output it is for.
        out_layout  = data.StructLayout({"data": 16, "last": 1, "hash": 1})
        out         = Signal(out_layout)
        out_valid   = Signal()
        spare       = Signal(out_layout)
        spare_valid = Signal()
        out_ready   = Signal()
        m.d.comb += [
            self.o_words.valid.eq(out_valid & ~out.hash),
            self.o_words.p.data.eq(out.data),
            self.o_words.p.last.eq(out.last),
            self.o_key.valid.eq(out_valid & out.hash),
            self.o_key.payload.eq(out.data[:W]),
            out_ready.eq(Mux(out.hash, self.o_key.ready, self.o_words.ready)),
        ]

        head = queue[0]
        next_beat = Signal(out_layout)
        send = Signal()
        pop  = Signal()
        m.d.comb += [
            next_beat.data.eq(Mux(hashing, head.word_select(beat, W), head) if beats_per_word > 1 else head),
            next_beat.last.eq(beat_left.zero),
            next_beat.hash.eq(hashing),
            send.eq(occupied[0] & ~spare_valid),      # words are queued only while streaming
        ]
        with m.If(~out_valid | out_ready):
            with m.If(spare_valid):
                m.d.sync += [out.eq(spare), spare_valid.eq(0)]
            with m.Else():
                m.d.sync += [out.eq(next_beat), out_valid.eq(send)]
        with m.Elif(send):
            m.d.sync += [spare.eq(next_beat), spare_valid.eq(1)]

        # The head word leaves the queue with its last beat. Whether the next beat is that is kept in a register
        # (`word_done`), so that `pop`, which enables every queue entry, is one LUT of registers.
        word_done = Signal()
        if beats_per_word > 1:
            m.d.comb += pop.eq(send & word_done)
            with m.If(send):
                next_beat_last = Mux(beat_left.zero, last_beat.zero, beat_left.one)    # `beat_left.zero` after
                m.d.sync += [
                    beat.eq(Mux(pop, 0, beat + 1)),
                    word_done.eq(next_beat_last | ~hashing | (~pop & (beat == beats_per_word - 2))),
                ]
        else:
            m.d.comb += pop.eq(send)
        with m.If(send):
            with m.If(beat_left.zero):
                m.d.sync += [beat_left.reload(last_beat), send_passes.step()]
                with m.If(send_passes.one):
                    m.d.sync += [streaming.eq(0), idle.eq(1)]
            with m.Else():
                m.d.sync += beat_left.step()

        # The queue shifts towards its head; a word read two cycles ago lands in the first free entry after the
        # shift: the last occupied one if the head leaves, else the first empty one. `land` says where that is
        # for each case (one-hot: entry i is the first empty one; bit 4, none is), kept in a register beside
        # `occupied`, so that each entry's enable is one LUT of `pop` and registers.
        arriving = in_flight[1]
        occupied_next = Signal.like(occupied)
        land          = Signal(5, init=1)
        m.d.comb += occupied_next.eq(Mux(arriving & ~pop, Cat(1, occupied[:-1]),
                                         Mux(pop & ~arriving, occupied >> 1, occupied)))
        m.d.sync += [
            occupied.eq(occupied_next),
            land.eq(Cat(1, occupied_next) & ~Cat(occupied_next, 0)),
        ]
        for index, entry in enumerate(queue):
            with m.If(arriving & Mux(pop, land[index + 1], land[index])):
                m.d.sync += entry.eq(rdata)
            if index + 1 < len(queue):
                with m.Elif(pop):
                    m.d.sync += entry.eq(queue[index + 1])

        # The memory: a bit taken two cycles ago is written now (while a command taken with it is decided on and
        # before any stream reads, or while a flip taken with it waits); otherwise a stream or a flip reads, or a
        # flip writes back.
        m.d.comb += [
            memory.addr.eq(Mux(writing, tail_addr, Mux(streaming, address, flip_word))),
            memory.wdata.eq(Mux(flip_write, rdata ^ flip_mask, tail)),
            memory.wmask.eq(Mux(writing | (flip_write & flip_valid), 0b1111, 0)),
        ]

        # Taking commands and flips.
        command = self.i_command.p
        m.d.comb += [
            self.i_command.ready.eq(idle),
            self.i_flip.ready.eq(idle & ~self.i_command.valid),
        ]
        with m.If(idle & self.i_command.valid):
            m.d.sync += [
                idle.eq(0),
                deciding.eq(1),
                op.eq(command.op),
                passes.eq(Mux(command.op == Op.READ, 1, command.passes)),
                no_passes.eq((command.op != Op.READ) & (command.passes == 0)),
                hashing.eq(command.op == Op.HASH),
            ]
        with m.Elif(idle & self.i_flip.valid):
            m.d.sync += [
                idle.eq(0),
                flip_read.eq(1),
                flip_index.eq(self.i_flip.payload),
                flip_word.eq(self.i_flip.payload >> 4),
                flip_mask.eq(1 << self.i_flip.payload[:4]),
            ]

        # A command is decided on from registers, a cycle after it is taken, so that its payload does not have to
        # reach the enables of all the counters it loads within one cycle; a stream computes its lengths in that
        # cycle and loads its counters (comparing those lengths with 0 and 1) in the next.
        with m.If(deciding):
            m.d.sync += deciding.eq(0)
            with m.If(op == Op.CLEAR):
                m.d.sync += [idle.eq(1), count.eq(0), self.full.eq(0), empty.eq(1)]
            with m.Elif(((op == Op.READ) | (op == Op.HASH)) & ~empty & ~no_passes):
                m.d.sync += [
                    starting.eq(1),
                    last_word.value.eq(last_bit >> 4),
                    last_beat.value.eq(Mux(hashing, last_bit >> (W.bit_length() - 1), last_bit >> 4)),
                ]
            with m.Else():
                m.d.sync += idle.eq(1)
        with m.If(starting):
            m.d.sync += [
                starting.eq(0),
                streaming.eq(1),
                last_word.load(last_word.value),
                last_beat.load(last_beat.value),
                address.eq(0),
                word_left.load(last_word.value),
                read_passes.load(passes),
                beat_left.load(last_beat.value),
                send_passes.load(passes),
                beat.eq(0),
                word_done.eq((last_beat.value == 0) | ~hashing),
            ]

        # A flip reads its word (after the write of a bit taken with it or in the cycle before), checks its index
        # meanwhile (a long carry chain, so its result is used a cycle later), and writes the word back changed.
        with m.If(flip_read & ~taken & ~writing):
            m.d.sync += [
                flip_read.eq(0),
                flip_wait.eq(1),
                flip_valid.eq(flip_index < count),
                flip_tail.eq(flip_word == tail_addr),
            ]
        with m.If(flip_wait):
            m.d.sync += [flip_wait.eq(0), flip_write.eq(1)]
        with m.If(flip_write):
            m.d.sync += [flip_write.eq(0), idle.eq(1)]
            with m.If(~flip_valid):
                m.d.sync += self.bad_flip.eq(self.bad_flip + 1)
            # The block's last word also lives in `tail`, which the next append writes back whole.
            with m.Elif(flip_tail):
                m.d.sync += tail.eq(tail ^ flip_mask)

        return m
