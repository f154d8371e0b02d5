"""Calibrating Bob's slot assigner from the time-tagger's raw tags: slot period, delay and gate.

Alice's and Bob's boards run on their own crystals, so Bob's idea of a slot is measured, not configured: the sync
pulse Alice sends at the start of every frame of 2^k slots gives the slot period in Bob's bins to a precision of
(sync jitter) / (2^k x frames), and the photon clicks, folded onto that period, give the phase at which a slot's
photons arrive and how wide their jitter is. From these the host sets the slot assigner (``gateware/slots.py``):

- ``period``: the mean sync interval / 2^k, in bins, as a fixed-point number with ``fraction_bits`` fraction bits;
- ``delay``: bins from a sync to the start of its frame's slot 0, placing the photons' arrival phase in the middle
  of a slot;
- ``gate_start``, ``gate_width``: the fewest bins around it that hold ``coverage`` of the photon clicks (dark
  counts and afterpulses outside them are rejected).

Which slot a photon belongs to is known only modulo one slot period from timing alone. The photons of slot j are
taken to arrive between (j + 1/4) and (j + 5/4) periods after the sync (a sync that leads its frame's first photons
by half a slot is ideal: a frame cannot start before its sync is seen); where they lag by more,
``slot_offset`` adds whole slots (found by comparing a calibration frame's choices, for instance: the link's job,
not this module's).
"""

from dataclasses import dataclass
import math

import numpy as np


__all__ = ["SlotTiming", "calibrate"]


@dataclass(frozen=True)
class SlotTiming:
    """The slot assigner's run-time settings (all integers, as the gateware takes them), and what they came from.

    Attributes
    ----------
    period : int
        Slot period in bins, times 2^``fraction_bits``.
    delay : int
        Bins from a sync edge to the start of its frame.
    gate_start, gate_width : int
        Accepted bins of a slot: ``gate_start <= phase < gate_start + gate_width``.
    fraction_bits : int
    arrival : float
        Measured arrival phase of the photons after the sync, modulo the period, in bins.
    jitter : float
        Measured standard deviation of the photon clicks' arrival, in bins (median-absolute-deviation estimate,
        so that dark counts do not widen it).
    frames : int
        Sync intervals the period was measured over.
    """
    period: int
    delay: int
    gate_start: int
    gate_width: int
    fraction_bits: int
    arrival: float
    jitter: float
    frames: int

    @property
    def period_bins(self):
        return self.period / (1 << self.fraction_bits)


def calibrate(sync, clicks, *, frame_bits, fraction_bits=24, coverage=0.997, slot_offset=0):
    """Slot assigner settings from raw tags (timestamps in bins) of the sync input and of the detectors.

    Parameters
    ----------
    sync : array of int
        Ascending timestamps of sync edges; at least two from consecutive frames.
    clicks : array of int
        Timestamps of detector edges (any channels), after the first sync; photon clicks must dominate the dark
        counts.
    frame_bits : int
        Slots per frame = 2^frame_bits.
    fraction_bits : int
        Fraction bits of the gateware's period setting.
    coverage : float
        Fraction of the photon clicks the gate must hold (0.997: +- 3 standard deviations of a Gaussian).
    slot_offset : int
        Whole slots the photons lag behind their sync beyond one and a quarter (see the module docstring).

    Returns
    -------
    SlotTiming

    Raises
    ------
    ValueError
        With what was wrong, for too few syncs, sync intervals that do not agree (a lost sync or a pause shorter
        than a frame), or too few clicks to see where the photons arrive.
    """
    sync = np.asarray(sync, dtype=np.int64)
    clicks = np.asarray(clicks, dtype=np.int64)
    if sync.ndim != 1 or sync.size < 2:
        raise ValueError(f"calibration needs at least two sync tags, not {sync.size}")
    if np.any(np.diff(sync) <= 0):
        raise ValueError("sync tags must be ascending")
    slots = 1 << frame_bits
    interval = np.diff(sync)
    nominal = np.median(interval)
    # A pause between frames (Alice waiting for her choice memory) makes a longer interval: leave those out. An
    # interval that is not a frame and not a pause means lost or spurious syncs, and nothing can be trusted.
    frame = np.abs(interval - nominal) <= max(2.0, 1e-4 * nominal)
    if np.any(~frame & (interval < nominal)):
        raise ValueError(f"sync intervals disagree: {int(interval[~frame & (interval < nominal)][0])} bins against "
                         f"a median of {nominal:.0f}; a spurious or lost sync, check the sync input's threshold")
    period = interval[frame].mean() / slots
    if period < 1:
        raise ValueError(f"the sync interval of {nominal:.0f} bins is shorter than {slots} slots of one bin: "
                         f"is frame_bits {frame_bits} right?")
    period_fixed = round(period * (1 << fraction_bits))

    # Fold each click onto the slot period, counting from the sync before it.
    after = np.searchsorted(sync, clicks, side="right") - 1
    clicks = clicks[after >= 0]
    if clicks.size < 16:
        raise ValueError(f"only {clicks.size} detector clicks after the first sync; calibration needs photons")
    since = (clicks - sync[after[after >= 0]]).astype(np.float64)
    phase = np.mod(since, period)
    # The photons' arrival: the peak of a one-bin histogram on the circle, refined by the mean of the clicks
    # within a quarter period of it.
    bins = max(1, math.floor(period))
    histogram = np.bincount(np.minimum((phase / period * bins).astype(np.int64), bins - 1), minlength=bins)
    smooth = histogram + np.roll(histogram, 1) + np.roll(histogram, -1)
    peak = (np.argmax(smooth) + 0.5) * period / bins
    offset = np.mod(phase - peak + period / 2, period) - period / 2
    near = np.abs(offset) <= period / 4
    arrival = float(np.mod(peak + offset[near].mean(), period))
    deviation = offset[near] - offset[near].mean()
    jitter = float(1.4826 * np.median(np.abs(deviation)))

    # Put the arrival in the middle of a slot: slot j's photons arrive at sync + delay + (j + 1/2) periods. The
    # delay cannot be negative (a frame cannot start before its sync is seen): photons that arrive less than half
    # a period after the point j periods past the sync stay off centre.
    lag = arrival + (period if arrival < period / 4 else 0.0) + slot_offset * period
    delay = max(0, round(lag - period / 2))

    # The gate: the fewest whole bins of the slot, as the gateware computes them, that hold ``coverage`` of the
    # photon clicks (bins, not a Gaussian fit: with a jitter of a bin or less the clicks fill two or three). The
    # dark-count floor, measured where the slot is long enough to have one, is not photons.
    x = (clicks - sync[after[after >= 0]] - delay) << fraction_bits
    counts = np.bincount((x % period_fixed) >> fraction_bits, minlength=math.ceil(period)).astype(np.float64)
    if counts.size >= 8:
        counts = np.maximum(counts - np.percentile(counts, 25), 0)
    low = high = int(np.argmax(counts))
    held, needed = counts[low], coverage * counts.sum()
    while held < needed:
        below = counts[low - 1] if low > 0 else -1
        above = counts[high + 1] if high + 1 < counts.size else -1
        if below < 0 and above < 0:
            break
        if above >= below:
            high += 1
            held += above
        else:
            low -= 1
            held += below
    return SlotTiming(period=period_fixed, delay=delay, gate_start=low, gate_width=high + 1 - low,
                      fraction_bits=fraction_bits, arrival=arrival, jitter=jitter, frames=int(frame.sum()))
