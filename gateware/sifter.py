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

    A detection matches when ``basis == alice_basis`` and ``intensity != 3``. Every stream has back-pressure.
    With no output stalled the core takes one detection a cycle, and its beats are offered two cycles after it is
    taken. Each output holds up to two beats (the one it offers and one more); the core takes a detection into a
    register and passes it on to the outputs once every output has room for a second beat. So a stalled output
    stalls the others once it holds two beats; the core then takes two more detections into registers and no
    other until the stalled output takes a beat.

    The handshakes are kept off long paths: ``i_detections.ready`` and each output's ``valid`` and payload come
    straight from flip-flops, a consumer's ``ready`` drives only that output's two entries, and the producer's
    ``valid`` and payload go into registers through one multiplexer.

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

        # A detection is taken into a register (`held`) as it is and classified on its way from there into the
        # outputs' buffers, so that the producer's payload goes through one multiplexer of the core (a producer
        # may compute its payload combinationally, as the choice memory does). A skid register in front of `held`
        # takes a detection while `held` cannot move on, so that `i_detections.ready` comes straight from a
        # flip-flop.
        skid       = Signal(Detection)
        skid_valid = Signal()
        held       = Signal(Detection)
        held_valid = Signal()
        m.d.comb += self.i_detections.ready.eq(~skid_valid)

        # Each output has a buffer of two entries: the beat it offers, and a spare that fills while its consumer
        # stalls, so that the consumer's `ready` drives only that buffer. The held detection moves on once every
        # output has a free spare (whether or not it goes to that output), which depends on registers alone.
        def output(port, beat, push):
            spare       = Signal(port.payload.shape())
            spare_valid = Signal()
            with m.If(~port.valid | port.ready):
                with m.If(spare_valid):
                    m.d.sync += [port.payload.eq(spare), spare_valid.eq(0)]
                with m.Else():
                    m.d.sync += [port.payload.eq(beat), port.valid.eq(push)]
            with m.Elif(push):
                m.d.sync += [spare.eq(beat), spare_valid.eq(1)]
            return ~spare_valid

        match  = Signal()
        room   = Signal(3)
        take   = Signal()                               # the held detection goes to the outputs
        refill = Signal()                               # `held` takes the next detection, if there is one
        m.d.comb += [
            match.eq((held.basis == held.alice_basis) & (held.intensity != NOT_SENT)),
            take.eq(held_valid & room.all()),
            refill.eq(~held_valid | room.all()),
            room[0].eq(output(self.o_match, Cat(match, held.intensity), take)),
            room[1].eq(output(self.o_key, held.bit, take & match & (held.basis == Z))),
            room[2].eq(output(self.o_test, Cat(held.bit, held.intensity), take & match & (held.basis == X))),
        ]

        with m.If(refill):
            m.d.sync += [
                held.eq(Mux(skid_valid, skid, self.i_detections.p)),
                held_valid.eq(skid_valid | self.i_detections.valid),
            ]
        with m.If(skid_valid):
            with m.If(refill):
                m.d.sync += skid_valid.eq(0)
        with m.Elif(self.i_detections.valid & ~refill):
            m.d.sync += [skid.eq(self.i_detections.p), skid_valid.eq(1)]

        return m
