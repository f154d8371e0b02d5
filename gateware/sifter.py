"""Basis sifting in gateware: one detection a cycle into the match announcement, the raw key and the test bits.

The same core runs on both sides. On Alice each detection Bob announced is looked up in her choice memory (her basis
and intensity, and her bit); on Bob the detection carries his own bit and Alice's announced basis and intensity.
:func:`qkdlink.host.sifting.sift` and :func:`qkdlink.host.sifting.matches` are the reference model.
"""

from amaranth import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..numbering import NOT_SENT, X, Z


__all__ = ["Detection", "Match", "ErrorSample", "Sifter"]


# Kept equal to qkdlink.host.sifting (gateware imports nothing of ours but gateware); tests/gateware/test_sifter.py
# checks that they agree.


class Detection(data.Struct):
    """One detection to sift."""
    basis:       1      # Bob's basis: 0 = Z, 1 = X
    bit:         1      # this side's bit
    alice_basis: 1
    intensity:   2      # Alice's intensity index; 3 = the slot was not sent


class Match(data.Struct):
    """What Alice announces for a detection."""
    match:     1        # the bases agree and the slot was sent
    intensity: 2


class ErrorSample(data.Struct):
    """A matched X-basis detection: a bit for the phase-error estimate."""
    bit:       1
    intensity: 2


class Sifter(wiring.Component):
    """Split detections into the match announcement, the raw key (Z basis) and the test bits (X basis).

    A detection matches when ``basis == alice_basis`` and ``intensity != 3``. Every stream has back-pressure. The
    core holds one detection at a time, offering its beat on each output it goes to (valid from flip-flops), and
    moves on to the next once every one of those outputs has taken its beat; so a stalled output stalls the others
    from the next detection on. With no output stalled the core takes one detection a cycle, and its beats are
    offered in the cycle after it is taken. While the core is stalled it takes one more detection into a register
    and then no other until it moves on; ``i_detections.ready`` comes straight from a flip-flop.

    Members
    -------
    i_detections : In(stream.Signature(Detection))
        One beat per detection, in slot order.
    o_match : Out(stream.Signature(Match))
        One beat per detection: whether it matched, and Alice's intensity.
    o_key : Out(stream.Signature(1))
        This side's bit of each matched Z-basis detection, in order: the raw key.
    o_test : Out(stream.Signature(ErrorSample))
        This side's bit and Alice's intensity of each matched X-basis detection, in order.
    """

    i_detections: In(stream.Signature(Detection))
    o_match:      Out(stream.Signature(Match))
    o_key:        Out(stream.Signature(1))
    o_test:       Out(stream.Signature(ErrorSample))

    def elaborate(self, platform):
        m = Module()

        # A skid register in front, so that `i_detections.ready` comes straight from a flip-flop and the outputs'
        # `ready` does not reach the detection source's logic in the same cycle. It fills only while the stage is
        # stalled.
        skid       = Signal(Detection)
        skid_valid = Signal()
        source     = Signal(Detection)
        m.d.comb += [
            self.i_detections.ready.eq(~skid_valid),
            source.eq(Mux(skid_valid, skid, self.i_detections.p)),
        ]

        # The stage: one detection, classified, offered on each output it goes to until that output takes it.
        valid     = Signal()
        bit       = Signal()
        intensity = Signal(2)
        match     = Signal()
        to_key    = Signal()
        to_test   = Signal()
        taken     = Signal(3)                           # o_match, o_key, o_test have taken this detection's beat
        m.d.comb += [
            self.o_match.valid.eq(valid & ~taken[0]),
            self.o_match.p.match.eq(match),
            self.o_match.p.intensity.eq(intensity),
            self.o_key.valid.eq(valid & to_key & ~taken[1]),
            self.o_key.payload.eq(bit),
            self.o_test.valid.eq(valid & to_test & ~taken[2]),
            self.o_test.p.bit.eq(bit),
            self.o_test.p.intensity.eq(intensity),
        ]

        sent = Cat(self.o_match.valid & self.o_match.ready,
                   self.o_key.valid & self.o_key.ready,
                   self.o_test.valid & self.o_test.ready)
        advance = Signal()                              # the stage is done with its detection after this cycle
        load    = Signal()
        m.d.comb += [
            advance.eq(valid & (taken[0] | self.o_match.ready) &
                       (~to_key | taken[1] | self.o_key.ready) & (~to_test | taken[2] | self.o_test.ready)),
            load.eq(~valid | advance),
        ]
        with m.If(load):
            source_match = (source.basis == source.alice_basis) & (source.intensity != NOT_SENT)
            m.d.sync += [
                valid.eq(skid_valid | self.i_detections.valid),
                bit.eq(source.bit),
                intensity.eq(source.intensity),
                match.eq(source_match),
                to_key.eq(source_match & (source.basis == Z)),
                to_test.eq(source_match & (source.basis == X)),
                taken.eq(0),
            ]
        with m.Else():
            m.d.sync += taken.eq(taken | sent)

        with m.If(skid_valid):
            with m.If(load):
                m.d.sync += skid_valid.eq(0)
        with m.Elif(self.i_detections.valid & ~load):
            m.d.sync += [skid.eq(self.i_detections.p), skid_valid.eq(1)]

        return m
