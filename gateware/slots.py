"""Slot assignment and gating: from time-tagger events to the (frame, slot) of each detection, and squashing.

:class:`SlotAssigner` follows Alice's frames in Bob's time base: each sync edge starts a frame ``delay`` bins later,
and a fixed-point slot period (measured by :func:`qkdlink.host.slots.calibrate`, since the two boards' clocks
differ) divides the frame into slots. A detector edge is kept if it falls inside the gate, a window of each slot
where the photons arrive; the edges kept in one slot make one detection with the pattern of its detectors.
:class:`Squasher` then maps each detection's pattern to one basis and bit.

The definition the assigner implements, with its two real-time rules (the *switch cycle* and *overrun* rules), is
written out in :mod:`qkdlink.sim.slots`, whose :func:`~qkdlink.sim.slots.assign` is its bit-exact model.

How the assigner works in real time, with no division: a *tracker* holds the current frame's phase ``r`` (fixed
point, ``0 <= r < period``) and slot ``s`` at the first bin of each cycle, and advances by one cycle (``P``
bins) a clock, subtracting the period when the slot ends in the cycle. Since a slot lasts at least one cycle, an
edge at bin ``f`` of the cycle has ``x = r + (f << F)`` and lies in slot ``s`` (``x < period``) or ``s + 1``. Sync
edges are seen two cycles before the tracker processes the same cycle, so a frame can start as early as the bin
of its sync; one pending frame start waits for its switch cycle. The open slot's pattern is held until the tracker
leaves the slot, which happens at most once a cycle, so at most one detection comes out a cycle.

Timing: apart from the 32-bit counters and the F-bit fraction of the tracker, no carry runs through more than
18 bits in a cycle. The tracker loop keeps its phase in parts (whole bins as a count of cycles to the slot's end,
fractions a slot end ahead); the edges of a cycle share the fraction of ``r``, so each edge's arithmetic works on
whole bins (17 bits) with one borrow from the fractions computed once a cycle; values derived from the settings
are computed over several register stages; everything else is cut into pipeline stages (``LATENCY``).
"""

from amaranth import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .timetagger import event_layout


__all__ = ["detection_layout", "squashed_layout", "SlotAssigner", "Squasher"]


def detection_layout(*, frame_width, frame_bits, detectors=4):
    """A detection: the frame and slot it lies in, and the detectors that clicked (bit ``c`` for detector ``c``)."""
    return data.StructLayout({
        "frame":   unsigned(frame_width),
        "slot":    unsigned(frame_bits),
        "pattern": unsigned(detectors),
    })


def squashed_layout(*, frame_width, frame_bits):
    """A squashed detection: frame, slot, and the basis (0 = Z, 1 = X) and bit it stands for."""
    return data.StructLayout({
        "frame": unsigned(frame_width),
        "slot":  unsigned(frame_bits),
        "basis": unsigned(1),
        "bit":   unsigned(1),
    })


def _sum_in_two_stages(m, a, b, width):
    """``(a + b) mod 2**width``, registered in two stages (the low half and its carry, then the high half), so that
    no carry runs through more than half the width: for values derived from the settings, which have time."""
    def operand(value):
        if isinstance(value, int):
            return Const(value % (1 << width), width)
        value = Value.cast(value).as_unsigned()
        return Cat(value, Const(0, max(0, width - len(value))))[:width]
    a, b = operand(a), operand(b)
    half = width // 2
    low = Signal(half + 1)
    high_a = Signal(width - half)
    high_b = Signal(width - half)
    total = Signal(width)
    m.d.sync += [
        low.eq(a[:half] + b[:half]),
        high_a.eq(a[half:]),
        high_b.eq(b[half:]),
        total.eq(Cat(low[:half], high_a + high_b + low[half])),
    ]
    return total


def _check_positive(value, name):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TypeError(f"{name} must be a positive integer, not {value!r}")


class SlotAssigner(wiring.Component):
    """Assign detector edges to (frame, slot), gate them, and merge each slot's edges into one detection.

    The definition (frames start ``delay`` bins after their sync, slot ``(t - B0) * 2**F // period``, the gate on
    the phase within the slot, and the switch-cycle and overrun rules) is that of :mod:`qkdlink.sim.slots`.

    Time is the clock: ``i_events`` runs in lockstep with the time-tagger, one clock cycle per tagger cycle, and a
    cycle without a beat is a cycle without edges. The events' ``cycle`` field is not used.

    Parameters
    ----------
    detectors : int
        Detector channels; the tagger's channel ``detectors`` is the sync.
    phases : int
        Bins per clock cycle (P), a power of two.
    frame_bits : int
        A frame has ``2 ** frame_bits`` slots.
    fraction_bits : int
        Fraction bits (F) of the slot period.
    frame_width : int
        Width of the frame numbers (they wrap around).

    Members
    -------
    delay : In(32)
        Bins from a sync edge to the start of its frame.
    period : In(16 + fraction_bits)
        Slot period in bins, times ``2 ** fraction_bits``; at least one clock cycle (``phases << fraction_bits``),
        or the output means nothing.
    gate_start, gate_width : In(16)
        Accepted phases of a slot, in bins: ``gate_start <= phase < gate_start + gate_width``.
    i_events : In(stream.Signature(event_layout(detectors + 1, phases), always_ready=True))
        The time-tagger's events.
    o_detections : Out(stream.Signature(detection_layout(...), always_ready=True))
        One beat per detection, in time order, at most one a cycle; a detection comes out once its slot has ended
        (about ``LATENCY`` cycles after the tracker passes the slot's last bin).
    frames, gated, outside, overrun : Out(32)
        Sync edges seen; detector edges outside the gate; detector edges before the first frame or beyond the
        frame's last slot (or in slot ``s + 1`` of a switch cycle); syncs whose frame never started.

    The settings are registered inside: a change takes effect ``SETTINGS_LATENCY`` cycles later, and they should
    only change while no frame runs.
    """

    #: Clock cycles from an event on ``i_events`` to its effect on ``gated`` and ``outside`` and, if the slot it
    #: falls in ends in the same cycle, its detection on ``o_detections`` (``frames`` and ``overrun`` count sooner).
    LATENCY = 9
    #: Clock cycles from a change of a setting to its use.
    SETTINGS_LATENCY = 2

    def __init__(self, *, detectors=4, phases, frame_bits, fraction_bits=24, frame_width=32):
        _check_positive(detectors, "Detector count")
        if isinstance(phases, bool) or not isinstance(phases, int) or phases < 1 or phases & (phases - 1):
            raise TypeError(f"Phases must be a positive power of two, not {phases!r}")
        _check_positive(frame_bits, "Frame bits")
        if isinstance(fraction_bits, bool) or not isinstance(fraction_bits, int) or fraction_bits < 0:
            raise TypeError(f"Fraction bits must be a non-negative integer, not {fraction_bits!r}")
        _check_positive(frame_width, "Frame width")
        self._detectors = detectors
        self._phases = phases
        self._frame_bits = frame_bits
        self._fraction_bits = fraction_bits
        self._frame_width = frame_width
        super().__init__({
            "delay":        In(32),
            "period":       In(16 + fraction_bits),
            "gate_start":   In(16),
            "gate_width":   In(16),
            "i_events":     In(stream.Signature(event_layout(detectors + 1, phases), always_ready=True)),
            "o_detections": Out(stream.Signature(detection_layout(frame_width=frame_width, frame_bits=frame_bits,
                                                                  detectors=detectors), always_ready=True)),
            "frames":       Out(32),
            "gated":        Out(32),
            "outside":      Out(32),
            "overrun":      Out(32),
        })

    @property
    def detectors(self):
        return self._detectors

    @property
    def phases(self):
        return self._phases

    @property
    def frame_bits(self):
        return self._frame_bits

    @property
    def fraction_bits(self):
        return self._fraction_bits

    @property
    def frame_width(self):
        return self._frame_width

    def elaborate(self, platform):
        m = Module()

        D, P, F, K = self._detectors, self._phases, self._fraction_bits, self._frame_bits
        L = (P - 1).bit_length()                # log2(P): bits of a fine time
        W = 16 + F                              # width of the period and of the tracker's phase

        # Settings, registered (SETTINGS_LATENCY): the subtractions are precomputed once, off the datapath, and
        # the datapath's subtrahends are kept negated (modulo a power of two), so that its comparisons and
        # subtractions are additions of two registers, with no inverter in front of the carry chain. An event
        # presented SETTINGS_LATENCY cycles after a change reaches the sync stage a cycle later, so the values the
        # sync stage uses may take SETTINGS_LATENCY + 1 register stages; the tracker's are used later still.
        period     = Signal(W)
        period_neg = Signal(18)                 # -(the period's whole bins), and -(them + 1), modulo 2**18
        period_not = Signal(18)
        short_bins = Signal(16)                 # whole bins of short = period - one cycle (its fraction: period's)
        gate_start_neg = Signal(17)             # 2**16 - gate_start
        gate_width_neg = Signal(17)             # 2**16 - gate_width
        no_delay   = Signal()
        m.d.sync += [
            period.eq(self.period),
            period_neg.eq(-self.period[F:]),
            period_not.eq(-1 - self.period[F:]),
            short_bins.eq(self.period[F:] - P),
            gate_start_neg.eq((1 << 16) - self.gate_start),
            gate_width_neg.eq((1 << 16) - self.gate_width),
            no_delay.eq(self.delay == 0),
        ]
        gate_end_neg = Signal(18)               # 2**17 - (gate_start + gate_width)
        m.d.sync += gate_end_neg.eq(gate_start_neg + gate_width_neg)
        # (delay - 1) mod P and (delay - 1) >> L, and (delay - 1 + P) >> L (modulo 2**(33 - L)): the sync stage's
        # sum, with the high bits for either carry from its low L bits.
        delay_less = _sum_in_two_stages(m, self.delay, -1, 33)
        delay_low, delay_high = delay_less[:L], delay_less[L:]
        delay_next = _sum_in_two_stages(m, self.delay, P - 1, 33)[L:]
        # Whether the low 16 and the other bits of each are 0, a stage later (see the pending start's wait).
        delay_zero = Signal(4)
        m.d.sync += delay_zero.eq(Cat(delay_high[:16] == 0, delay_high[16:] == 0,
                                      delay_next[:16] == 0, delay_next[16:] == 0))

        # The tracker's constants (see the tracker), from the registered settings in up to two more stages. The
        # tracker first uses them in a switch cycle, at least SETTINGS_LATENCY + 3 cycles after a setting changed:
        # they have settled by then.
        fraction     = period[:F]
        short_low    = short_bins[:L]           # short's whole bins, mod P
        nonzero      = Signal()                 # the period has a fraction
        start_borrow = Signal()                 # start_frac < the period's fraction: the fraction > 2**F / 2
        wait_short   = Signal(signed(17 - L))   # -(short's whole bins >> L): see `wait` in the tracker
        wait_long    = Signal(signed(17 - L))   # wait_short - 1
        m.d.sync += [
            nonzero.eq(fraction != 0),
            start_borrow.eq(fraction[F - 1:].any() & fraction[:max(F - 1, 0)].any()),
            wait_short.eq(-short_bins[L:]),
            wait_long.eq(-1 - short_bins[L:]),
        ]
        start_frac = _sum_in_two_stages(m, ~fraction, 1, F)    # (-period) mod 2**F: d's fraction at a frame start

        # Stage 1: the events, registered.
        hits1 = Signal(D + 1)
        fine1 = Signal(data.ArrayLayout(L, D + 1))
        m.d.sync += [
            hits1.eq(Mux(self.i_events.valid, self.i_events.p.hits, 0)),
            fine1.eq(self.i_events.p.fine),
        ]

        # Stage 2, the sync stage. A sync at bin t_s = n*P + f of cycle n starts its frame at B0 = t_s + delay,
        # whose switch cycle (the one holding B0 - 1) is n + ahead - 1 with ahead = (f + delay + P - 1) >> L, and
        # the frame's first bin in that cycle is f0 = ((f + delay + P - 1) mod P) + 1, in 1..P. `now2` is
        # ahead == 0 (the switch cycle is the one before the sync's), which happens only for f = 0 and no delay.
        # Otherwise sum2 = f + delay - 1 >= 0 gives ahead - 1 = sum2 >> L and f0 = (sum2 mod P) + 1; the carry from
        # the low L bits picks the high bits from the settings, so that no carry runs through the whole sum.
        sync2 = Signal()
        sum2  = Signal(33)
        zero2 = Signal(2)                       # sum2 >> L == 0: its low 16 bits, its other bits
        now2  = Signal()
        low   = delay_low + fine1[D]
        m.d.sync += [
            sync2.eq(hits1[D]),
            sum2.eq(Cat(low[:L], Mux(low[L], delay_next, delay_high))),
            zero2.eq(Mux(low[L], delay_zero[2:], delay_zero[:2])),
            now2.eq((fine1[D] == 0) & no_delay),
        ]
        ahead_less = sum2[L:]                   # ahead - 1

        # The tracker processes cycle n - 2 while the sync stage sees cycle n, so a frame loads into the tracker
        # at the end of the sync stage's cycle switch + 1, and a sync that comes while a start is pending (up to
        # and including that cycle) overruns it. The pending start's wait counts down to the load: switch + 1 -
        # (this cycle), in two halves so that no carry runs through all of it (the high half counts when the low
        # one passes 0); each half's == 0, and `pending_due` (the wait is 0), are kept in registers so that the
        # load decision is short.
        count         = Signal(max(32, self._frame_width))     # syncs seen; the next frame's number
        pending       = Signal()
        wait_lo       = Signal(16)
        wait_hi       = Signal(len(ahead_less) - 16)
        wait_lo_zero  = Signal()
        wait_hi_zero  = Signal()
        pending_due   = Signal()
        pending_first = Signal(L + 1)
        pending_frame = Signal(self._frame_width)
        load          = Signal()
        load_first    = Signal(L + 1)
        load_frame    = Signal(self._frame_width)
        overrun       = Signal(32)
        m.d.comb += [self.frames.eq(count), self.overrun.eq(overrun)]
        with m.If(sync2):
            m.d.sync += count.eq(count + 1)
            with m.If(pending):
                m.d.sync += overrun.eq(overrun + 1)
            with m.If(now2):
                m.d.comb += [
                    load.eq(1),
                    load_first.eq(sum2[:L] + 1),
                    load_frame.eq(count),
                ]
                m.d.sync += pending.eq(0)
            with m.Else():
                m.d.sync += [
                    pending.eq(1),
                    wait_lo.eq(ahead_less[:16]),
                    wait_hi.eq(ahead_less[16:]),
                    wait_lo_zero.eq(zero2[0]),
                    wait_hi_zero.eq(zero2[1]),
                    pending_due.eq(zero2.all()),
                    pending_first.eq(sum2[:L] + 1),
                    pending_frame.eq(count),
                ]
        with m.Elif(pending):
            with m.If(pending_due):
                m.d.comb += [
                    load.eq(1),
                    load_first.eq(pending_first),
                    load_frame.eq(pending_frame),
                ]
                m.d.sync += pending.eq(0)
            with m.Else():
                m.d.sync += [
                    wait_lo.eq(wait_lo - 1),
                    wait_hi.eq(wait_hi - wait_lo_zero),
                    wait_lo_zero.eq(wait_lo == 1),
                    wait_hi_zero.eq(Mux(wait_lo_zero, wait_hi == 1, wait_hi_zero)),
                    pending_due.eq((wait_lo == 1) & wait_hi_zero),
                ]

        # The detector events pass the sync stage and wait two cycles more, to meet the tracker state of their cycle.
        hits_d, fine_d = hits1[:D], Cat(fine1[c] for c in range(D))
        for _ in range(3):
            hits_next, fine_next = Signal(D), Signal(D * L)
            m.d.sync += [hits_next.eq(hits_d), fine_next.eq(fine_d)]
            hits_d, fine_d = hits_next, fine_next
        fine_d = [fine_d[c * L:(c + 1) * L] for c in range(D)]

        # The tracker (stage T): the current frame's phase r and slot s at the first bin of this cycle. In the
        # switch cycle of a new frame, `first` is that frame's first bin in the cycle; the tracker continues the old
        # frame through the cycle and takes up the new one at its end, at phase (P - first) bins, slot 0.
        #
        # The slot ends in this cycle iff d = r - short >= 0; then r becomes d, else r + one cycle. No carry may
        # run through all 16 + F bits in a cycle, so the tracker holds r and d in parts:
        # - d's whole bins, d >> F = wait * P + d_low with 0 <= d_low < P: `wait` counts the cycles up to the
        #   slot's end, from a negative number up to 0, so `ends` is its sign bit. When a slot ends (wait = 0) or a
        #   frame starts, the whole bins become v - short_bins, with v = d_low - d_borrow or P - first - nonzero
        #   (in [-1, P)); as short_bins = -wait_short * P + short_low, `wait` loads wait_short, or wait_long if
        #   v < short_low, and d_low becomes (v - short_low) mod P: no carry beyond L bits;
        # - d's fraction, which changes only when a slot ends (by -period mod 2**F), ahead of time: `d_borrow`, d's
        #   fraction < the period's (the borrow into d's whole bins at the next slot end), and `d_frac`, d's
        #   fraction after that slot end;
        # - for the edges' arithmetic, r's whole bins as (r_high, r_low), r_high counting the cycles since the
        #   slot began, and `r_borrow`, r's fraction < the period's.
        s         = Signal(K + 1)               # saturates at 2**K: beyond the frame
        wait      = Signal(signed(17 - L))
        d_low     = Signal(L)
        d_borrow  = Signal()
        d_frac    = Signal(F)
        r_high    = Signal(16 - L)
        r_low     = Signal(L)
        r_borrow  = Signal()
        frame     = Signal(self._frame_width)
        started   = Signal()
        switch    = Signal()
        first     = Signal(L + 1)
        new_frame = Signal(self._frame_width)
        ends      = Signal()                    # the current slot ends in this cycle
        restart   = Signal()                    # `wait` loads, r_high clears
        wait_next = Signal.like(wait)
        next_frac = d_frac + start_frac         # d_frac - the period's fraction, and its carry: no borrow
        m.d.comb += [
            ends.eq(~wait[-1]),
            restart.eq(switch | ends),
        ]
        with m.If(switch):
            # r = (P - first) << F, so d = r - short has the fraction -period mod 2**F.
            m.d.comb += wait_next.eq(Mux(first + short_low + nonzero > P, wait_long, wait_short))
            m.d.sync += [
                d_low.eq(-first - short_low - nonzero),
                d_borrow.eq(start_borrow),
                d_frac.eq(start_frac << 1),
                r_low.eq(P - first),
                r_borrow.eq(nonzero),
                s.eq(0),
                frame.eq(new_frame),
                started.eq(1),
            ]
        with m.Else():
            # r = d and d = d - short: wait is 0 here, so d's whole bins are d_low.
            m.d.comb += wait_next.eq(Mux(short_low + d_borrow > d_low, wait_long, wait_short))
            with m.If(ends):
                m.d.sync += [
                    d_low.eq(d_low - short_low - d_borrow),
                    d_borrow.eq(nonzero & ~next_frac[F]),
                    d_frac.eq(next_frac),
                    r_low.eq(d_low),
                    r_borrow.eq(d_borrow),
                    s.eq(s + ~s[K]),
                ]
        # A load or a count: one carry chain, then a multiplexer.
        with m.If(restart):
            m.d.sync += [wait.eq(wait_next), r_high.eq(0)]
        with m.Else():
            m.d.sync += [wait.eq(wait + 1), r_high.eq(r_high + 1)]
        m.d.sync += [
            switch.eq(load),
            first.eq(load_first),
            new_frame.eq(load_frame),
        ]

        # Stage X: each edge's x = (t - B0) << F relative to the frame it belongs to, whole bins only: an old-frame
        # edge at bin f has the fraction of r, shared by all edges of the cycle, so x >= period is decided by the
        # whole bins and one borrow from the fractions. An edge at or after the new frame's first bin in a switch
        # cycle belongs to the new frame, at x = f - first bins (less than a cycle, so x < period: its slot 0).
        x_hit     = Signal(D)
        x_new     = Signal(D)
        x_bins    = [Signal(17, name=f"x_bins{c}") for c in range(D)]
        x_period  = Signal(18)                  # -(the period's whole bins, + 1 if r's fraction < the period's)
        x_frame   = Signal(self._frame_width)
        x_slot    = Signal(K)
        x_started = Signal()
        x_switch  = Signal()
        x_moving  = Signal()                    # the tracker leaves its slot at the end of this cycle
        x_beyond  = Signal()                    # the slot is past the frame's last one
        x_last    = Signal()                    # the slot is the frame's last one
        for c in range(D):
            new = switch & (fine_d[c] >= first)
            m.d.sync += [
                x_hit[c].eq(hits_d[c]),
                x_new[c].eq(new),
                x_bins[c].eq(Mux(new, fine_d[c] - first, Cat(r_low, r_high) + fine_d[c])),
            ]
        m.d.sync += [
            x_period.eq(Mux(r_borrow, period_not, period_neg)),
            x_frame.eq(frame),
            x_slot.eq(s[:K]),
            x_started.eq(started),
            x_switch.eq(switch),
            x_moving.eq(switch | ends),
            x_beyond.eq(s[K]),
            x_last.eq(s[:K] == (1 << K) - 1),
        ]

        # Stage Y: slot s or s + 1 (`y_next`, x >= period), and the phase's whole bins, x or x - period.
        y_hit     = Signal(D)
        y_new     = Signal(D)
        y_next    = Signal(D)
        y_phase   = [Signal(16, name=f"y_phase{c}") for c in range(D)]
        y_frame   = Signal(self._frame_width)
        y_slot    = Signal(K)
        y_moving  = Signal()
        y_outside = Signal()                    # an edge in slot s + 1 is outside
        y_none    = Signal()                    # an edge of the old frame is outside
        for c in range(D):
            later = Signal(18, name=f"later{c}")
            m.d.comb += later.eq(x_bins[c] + x_period)
            m.d.sync += [
                y_next[c].eq(~later[17]),
                y_phase[c].eq(Mux(later[17], x_bins[c], later)),
            ]
        m.d.sync += [
            y_hit.eq(x_hit),
            y_new.eq(x_new),
            y_frame.eq(x_frame),
            y_slot.eq(x_slot),
            y_moving.eq(x_moving),
            y_outside.eq(x_switch | x_last | x_beyond),
            y_none.eq(~x_started | x_beyond),
        ]

        # Stage C: classify each edge: outside, gated (phase outside the gate) or accepted. The gate comparisons are
        # the long carry chains here, so the per-edge flags are registered before stage G counts them.
        c_outside  = Signal(D)
        c_gated    = Signal(D)
        c_accepted = Signal(D)
        c_later    = Signal(D)                  # in the next slot: s + 1, or the new frame's slot 0
        c_frame    = Signal(self._frame_width)
        c_slot     = Signal(K)
        c_moving   = Signal()
        for c in range(D):
            outside = y_hit[c] & ~y_new[c] & (y_none | (y_next[c] & y_outside))
            # gate_start <= phase < gate_start + gate_width, from the carries of phase + the negated bounds.
            inside = (y_phase[c] + gate_start_neg)[16] & ~(y_phase[c] + gate_end_neg)[17]
            m.d.sync += [
                c_outside[c].eq(outside),
                c_gated[c].eq(y_hit[c] & ~outside & ~inside),
                c_accepted[c].eq(y_hit[c] & ~outside & inside),
                c_later[c].eq(y_new[c] | y_next[c]),
            ]
        m.d.sync += [
            c_frame.eq(y_frame),
            c_slot.eq(y_slot),
            c_moving.eq(y_moving),
        ]

        # Stage G: count the outside and gated edges; the accepted ones of slot s (or the old frame's slot in a
        # switch cycle) and of the next slot form two patterns.
        g_current = Signal(D)
        g_next    = Signal(D)
        g_gated   = Signal(range(D + 1))
        g_outside = Signal(range(D + 1))
        g_frame   = Signal(self._frame_width)
        g_slot    = Signal(K)
        g_moving  = Signal()
        m.d.sync += [
            g_current.eq(c_accepted & ~c_later),
            g_next.eq(c_accepted & c_later),
            g_gated.eq(sum(c_gated[c] for c in range(D))),
            g_outside.eq(sum(c_outside[c] for c in range(D))),
            g_frame.eq(c_frame),
            g_slot.eq(c_slot),
            g_moving.eq(c_moving),
        ]

        # Stage E: the open slot's pattern; it goes out when the tracker leaves the slot.
        pattern = Signal(D)
        gated   = Signal(32)
        outside = Signal(32)
        closing = pattern | g_current
        with m.If(g_moving):
            m.d.sync += [
                self.o_detections.valid.eq(closing != 0),
                self.o_detections.p.frame.eq(g_frame),
                self.o_detections.p.slot.eq(g_slot),
                self.o_detections.p.pattern.eq(closing),
                pattern.eq(g_next),
            ]
        with m.Else():
            m.d.sync += [
                self.o_detections.valid.eq(0),
                pattern.eq(closing),
            ]
        m.d.sync += [
            gated.eq(gated + g_gated),
            outside.eq(outside + g_outside),
        ]
        m.d.comb += [self.gated.eq(gated), self.outside.eq(outside)]

        return m


class Squasher(wiring.Component):
    """Map each detection's pattern to one basis and bit, with one random word per detection.

    The rule is :func:`qkdlink.host.sifting.squash`: a single click gives its detector's basis and bit; a double
    click within one basis gets that basis and a random bit; clicks in both bases get a random basis and a random
    bit.

    Parameters
    ----------
    frame_width, frame_bits : int
        As for :class:`SlotAssigner`.
    detectors : int
        Must be 4: Z0, Z1, X0, X1.

    Members
    -------
    i_detections : In(stream.Signature(detection_layout(...)))
        Detections with a non-zero pattern.
    i_random : In(stream.Signature(2))
        One word per detection: bit 0 picks the basis and bit 1 the bit where the rule asks for a random one
        (``squash``'s columns 0 and 1).
    o_detections : Out(stream.Signature(squashed_layout(...)))
        One beat per detection, a cycle after both inputs' beats; registered, and its ``ready`` reaches no input
        (the inputs are ready while a skid register is free).
    """

    def __init__(self, *, frame_width, frame_bits, detectors=4):
        _check_positive(frame_width, "Frame width")
        _check_positive(frame_bits, "Frame bits")
        if detectors != 4:
            raise TypeError(f"Squashing needs the four detectors Z0, Z1, X0, X1, not {detectors!r}")
        self._frame_width = frame_width
        self._frame_bits = frame_bits
        super().__init__({
            "i_detections": In(stream.Signature(detection_layout(frame_width=frame_width, frame_bits=frame_bits))),
            "i_random":     In(stream.Signature(2)),
            "o_detections": Out(stream.Signature(squashed_layout(frame_width=frame_width,
                                                                 frame_bits=frame_bits))),
        })

    def elaborate(self, platform):
        m = Module()

        pattern = self.i_detections.p.pattern
        random_basis, random_bit = self.i_random.payload[0], self.i_random.payload[1]
        z, x = pattern[0:2].any(), pattern[2:4].any()
        both = z & x
        basis = Mux(both, random_basis, x)
        lanes = Mux(basis, pattern[2:4], pattern[0:2])
        bit = Mux(both | (lanes == 0b11), random_bit, lanes[1])

        squashed = Signal.like(self.o_detections.p)
        m.d.comb += [
            squashed.frame.eq(self.i_detections.p.frame),
            squashed.slot.eq(self.i_detections.p.slot),
            squashed.basis.eq(basis),
            squashed.bit.eq(bit),
        ]

        # An output register with a skid register behind it: the inputs are taken whenever the skid register is
        # empty, so that `o_detections.ready` drives only these two registers and no path runs from the consumer's
        # ready through the join to the producers. A beat in the skid register goes out first. `o_detections.ready`
        # comes last into each register's logic (`advance`), since it may come late; the payload registers have no
        # reset, which would have to be merged into their enables.
        payload    = Signal(self.o_detections.p.shape(), reset_less=True)
        skid       = Signal(self.o_detections.p.shape(), reset_less=True)
        skid_valid = Signal()
        arrive     = self.i_detections.valid & self.i_random.valid & ~skid_valid
        waiting    = skid_valid | arrive        # a beat for the output register
        advance    = ~self.o_detections.valid | self.o_detections.ready
        m.d.comb += [
            self.i_detections.ready.eq(arrive),
            self.i_random.ready.eq(arrive),
            self.o_detections.p.eq(payload),
        ]
        m.d.sync += [
            self.o_detections.valid.eq(Mux(advance, waiting, self.o_detections.valid)),
            skid_valid.eq(~advance & waiting),
        ]
        with m.If(advance):
            m.d.sync += payload.eq(Mux(skid_valid, skid, squashed))
        with m.Elif(arrive):
            m.d.sync += skid.eq(squashed)

        return m
