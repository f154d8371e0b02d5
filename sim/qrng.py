"""The QRNG input of the boards, modelled bit for bit: :class:`qkdlink.gateware.qrng.QRNGInput`'s words and its
SP 800-90B health tests, given the raw bits."""

from dataclasses import dataclass

from ..gateware.qrng import PROPORTION_WINDOW, proportion_cutoff, repetition_cutoff


__all__ = ["QRNGResult", "QRNGModel"]


@dataclass(frozen=True)
class QRNGResult:
    """What :class:`QRNGInput` makes of a sequence of bits, its consumer always ready.

    Attributes
    ----------
    words : list of int
        The words offered, in order: every whole word whose bits all came before the first failure.
    failures : list of int
        Index of every bit on which a test failed, once per test (an index appears twice when both fail on it).
    """
    words: list
    failures: list

    @property
    def failed(self):
        return bool(self.failures)


class QRNGModel:
    """The words and health tests of :class:`qkdlink.gateware.qrng.QRNGInput` of ``width``-bit words.

    The tests follow SP 800-90B section 4.4 as written there: the repetition count test keeps the last bit ``A``
    and a count ``B`` of it, failing when ``B`` reaches its cutoff; the adaptive proportion test takes the first
    bit of each window of 1024 as ``A`` and counts the window's bits equal to it, failing when the count reaches
    its cutoff. A failure is counted once per run and once per window.
    """

    def __init__(self, width, *, entropy=1):
        if width < 1:
            raise ValueError(f"Word width must be at least 1, not {width!r}")
        self.width = width
        self.repetition_cutoff = repetition_cutoff(entropy)
        self.proportion_cutoff = proportion_cutoff(entropy)

    def run(self, bits):
        """The :class:`QRNGResult` of ``bits`` (an iterable of 0 and 1) from reset."""
        bits = [int(bit) for bit in bits]
        failures = []
        run_bit = run = 0
        window_bit = count = 0
        for index, bit in enumerate(bits):
            if run and bit == run_bit:
                run += 1
                if run == self.repetition_cutoff:
                    failures.append(index)
            else:
                run_bit, run = bit, 1
            if index % PROPORTION_WINDOW == 0:
                window_bit, count = bit, 1
            elif bit == window_bit:
                count += 1
                if count == self.proportion_cutoff:
                    failures.append(index)
        usable = failures[0] if failures else len(bits)
        words = [sum(bit << position for position, bit in enumerate(bits[start:start + self.width]))
                 for start in range(0, usable - self.width + 1, self.width)]
        return QRNGResult(words=words, failures=failures)
