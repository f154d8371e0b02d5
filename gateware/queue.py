"""Stream stages: a FIFO between a producer that cannot stall and a consumer that can, counting what it has to drop;
and a register slice that cuts the combinational paths between two cores."""

from amaranth import *
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out


__all__ = ["EventQueue", "RegisterSlice"]


class EventQueue(wiring.Component):
    """Queue of ``depth`` beats from an ``always_ready`` stream (such as the time-tagger's events) to a stream with
    back-pressure.

    A beat that arrives while the queue holds ``depth`` beats is dropped and counted (even if one leaves in the same
    cycle); every other beat gets through, and they come out in order.

    The beats go through a memory of ``depth`` beats (block RAM), its read register and an output register, so
    that the consumer's logic starts from flip-flops and not from the block RAM's read data; a count of the beats
    held in all three keeps the capacity at exactly ``depth``. ``o.ready`` reaches the memory's read enable
    through one gate, and every other decision is made from registers.

    Parameters
    ----------
    shape : shape-castable
        The payload of both streams (for instance :func:`qkdlink.gateware.timetagger.event_layout`).
    depth : int
        Beats the queue holds, >= 3.

    Members
    -------
    i : In(stream.Signature(shape, always_ready=True))
        Beats to queue; taken in every cycle ``valid`` is high, whether there is room or not.
    o : Out(stream.Signature(shape))
        The queued beats, oldest first, from a register; a beat taken at ``i`` may appear here three cycles later
        at the earliest. ``ready`` may be low at any time: no beat is lost or repeated.
    overflow : Out(32)
        Beats dropped since reset because the queue was full (wraps at 2**32); counts a beat from the cycle after
        it arrived.
    """

    def __init__(self, shape, depth):
        if not isinstance(depth, int) or depth < 3:
            raise TypeError(f"Queue depth must be an integer of at least 3, not {depth!r}")
        self._shape = shape
        self._depth = depth
        super().__init__({
            "i":        In(stream.Signature(shape, always_ready=True)),
            "o":        Out(stream.Signature(shape)),
            "overflow": Out(32),
        })

    @property
    def shape(self):
        return self._shape

    @property
    def depth(self):
        return self._depth

    def elaborate(self, platform):
        m = Module()
        depth = self._depth

        # Beats held, in the memory, its read register and the output register. `full` is held == depth, kept in a
        # register so that the write enable is short.
        held = Signal(range(depth + 1))
        full = Signal()
        take = self.i.valid & ~full
        give = self.o.valid & self.o.ready
        with m.If(take & ~give):
            m.d.sync += held.eq(held + 1)
        with m.Elif(give & ~take):
            m.d.sync += held.eq(held - 1)
        m.d.sync += full.eq(~give & (full | (take & (held == depth - 1))))
        with m.If(self.i.valid & full):
            m.d.sync += self.overflow.eq(self.overflow + 1)

        # The memory never holds more than `held` beats, so it has room for every beat taken.
        m.submodules.storage = storage = Memory(shape=Shape.cast(self._shape).width, depth=depth, init=[])
        w_port = storage.write_port()
        r_port = storage.read_port()
        produce = Signal(range(depth))
        consume = Signal(range(depth))
        stored = Signal(range(depth + 1))       # beats in the memory
        nonempty = Signal()                     # stored != 0
        loaded = Signal()                       # r_port.data holds a beat, not yet in the output register
        advance = ~self.o.valid | self.o.ready  # the output register takes a beat, if there is one
        read = nonempty & (~loaded | advance)
        m.d.comb += [
            w_port.addr.eq(produce),
            w_port.data.eq(self.i.payload),
            w_port.en.eq(take),
            r_port.addr.eq(consume),
            r_port.en.eq(read),
        ]
        with m.If(take):
            m.d.sync += produce.eq(Mux(produce == depth - 1, 0, produce + 1))
        with m.If(read):
            m.d.sync += consume.eq(Mux(consume == depth - 1, 0, consume + 1))
        with m.If(take & ~read):
            m.d.sync += [stored.eq(stored + 1), nonempty.eq(1)]
        with m.Elif(read & ~take):
            m.d.sync += [stored.eq(stored - 1), nonempty.eq(stored != 1)]

        with m.If(read):
            m.d.sync += loaded.eq(1)
        with m.Elif(advance):
            m.d.sync += loaded.eq(0)
        # The payload register has no reset, which would have to be merged into its enable.
        payload = Signal(Shape.cast(self._shape).width, reset_less=True)
        m.d.comb += self.o.payload.eq(payload)
        with m.If(advance):
            m.d.sync += self.o.valid.eq(loaded)
            with m.If(loaded):
                m.d.sync += payload.eq(r_port.data)
        return m


class RegisterSlice(wiring.Component):
    """One stage of a stream, registered both ways: ``o.valid``, ``o.payload`` and ``i.ready`` all come from
    flip-flops, so that the consumer's ``ready`` logic and the producer's ``valid`` logic never meet in one cycle.

    A beat a cycle goes through; each takes a cycle. A second register (the skid) catches the beat that arrives
    in the cycle the consumer stops, since ``i.ready`` can only fall a cycle later.

    Parameters
    ----------
    shape : shape-castable
        The payload of both streams.

    Members
    -------
    i : In(stream.Signature(shape))
    o : Out(stream.Signature(shape))
    """

    def __init__(self, shape):
        super().__init__({"i": In(stream.Signature(shape)), "o": Out(stream.Signature(shape))})

    def elaborate(self, platform):
        m = Module()
        skid = Signal.like(self.i.payload)
        skid_valid = Signal()
        m.d.comb += self.i.ready.eq(~skid_valid)
        with m.If(~self.o.valid | self.o.ready):
            with m.If(skid_valid):
                m.d.sync += [self.o.payload.eq(skid), self.o.valid.eq(1), skid_valid.eq(0)]
            with m.Else():
                m.d.sync += [self.o.payload.eq(self.i.payload), self.o.valid.eq(self.i.valid)]
        with m.Elif(self.i.valid & ~skid_valid):
            m.d.sync += [skid.eq(self.i.payload), skid_valid.eq(1)]
        return m
