"""An external quantum random number generator's serial output: words for the cores, and its health tests.

The QRNG drives two pins: ``clock`` and ``data``, one random bit on each rising edge of ``clock`` (as an SPI
device in mode 0 does). :class:`QRNGInput` samples both in the ``sync`` domain, so the QRNG's clock must be slower
than a quarter of ``sync`` and ``data`` stable from one falling edge of ``clock`` to the next.

Every raw bit goes through the two continuous health tests of NIST SP 800-90B, section 4.4, with a false-positive
probability ``alpha = 2 ** -20`` per test and sample and a claimed min-entropy ``H`` (1 bit per bit by default):

- the repetition count test fails when ``C = 1 + ceil(20 / H)`` (21 at H = 1) bits in a row are equal
  (:func:`repetition_cutoff`);
- the adaptive proportion test cuts the bits into windows of 1024 and fails when ``C = 1 + CRITBINOM(1024, 2 ** -H,
  1 - alpha)`` (589 at H = 1, the value of the standard's table 2) bits of a window equal the window's first bit
  (:func:`proportion_cutoff`).

:class:`qkdlink.sim.qrng.QRNGModel` is the same, in Python.
"""

import math
from fractions import Fraction

from amaranth import *
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out


__all__ = ["ALPHA_LOG2", "PROPORTION_WINDOW", "repetition_cutoff", "proportion_cutoff", "QRNGInput"]


#: -log2 of the false-positive probability of each test: SP 800-90B recommends alpha from 2^-20 to 2^-40.
ALPHA_LOG2 = 20

#: Bits per window of the adaptive proportion test for binary samples (SP 800-90B, section 4.4.2).
PROPORTION_WINDOW = 1024


def _check_entropy(entropy):
    if not isinstance(entropy, (int, float, Fraction)) or not 0 < entropy <= 1:
        raise ValueError(f"Min-entropy per bit must be in (0, 1], not {entropy!r}")


def repetition_cutoff(entropy=1, *, alpha_log2=ALPHA_LOG2):
    """The repetition count test's cutoff: ``1 + ceil(alpha_log2 / entropy)`` equal bits in a row fail."""
    _check_entropy(entropy)
    return 1 + math.ceil(Fraction(alpha_log2) / Fraction(entropy))


def proportion_cutoff(entropy=1, *, window=PROPORTION_WINDOW, alpha_log2=ALPHA_LOG2):
    """The adaptive proportion test's cutoff: ``1 + CRITBINOM(window, 2 ** -entropy, 1 - 2 ** -alpha_log2)``, the
    smallest count of a window's first value whose probability is at most alpha (computed exactly)."""
    _check_entropy(entropy)
    p = Fraction(2) ** -Fraction(entropy) if entropy == int(entropy) else Fraction(2 ** -entropy)
    q = 1 - p
    target = 1 - Fraction(1, 1 << alpha_log2)
    total = Fraction(0)
    for k in range(window + 1):
        total += math.comb(window, k) * p ** k * q ** (window - k)
        if total >= target:
            return 1 + k
    return window + 1


class QRNGInput(wiring.Component):
    """Deserialise an external QRNG's bits into a stream of words, and run SP 800-90B's health tests on them.

    Bits fill a word least significant first; a full word is offered on ``o`` and held until taken. A word that
    fills up while the previous one is still offered is dropped (which does not bias the words that pass: the
    choice depends on the consumer only). A word that holds the bit on which a test fails is not offered, and once
    a test has failed no word is offered until reset: ``failed`` stays high. The tests keep running on every bit,
    dropped words included.

    Parameters
    ----------
    shape : shape-castable
        The payload of ``o``: each word is ``Shape.cast(shape).width`` consecutive bits.
    entropy : int or float
        Claimed min-entropy per bit, in (0, 1]; it sets both cutoffs.

    Members
    -------
    clock, data : In(1)
        The QRNG's pins, asynchronous to ``sync``: synchronised here.
    o : Out(stream.Signature(shape))
        The words.
    failed : Out(1)
        A test has failed since reset.
    failures : Out(32)
        Test failures since reset (wraps at 2**32): one per run of ``repetition_cutoff`` equal bits, however long
        the run, and one per window in which ``proportion_cutoff`` bits equal its first bit.
    bits : Out(32)
        Bits received since reset (wraps at 2**32), for the QRNG's rate.
    """

    def __init__(self, shape, *, entropy=1):
        self._shape = shape
        self._width = Shape.cast(shape).width
        if self._width < 1:
            raise ValueError(f"Word shape must have at least one bit, not {shape!r}")
        self._repetition_cutoff = repetition_cutoff(entropy)
        self._proportion_cutoff = proportion_cutoff(entropy)
        super().__init__({
            "clock":    In(1),
            "data":     In(1),
            "o":        Out(stream.Signature(shape)),
            "failed":   Out(1),
            "failures": Out(32),
            "bits":     Out(32),
        })

    @property
    def repetition_cutoff(self):
        return self._repetition_cutoff

    @property
    def proportion_cutoff(self):
        return self._proportion_cutoff

    def elaborate(self, platform):
        m = Module()

        # Equal synchronisers keep the data sample aligned with the clock edge it belongs to.
        clock = Signal()
        data = Signal()
        m.submodules.clock_sync = FFSynchronizer(self.clock, clock)
        m.submodules.data_sync = FFSynchronizer(self.data, data)
        clock_last = Signal()
        m.d.sync += clock_last.eq(clock)
        # A registered bit, so that the tests and the word start from flip-flops.
        bit = Signal()
        strobe = Signal()
        m.d.sync += [bit.eq(data), strobe.eq(clock & ~clock_last)]

        # Repetition count test: `run` equal bits so far, saturating at the cutoff.
        run_bit = Signal()
        run = Signal(range(self._repetition_cutoff + 1))
        run_fails = Signal()
        # Adaptive proportion test: `index` of the bit in its window, `count` of bits equal to the first.
        window_bit = Signal()
        index = Signal(range(PROPORTION_WINDOW))
        count = Signal(range(self._proportion_cutoff + 1))
        window_fails = Signal()
        with m.If(strobe):
            with m.If((run == 0) | (bit != run_bit)):
                m.d.sync += [run_bit.eq(bit), run.eq(1)]
            with m.Elif(run != self._repetition_cutoff):
                m.d.sync += run.eq(run + 1)
                m.d.comb += run_fails.eq(run == self._repetition_cutoff - 1)
            m.d.sync += index.eq(index + 1)         # wraps at the window: a power of two
            with m.If(index == 0):
                m.d.sync += [window_bit.eq(bit), count.eq(1)]
            with m.Elif((bit == window_bit) & (count != self._proportion_cutoff)):
                m.d.sync += count.eq(count + 1)
                m.d.comb += window_fails.eq(count == self._proportion_cutoff - 1)
            m.d.sync += self.bits.eq(self.bits + 1)
        failing = run_fails | window_fails
        with m.If(failing):
            m.d.sync += [self.failed.eq(1), self.failures.eq(self.failures + 1 + (run_fails & window_fails))]

        # The word: a bit of a failing test spoils it; it is offered only if none of its bits did.
        word = Signal(self._width)
        shifted = Cat(word[1:], bit)
        filled = Signal(range(self._width))
        spoiled = Signal()
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(strobe):
            with m.If(filled == self._width - 1):
                m.d.sync += [filled.eq(0), spoiled.eq(0)]
                with m.If(~(self.failed | failing | spoiled) & (~self.o.valid | self.o.ready)):
                    m.d.sync += [self.o.valid.eq(1), self.o.payload.eq(shifted)]
            with m.Else():
                m.d.sync += [filled.eq(filled + 1), spoiled.eq(spoiled | failing)]
            m.d.sync += word.eq(shifted)
        return m
