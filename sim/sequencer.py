"""Alice's slot sequencer and choice memory, modelled bit for bit.

:func:`thresholds` turns the protocol's probabilities into the sequencer's integer settings, :func:`choose` and
:func:`choices` turn random words into per-slot choices as :class:`qkdlink.gateware.sequencer.SlotSequencer`
does, :class:`SlotSequencerModel` is the sequencer cycle by cycle, and :class:`ChoiceMemoryModel` is
:class:`qkdlink.gateware.choices.ChoiceMemory` transaction by transaction (writes, releases, lookups).

Basis 0 is Z and 1 is X; intensity 0, 1, 2 is signal, decoy, weakest decoy, and 3 (:data:`NOT_SENT`) marks a slot
for which Alice had no random word, so the source did not fire.
"""

import math

import numpy as np

from ..numbering import NOT_SENT


__all__ = ["RANDOM_RANGE", "NOT_SENT", "thresholds", "choose", "choices", "SlotSequencerModel",
           "ChoiceMemoryModel"]


#: Random words of the basis and intensity draws are 16 bits: thresholds count in 1/65536.
RANDOM_RANGE = 1 << 16


def thresholds(p_z, probabilities):
    """The sequencer's settings ``(p_z, t0, t1)`` for a basis probability and three intensity probabilities.

    With a uniform 16-bit random word ``r``, the sequencer picks Z iff ``r < p_z`` and intensity 0 iff
    ``r < t0``, 1 iff ``t0 <= r < t1``, else 2; so it sends Z with probability ``p_z / 65536`` exactly and the
    intensities with ``t0 / 65536``, ``(t1 - t0) / 65536`` and ``(65536 - t1) / 65536``. The settings are
    ``round(p_z * 65536)``, ``round(p0 * 65536)`` and ``round((p0 + p1) * 65536)`` (cumulative thresholds), so
    the probabilities realised differ from the ones asked for by at most 2^-17 (7.6e-6) for the basis, for
    intensity 0 and for intensity 2, and by at most 2^-16 (1.5e-5) for intensity 1, whose interval has two
    rounded ends. The host must use the realised probabilities (the settings over 65536), not the requested
    ones, wherever the finite-key analysis needs Alice's probabilities.

    Parameters
    ----------
    p_z : float
        Probability of the Z basis, in [0, 1]: 0 gives 0 (always X), 1 gives 65536 (always Z).
    probabilities : sequence of three floats
        ``(p0, p1, p2)`` of intensities 0, 1, 2 (``DecoySettings.probabilities``): non-negative, summing to 1
        (to 1e-9).

    Returns
    -------
    (p_z, t0, t1) : tuple of int
        Each in [0, 65536], ``t0 <= t1``: the values of :class:`SlotSequencer`'s ``p_z`` and
        ``intensity_thresholds`` (``t0``, ``t1``).

    Raises
    ------
    ValueError
        If a probability is out of range, the three do not sum to 1, or a non-zero intensity probability is so
        small (about 2^-16 or less) that its interval rounds to nothing and it would never be sent.
    """
    p_z = float(p_z)
    if not 0 <= p_z <= 1:
        raise ValueError(f"p_z must lie in [0, 1], not {p_z!r}")
    probabilities = tuple(float(p) for p in probabilities)
    if len(probabilities) != 3:
        raise ValueError(f"there must be three intensity probabilities, not {len(probabilities)}")
    for index, p in enumerate(probabilities):
        if not 0 <= p <= 1:
            raise ValueError(f"probabilities[{index}] must lie in [0, 1], not {p!r}")
    total = math.fsum(probabilities)
    if abs(total - 1) > 1e-9:
        raise ValueError(f"the intensity probabilities must sum to 1, not {total:.12g}")
    p0, p1, _ = probabilities
    t0 = min(round(p0 * RANDOM_RANGE), RANDOM_RANGE)
    t1 = min(round(math.fsum((p0, p1)) * RANDOM_RANGE), RANDOM_RANGE)
    widths = (t0, t1 - t0, RANDOM_RANGE - t1)
    for index, (p, width) in enumerate(zip(probabilities, widths)):
        if p > 0 and width == 0:
            raise ValueError(f"probabilities[{index}] = {p!r} is too small for the sequencer's resolution of "
                             f"2^-16: intensity {index} would never be sent")
    return min(round(p_z * RANDOM_RANGE), RANDOM_RANGE), t0, t1


def choose(word, *, p_z, t0, t1):
    """One slot's ``(basis, bit, intensity)`` from its random word, or ``(0, 0, 3)`` if ``word`` is None.

    ``word`` is a mapping with ``basis`` and ``intensity`` (16-bit) and ``bit`` (1-bit) random values.
    """
    if word is None:
        return 0, 0, NOT_SENT
    basis = 0 if word["basis"] < p_z else 1
    intensity = 0 if word["intensity"] < t0 else 1 if word["intensity"] < t1 else 2
    return basis, word["bit"] & 1, intensity


def choices(basis_words, intensity_words, bits, *, p_z, t0, t1, sent=None):
    """:func:`choose` for arrays of random words; returns ``(basis, bit, intensity)`` arrays of uint8.

    ``sent``, if given, is a boolean array: where it is False the slot had no random word (``0, 0, 3``).
    """
    basis_words, intensity_words, bits = (np.asarray(a, dtype=np.int64)
                                          for a in (basis_words, intensity_words, bits))
    basis = (basis_words >= p_z).astype(np.uint8)
    intensity = np.where(intensity_words < t0, 0, np.where(intensity_words < t1, 1, 2)).astype(np.uint8)
    bit = (bits & 1).astype(np.uint8)
    if sent is not None:
        sent = np.asarray(sent, dtype=bool)
        basis = np.where(sent, basis, 0).astype(np.uint8)
        bit = np.where(sent, bit, 0).astype(np.uint8)
        intensity = np.where(sent, intensity, NOT_SENT).astype(np.uint8)
    return basis, bit, intensity


class SlotSequencerModel:
    """:class:`qkdlink.gateware.sequencer.SlotSequencer`, cycle by cycle.

    Each cycle, read the registered outputs with :meth:`outputs`, ask :meth:`ready` whether a slot starts (the
    gateware's ``i_random.ready``) with this cycle's inputs, then advance with :meth:`step`. The settings
    ``period``, ``p_z``, ``t0`` and ``t1`` are attributes that may change between cycles, like the gateware's
    run-time inputs; ``period`` is read at each slot's start (0 counts as 1).

    Parameters
    ----------
    frame_bits : int
        A frame has 2**frame_bits slots.
    frame_width : int
        Width of the frame counter (frame numbers wrap modulo 2**frame_width).
    """

    def __init__(self, *, frame_bits, frame_width=32, period=1, p_z=RANDOM_RANGE, t0=RANDOM_RANGE,
                 t1=RANDOM_RANGE):
        self.frame_bits = frame_bits
        self.frame_width = frame_width
        self.period, self.p_z, self.t0, self.t1 = period, p_z, t0, t1
        self.running = False
        self.remaining = 0          # cycles of the current slot left after this one
        self.slot = 0
        self.frame = -1             # the first frame is 0
        self.starved = 0
        self.basis, self.bit, self.intensity = 0, 0, NOT_SENT
        self.emit = self.sync = False
        self.choice = None          # the o_choices beat of this cycle, if any

    def _new_frame_possible(self):
        return not self.running or (self.remaining == 0 and self.slot == (1 << self.frame_bits) - 1)

    def ready(self, *, enable, frame_free):
        """Whether a slot starts in this cycle (and takes the random word on offer, if any)."""
        if self.running and self.remaining == 0 and self.slot != (1 << self.frame_bits) - 1:
            return True
        return self._new_frame_possible() and bool(enable) and bool(frame_free)

    def outputs(self):
        """The registered outputs in this cycle: a dict of the modulator outputs, ``starved`` and ``choice``."""
        return {"basis": self.basis, "bit": self.bit, "intensity": self.intensity, "emit": self.emit,
                "sync": self.sync, "starved": self.starved, "choice": self.choice}

    def step(self, *, enable, frame_free, word):
        """Advance one cycle; ``word`` is the random word on offer this cycle, or None. Returns :meth:`ready`."""
        start = self.ready(enable=enable, frame_free=frame_free)
        if start:
            if self._new_frame_possible():
                self.frame = (self.frame + 1) % (1 << self.frame_width)
                self.slot = 0
            else:
                self.slot += 1
            self.running = True
            self.remaining = max(self.period, 1) - 1
            self.basis, self.bit, self.intensity = choose(word, p_z=self.p_z, t0=self.t0, t1=self.t1)
            self.emit = word is not None
            self.sync = self.slot == 0
            if word is None:
                self.starved = (self.starved + 1) % (1 << 32)
            self.choice = {"frame": self.frame, "slot": self.slot, "basis": self.basis, "bit": self.bit,
                           "intensity": self.intensity}
        else:
            self.emit = self.sync = False
            self.choice = None
            if self.running:
                if self.remaining == 0:
                    # The frame's last slot is over and no frame follows it yet: the source idles.
                    self.running = False
                    self.basis, self.bit, self.intensity = 0, 0, NOT_SENT
                else:
                    self.remaining -= 1
        return start


class ChoiceMemoryModel:
    """:class:`qkdlink.gateware.choices.ChoiceMemory`, one transaction at a time.

    A frame is *begun* by the choice of its slot 0 and *held* once the choice of its last slot is written, until
    it is released. Releases must name the oldest held frame; lookups may name any held frame.

    To follow the gateware cycle by cycle, make the calls in the cycles in which the gateware acts: in each
    cycle, first :meth:`release` for a release accepted two cycles before, then :meth:`lookup` for a lookup
    accepted in the previous cycle, then :meth:`write` for the choice beat of the previous cycle. A lookup whose
    frame is released before it reads the memory answers as not sent in the gateware, depending on when it
    reads, so a host releases a frame only after the frame's lookups are answered.

    Parameters
    ----------
    frame_bits : int
        A frame has 2**frame_bits slots.
    frames : int
        Frames the memory holds (begun and not released).
    """

    def __init__(self, *, frame_bits, frames=2):
        self.frame_bits = frame_bits
        self.frames = frames
        self.held = {}              # frame -> list of (basis, bit, intensity), in age order
        self.writing = None         # (frame, list) of the frame being written
        self.bad_lookup = 0
        self.bad_release = 0

    @property
    def begun(self):
        return len(self.held) + (self.writing is not None)

    @property
    def frame_free(self):
        """Room for one more frame (the gateware's ``o_frame_free``)."""
        return self.begun < self.frames

    def write(self, choice):
        """Store one slot's choice (a dict like an ``o_choices`` beat); slots must come in order.

        Raises
        ------
        ValueError
            On a beat the gateware's contract excludes: out of order, or a new frame while the memory is full.
        """
        frame, slot = choice["frame"], choice["slot"]
        if slot == 0:
            if self.writing is not None:
                raise ValueError(f"frame {frame} begins before frame {self.writing[0]} is complete")
            if not self.frame_free:
                raise ValueError(f"frame {frame} begins while the memory holds {self.frames} frames")
            self.writing = (frame, [])
        elif self.writing is None or self.writing[0] != frame or len(self.writing[1]) != slot:
            raise ValueError(f"slot {slot} of frame {frame} out of order")
        self.writing[1].append((choice["basis"], choice["bit"], choice["intensity"]))
        if slot == (1 << self.frame_bits) - 1:
            self.held[frame] = self.writing[1]
            self.writing = None

    def release(self, frame):
        """Free the oldest held frame if ``frame`` names it; otherwise count a bad release. Returns success."""
        if self.held and next(iter(self.held)) == frame:
            del self.held[frame]
            return True
        self.bad_release += 1
        return False

    def lookup(self, frame, slot, basis):
        """The ``o_lookup`` beat (a dict) answering Bob's detection in ``(frame, slot)`` with ``basis``."""
        if frame not in self.held:
            self.bad_lookup += 1
            return {"basis": basis, "alice_basis": 0, "bit": 0, "intensity": NOT_SENT}
        alice_basis, bit, intensity = self.held[frame][slot]
        return {"basis": basis, "alice_basis": alice_basis, "bit": bit, "intensity": intensity}
