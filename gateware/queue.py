"""A FIFO between a producer that cannot stall and a consumer that can, counting what it has to drop."""

from amaranth import *
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out


__all__ = ["EventQueue"]


class EventQueue(wiring.Component):
    """Queue of ``depth`` beats from an ``always_ready`` stream (such as the time-tagger's events) to a stream with
    back-pressure.

    A beat that arrives while the queue holds ``depth`` beats is dropped and counted (even if one leaves in the same
    cycle); every other beat gets through, and they come out in order. Memory holds ``depth - 1`` beats and an
    output register the oldest (``SyncFIFOBuffered``).

    Parameters
    ----------
    shape : shape-castable
        The payload of both streams (for instance :func:`qkdlink.gateware.timetagger.event_layout`).
    depth : int
        Beats the queue holds, >= 3. (``SyncFIFOBuffered`` of depth 2 refuses a beat while it moves the one before
        to its output register, though it holds only one: it drops beats when it is not full.)

    Members
    -------
    i : In(stream.Signature(shape, always_ready=True))
        Beats to queue; taken in every cycle ``valid`` is high, whether there is room or not.
    o : Out(stream.Signature(shape))
        The queued beats, oldest first; a beat taken at ``i`` may appear here two cycles later at the earliest.
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
        m.submodules.fifo = fifo = SyncFIFOBuffered(width=Shape.cast(self._shape).width, depth=self._depth)
        m.d.comb += [
            fifo.w_data.eq(self.i.payload),
            fifo.w_en.eq(self.i.valid),
            self.o.payload.eq(fifo.r_data),
            self.o.valid.eq(fifo.r_rdy),
            fifo.r_en.eq(self.o.ready),
        ]
        with m.If(self.i.valid & ~fifo.w_rdy):
            m.d.sync += self.overflow.eq(self.overflow + 1)
        return m
