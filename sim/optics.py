"""The optical bench of decoy-state BB84, simulated: Alice's weak coherent source, the fibre, Bob's passive-basis
receiver with four threshold detectors, and eavesdroppers.

:func:`run` gives, for a block of pulses, the slots where Bob registered a click with Alice's choices there and
Bob's raw detector pattern; :func:`slot_events` gives every slot's modulator drive and detector pulse times, the
stream a board sees; :func:`gains` gives the expected per-slot probabilities in closed form.

The model
---------
Conventions: basis 0 is Z (the key basis), 1 is X; detector ``d = 2 * basis + bit``, so a slot's pattern has bit 0 =
Z0, bit 1 = Z1, bit 2 = X0, bit 3 = X1 (as in :mod:`qkdlink.host.sifting`). Slots are numbered globally; frame
``slot // frame_slots``.

- **Source** (Alice). Per slot, independently: basis Z with probability ``p_z``, a uniform bit, intensity index k
  with probability ``probabilities[k]``. The pulse is a phase-randomised weak coherent state, so its photon number
  is Poisson(mu_k) (Lo, Ma, Chen, PRL 94 230504, 2005). The three-intensity protocol is that of Lim, Curty, Walenta,
  Xu, Zbinden, PRA 89 022307 (2014), "Lim et al." below; any number of strictly decreasing intensities works here.
- **Fibre**. Transmittance ``10 ** (-alpha * L / 10)`` (Lim et al. Sec. IV, alpha = 0.2 dB/km).
- **Receiver** (Bob). The overall detection efficiency ``efficiency`` (optics and detectors, all four detectors
  alike) acts on every photon before the basis splitter, the usual model (Lim et al.'s eta_Bob). A passive beam
  splitter sends each photon to the Z arm with probability ``p_z`` and to the X arm otherwise; in the arm of the
  basis the light was prepared in, a photon reaches the detector of the prepared bit with probability
  ``1 - misalignment`` and the other one with ``misalignment`` (Lim et al.'s e_mis); in the other arm it reaches
  either detector with probability 1/2. Each detector also fires in a slot with the dark-count probability
  ``dark_count``, independently. For a coherent state this splits the photon number into independent Poisson
  numbers per detector, so given Alice's choices the four detectors click independently, detector d with
  probability ``1 - (1 - p_dc) exp(-lambda_d)``, ``lambda_d`` the mean number of photons that reach it (Lim et al.
  use the two-detector, active-basis form ``1 - (1 - 2 p_dc) exp(-eta mu)`` of the same model). Only when an
  eavesdropper forwards Fock states (PNS) are the clicks correlated; the bench then uses the exact multinomial
  expression.
- **Dead time**: after a registered click a detector ignores the next ``dead_time`` slots; clicks that would have
  happened then are lost and do not extend the dead time (non-paralysable, as a gated or actively quenched APD).
  Two causes of a click in one slot (photon, dark count, afterpulse) make one click.
- **Afterpulsing**: every registered click (afterpulses included: an afterpulse is an avalanche that fills the
  traps as any other) triggers, with probability ``afterpulse``, one more click of the same detector at slot
  ``s + dead_time + G``, G >= 1 geometric with mean ``afterpulse_delay``: one family of traps releasing its carriers
  with an exponentially decaying probability once the detector re-arms, the classic model (measured decays need
  several families or a continuous spectrum of them, closer to a power law: Korzh et al., arXiv:1411.0653, J. Mod.
  Opt. 2015; one geometric delay is our simplification). Like any click an afterpulse registers only if the
  detector is live, and it lands in a slot whatever Alice sent there. Lim et al. count afterpulses to first order,
  a rate D (1 + p_ap), with each intensity's own D; the cascade here gives D / (1 - p_ap) in all when the detector
  is rarely dead, spread over the intensities as Alice sends them, so afterpulses raise the weak intensities'
  yields and QBER more than the signal's.
- **Defaults**: Lim et al. Sec. IV: eta_Bob = 0.1, p_dc = 6e-7 per detector per slot, p_ap = 0.04, e_mis = 5e-3,
  alpha = 0.2 dB/km, mu3 = 2e-4. Lim et al. optimise mu1, mu2, p_mu and the basis bias numerically and do not
  tabulate them; ours (mu = 0.5, 0.1, 2e-4 with 0.7, 0.2, 0.1 and p_z = 0.9 on both sides) are typical of such
  optima at tens of km and satisfy their condition mu1 > mu2 + mu3. Lim et al. do not model time: the slot rate
  (100 MHz), dead time (10 slots, 100 ns), afterpulse delay (mean 10 slots after the dead time) and jitter (0.1 ns
  rms) are ours, of the order of fast InGaAs avalanche photodiodes.

Eavesdroppers (both act on every pulse at Alice's output):

- :class:`InterceptResend`: Eve intercepts each pulse with probability ``fraction``. She measures a non-empty one
  with an ideal detector in a random basis (her result is Alice's bit if the bases agree, a uniform bit otherwise,
  the outcome of a threshold-detector pair whose double clicks she resolves at random) and sends into the fibre a
  new coherent pulse of Alice's intensity prepared in her basis and result. An empty pulse gives her nothing and
  she sends nothing. In matched bases this makes half the intercepted detections errors at random: a QBER of 25 %
  under a full attack. Sending Alice's intensity is a simplification that favours Eve (she cannot know it); the
  gains still drop by the empty pulses she cannot resend.
- :class:`PhotonNumberSplitting` (Brassard, Lütkenhaus, Mor, Sanders, PRL 85 1330, 2000): Eve measures the photon
  number n without disturbing the polarisation; she blocks n = 0, keeps one photon of every n >= 2 pulse and sends
  the other n - 1 to Bob through a lossless channel, and of the single-photon pulses she blocks a fraction
  ``block_single`` and forwards the rest losslessly. By default the fraction is the one that keeps the signal
  intensity's gain equal to the honest channel's, so the QBER and the signal yield look honest and only the decoy
  and weak intensities' yields betray her: what the decoy-state method detects.

How :func:`run` simulates
-------------------------
Given the slot's hidden state (Alice's choices and Eve's, Eve's measurement outcomes, the photon number where Eve
needs it) the per-slot process is a finite mixture of "branches", each with a closed-form distribution of the
16 detector patterns; slots are independent and identically distributed. So :func:`run` draws only the slots that
click: the gaps between them are geometric with the total click probability p (exact, by memorylessness), and for
each such slot it draws Alice's choices and the pattern jointly, conditioned on at least one click (Bayes: a joint
table of choice and non-empty pattern). Dead time and afterpulses then act per detector, in time order, on these
candidate clicks; this is exact because the candidates are independent from slot to slot. A slot that had no
candidate click but gets an afterpulse draws Alice's choices conditioned on "no click" (Bayes again). The work is
proportional to the number of clicks, not of pulses, and runs in chunks of about 2^20 clicks so memory stays
bounded; dead time and afterpulse state carry over from chunk to chunk.
"""

import heapq
import math
import numbers
from dataclasses import dataclass, field

import numpy as np

from ..host.sifting import squash
from ..numbering import NOT_SENT


__all__ = ["Z", "X", "PHOTON", "DARK", "AFTERPULSE", "Source", "Fibre", "Receiver", "InterceptResend",
           "PhotonNumberSplitting", "OpticalBench", "Record", "SlotEvents", "Gains", "run", "slot_events", "gains",
           "sifted_key_probability", "register_clicks", "transmittance", "pns_block_fraction"]


Z, X = 0, 1

# The causes of a click that :func:`slot_events` reports.
PHOTON, DARK, AFTERPULSE = 0, 1, 2

_DETECTORS = 4
_PATTERNS = 1 << _DETECTORS
# _BITS[S, d] is 1 if detector d clicks in pattern S.
_BITS = ((np.arange(_PATTERNS)[:, None] >> np.arange(_DETECTORS)) & 1).astype(bool)

# About this many candidate clicks make one chunk of run(): big enough that numpy's per-call overhead vanishes,
# small enough that a chunk's arrays (some tens of bytes a click) stay in the tens of megabytes.
_CHUNK_CLICKS = 1 << 20

# Jacobi rounds of the dead-time resolution before it falls back to a sequential pass (see _resolve).
_JACOBI_ROUNDS = 48

# PNS branches: photon numbers are followed until the Poisson tail is below this; the tail joins the last branch.
_POISSON_TAIL = 1e-18


def _real(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, not {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, not {value!r}")
    return value


def _integer(value, name, minimum=0):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer of at least {minimum}, not {value!r}")
    return int(value)


def _probability(value, name, *, low_open=False, high_open=False):
    value = _real(value, name)
    if value < 0 or value > 1 or (low_open and value == 0) or (high_open and value == 1):
        interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
        raise ValueError(f"{name} must lie in {interval}, not {value!r}")
    return value


@dataclass(frozen=True)
class Source:
    """Alice's weak coherent source and her random choices.

    Attributes
    ----------
    intensities : tuple of float
        Mean photon numbers, strictly decreasing and non-negative: signal, decoy, weakest (Lim et al.'s mu1, mu2,
        mu3). The intensity index of a slot counts from 0 in this order.
    probabilities : tuple of float
        Probability of each intensity; they sum to 1.
    p_z : float
        Probability of the Z (key) basis, in (0, 1).
    """
    intensities: tuple = (0.5, 0.1, 2e-4)
    probabilities: tuple = (0.7, 0.2, 0.1)
    p_z: float = 0.9

    def __post_init__(self):
        try:
            intensities = tuple(self.intensities)
            probabilities = tuple(self.probabilities)
        except TypeError:
            raise ValueError(f"intensities and probabilities must be sequences, not {self.intensities!r} and "
                             f"{self.probabilities!r}") from None
        if not 1 <= len(intensities) <= 255:
            raise ValueError(f"a source needs 1 to 255 intensities, not {len(intensities)}")
        intensities = tuple(_real(mu, "an intensity") for mu in intensities)
        if intensities[-1] < 0:
            raise ValueError(f"intensities must be non-negative, not {intensities!r}")
        if any(a <= b for a, b in zip(intensities, intensities[1:])):
            raise ValueError(f"intensities must be strictly decreasing (signal first), not {intensities!r}")
        if len(probabilities) != len(intensities):
            raise ValueError(f"{len(intensities)} intensities need as many probabilities, not {probabilities!r}")
        probabilities = tuple(_probability(p, "an intensity probability") for p in probabilities)
        if abs(math.fsum(probabilities) - 1) > 1e-9:
            raise ValueError(f"intensity probabilities must sum to 1, not {math.fsum(probabilities)!r} "
                             f"({probabilities!r})")
        object.__setattr__(self, "intensities", intensities)
        object.__setattr__(self, "probabilities", probabilities)
        object.__setattr__(self, "p_z", _probability(self.p_z, "the source's p_z", low_open=True, high_open=True))


@dataclass(frozen=True)
class Fibre:
    """The quantum channel: ``length_km`` of fibre with ``attenuation_db_per_km``."""
    length_km: float = 25.0
    attenuation_db_per_km: float = 0.2

    def __post_init__(self):
        length = _real(self.length_km, "the fibre length")
        if length < 0:
            raise ValueError(f"the fibre length must be at least 0 km, not {length!r}")
        attenuation = _real(self.attenuation_db_per_km, "the fibre attenuation")
        if attenuation < 0:
            raise ValueError(f"the fibre attenuation must be at least 0 dB/km, not {attenuation!r}")
        object.__setattr__(self, "length_km", length)
        object.__setattr__(self, "attenuation_db_per_km", attenuation)


def transmittance(fibre):
    """The fibre's transmittance, ``10 ** (-alpha L / 10)``."""
    return 10 ** (-fibre.attenuation_db_per_km * fibre.length_km / 10)


@dataclass(frozen=True)
class Receiver:
    """Bob's passive-basis receiver with four threshold detectors Z0, Z1, X0, X1.

    Attributes
    ----------
    p_z : float
        Probability that the basis splitter sends a photon to the Z arm, in (0, 1).
    efficiency : float
        Overall detection efficiency (optics and detector), in (0, 1].
    dark_count : float
        Probability of a dark count per detector per slot, in [0, 1).
    misalignment : float
        Probability that a photon of the matching basis reaches the wrong detector, in [0, 1/2].
    dead_time : int
        Slots a detector stays blind after each registered click (non-paralysable), >= 0.
    afterpulse : float
        Probability that a registered click causes an afterpulse, in [0, 1).
    afterpulse_delay : float
        Mean delay of an afterpulse in slots after the dead time ends, >= 1 (geometric).
    jitter_ns : float
        Standard deviation of a photon click's time about the middle of its slot, for :func:`slot_events`.
    """
    p_z: float = 0.9
    efficiency: float = 0.1
    dark_count: float = 6e-7
    misalignment: float = 5e-3
    dead_time: int = 10
    afterpulse: float = 0.04
    afterpulse_delay: float = 10.0
    jitter_ns: float = 0.1

    def __post_init__(self):
        object.__setattr__(self, "p_z", _probability(self.p_z, "the receiver's p_z", low_open=True,
                                                     high_open=True))
        object.__setattr__(self, "efficiency", _probability(self.efficiency, "the detection efficiency",
                                                            low_open=True))
        object.__setattr__(self, "dark_count", _probability(self.dark_count, "the dark-count probability",
                                                            high_open=True))
        misalignment = _real(self.misalignment, "the misalignment")
        if not 0 <= misalignment <= 0.5:
            raise ValueError(f"the misalignment must lie in [0, 0.5], not {misalignment!r}")
        object.__setattr__(self, "misalignment", misalignment)
        object.__setattr__(self, "dead_time", _integer(self.dead_time, "the dead time (in slots)"))
        object.__setattr__(self, "afterpulse", _probability(self.afterpulse, "the afterpulse probability",
                                                            high_open=True))
        delay = _real(self.afterpulse_delay, "the mean afterpulse delay")
        if delay < 1:
            raise ValueError(f"the mean afterpulse delay must be at least 1 slot, not {delay!r}")
        object.__setattr__(self, "afterpulse_delay", delay)
        jitter = _real(self.jitter_ns, "the timing jitter")
        if jitter < 0:
            raise ValueError(f"the timing jitter must be at least 0 ns, not {jitter!r}")
        object.__setattr__(self, "jitter_ns", jitter)


@dataclass(frozen=True)
class InterceptResend:
    """Intercept-resend on a ``fraction`` of the pulses (see the module's description)."""
    fraction: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "fraction", _probability(self.fraction, "the intercepted fraction"))


@dataclass(frozen=True)
class PhotonNumberSplitting:
    """Photon-number splitting with a lossless channel (see the module's description).

    ``block_single`` is the fraction of single-photon pulses Eve blocks; ``None`` picks the one that keeps the
    signal intensity's gain at its honest value (:func:`pns_block_fraction`).
    """
    block_single: float | None = None

    def __post_init__(self):
        if self.block_single is not None:
            object.__setattr__(self, "block_single",
                               _probability(self.block_single, "the blocked single-photon fraction"))


@dataclass(frozen=True)
class OpticalBench:
    """Everything between Alice's random choices and Bob's detector pulses.

    ``slot_rate_hz`` sets the slot period of :func:`slot_events`; ``frame_slots`` the frame length (frame =
    slot // frame_slots).
    """
    source: Source = field(default_factory=Source)
    fibre: Fibre = field(default_factory=Fibre)
    receiver: Receiver = field(default_factory=Receiver)
    eavesdropper: InterceptResend | PhotonNumberSplitting | None = None
    slot_rate_hz: float = 100e6
    frame_slots: int = 1 << 18

    def __post_init__(self):
        for name, kind in (("source", Source), ("fibre", Fibre), ("receiver", Receiver)):
            if not isinstance(getattr(self, name), kind):
                raise ValueError(f"the bench's {name} must be a {kind.__name__}, not {getattr(self, name)!r}")
        if self.eavesdropper is not None and not isinstance(self.eavesdropper,
                                                            (InterceptResend, PhotonNumberSplitting)):
            raise ValueError(f"the eavesdropper must be None, InterceptResend or PhotonNumberSplitting, "
                             f"not {self.eavesdropper!r}")
        rate = _real(self.slot_rate_hz, "the slot rate")
        if rate <= 0:
            raise ValueError(f"the slot rate must be positive, not {rate!r}")
        object.__setattr__(self, "slot_rate_hz", rate)
        object.__setattr__(self, "frame_slots", _integer(self.frame_slots, "frame_slots", 1))

    @property
    def slot_ns(self):
        """The slot period in nanoseconds."""
        return 1e9 / self.slot_rate_hz


@dataclass(frozen=True, eq=False)
class Record:
    """One block of pulses as the bench saw it: the slots where Bob registered at least one click.

    Attributes
    ----------
    pulses : int
        Slots Alice emitted in the block (``first_slot`` .. ``first_slot + pulses - 1``).
    slot : numpy.ndarray of int64
        Ascending global slot numbers of the detections.
    alice_basis, alice_bit, alice_intensity : numpy.ndarray of uint8
        Alice's choices in those slots (basis 0 = Z, 1 = X; intensity index).
    pattern : numpy.ndarray of uint8
        Bob's raw detector mask in those slots, bit 0 = Z0, 1 = Z1, 2 = X0, 3 = X1, never 0.
    frame_slots : int
        Slots per frame.
    """
    pulses: int
    slot: np.ndarray
    alice_basis: np.ndarray
    alice_bit: np.ndarray
    alice_intensity: np.ndarray
    pattern: np.ndarray
    frame_slots: int = 1 << 18

    def __len__(self):
        return self.slot.size

    @property
    def frame(self):
        """The frame of each detection."""
        return self.slot // self.frame_slots


@dataclass(frozen=True, eq=False)
class SlotEvents:
    """Every slot of a short run as a board sees it.

    Attributes
    ----------
    first_slot : int
        Global number of the first slot; slot ``first_slot + i`` spans ``[s * slot_ns, (s + 1) * slot_ns)``.
    slot_ns : float
        Slot period.
    alice_basis, alice_bit, alice_intensity : numpy.ndarray of uint8
        What Alice's modulators are driven with, one entry per slot.
    time_ns : numpy.ndarray of float64
        Ascending times of Bob's detector pulses since the start of slot 0. A photon click lies at the middle of
        its slot plus Gaussian jitter (the fibre delay is absorbed in Bob's slot clock); a dark count or an
        afterpulse anywhere in its slot, uniformly.
    detector : numpy.ndarray of uint8
        Which detector fired (0 = Z0, 1 = Z1, 2 = X0, 3 = X1).
    cause : numpy.ndarray of uint8
        :data:`PHOTON`, :data:`DARK` or :data:`AFTERPULSE` (a photon wins when causes coincide).
    slot : numpy.ndarray of int64
        The slot each pulse belongs to: what an ideal slot assignment recovers from ``time_ns``.
    frame_slots : int
        Slots per frame.
    """
    first_slot: int
    slot_ns: float
    alice_basis: np.ndarray
    alice_bit: np.ndarray
    alice_intensity: np.ndarray
    time_ns: np.ndarray
    detector: np.ndarray
    cause: np.ndarray
    slot: np.ndarray
    frame_slots: int = 1 << 18

    def patterns(self):
        """The detector mask of every slot (0 where nothing registered), as :attr:`Record.pattern` has them."""
        pattern = np.zeros(self.alice_basis.size, dtype=np.uint8)
        np.bitwise_or.at(pattern, self.slot - self.first_slot, (1 << self.detector).astype(np.uint8))
        return pattern


@dataclass(frozen=True, eq=False)
class Gains:
    """Closed-form expectations per slot, per intensity, without dead time and afterpulsing.

    Attributes
    ----------
    intensities : tuple of float
    gain : numpy.ndarray, shape (K,)
        ``gain[k]``: probability that at least one detector clicks in a slot of intensity k (the overall gain Q_k).
    sifted : numpy.ndarray, shape (2, K)
        ``sifted[b, k]``: probability that in a slot of intensity k Alice chose basis b and Bob's squashed
        detection (:func:`qkdlink.host.sifting.squash`) is in basis b too.
    error : numpy.ndarray, shape (2, K)
        ``error[b, k]``: probability that the squashed bit differs from Alice's, given such a matched-basis
        detection (the matched-basis QBER E_k in basis b; nan where ``sifted`` is 0).
    """
    intensities: tuple
    gain: np.ndarray
    sifted: np.ndarray
    error: np.ndarray

    @property
    def qber(self):
        """Matched-basis QBER per intensity, both bases together."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.nansum(self.sifted * np.nan_to_num(self.error), axis=0) / self.sifted.sum(axis=0)


def _routing(receiver, basis, bit):
    """Probabilities that one photon prepared in (basis, bit) and entering Bob's receiver reaches each detector."""
    route = np.zeros(_DETECTORS)
    for arm, share in ((Z, receiver.p_z), (X, 1 - receiver.p_z)):
        if arm == basis:
            route[2 * arm + bit] = share * (1 - receiver.misalignment)
            route[2 * arm + 1 - bit] = share * receiver.misalignment
        else:
            route[2 * arm:2 * arm + 2] = share / 2
    return route * receiver.efficiency


def _poisson(mu, limit=_POISSON_TAIL):
    """Poisson(mu) probabilities of 0, 1, ..., n_max, the tail beyond n_max (below ``limit``) added to the last.

    In log space, so that bright pulses (where e^-mu underflows) work too.
    """
    probabilities = []
    n = 0
    while True:
        probabilities.append(math.exp(-mu + n * math.log(mu) - math.lgamma(n + 1)) if mu > 0 else float(n == 0))
        if n >= mu and (probabilities[-1] < limit * 1e-3 or 1 - math.fsum(probabilities) < limit):
            break
        n += 1
    probabilities[-1] += max(0.0, 1 - math.fsum(probabilities))
    return probabilities


# The subset Moebius matrix: if h[T] = P(click set within T), then P(click set == S) = sum_T h[T] _MOEBIUS[T, S].
_MOEBIUS = np.zeros((_PATTERNS, _PATTERNS))
for _s in range(_PATTERNS):
    for _t in range(_PATTERNS):
        if _t & ~_s == 0:
            _MOEBIUS[_t, _s] = (-1) ** bin(_s & ~_t).count("1")


class _Model:
    """The bench as a finite mixture of branches over Alice's choices, with closed-form pattern distributions.

    Choice ``c`` is (basis, bit, intensity) with ``c = (2 * basis + bit) * K + k``. A branch is one way the slot
    can go given the choice (what Eve does and sees, the photon number she forwards); ``weight`` is its
    probability given the choice. Coherent branches send a coherent state with mean photon numbers ``lam`` per
    detector (clicks independent); Fock branches send ``photons`` photons, each reaching detector d with
    probability ``route[d]`` (clicks correlated).
    """

    def __init__(self, bench):
        source, receiver = bench.source, bench.receiver
        intensities = source.intensities
        self.intensity_count = count = len(intensities)
        choices = [(basis, bit, k) for basis in (Z, X) for bit in (0, 1) for k in range(count)]
        self.choice_basis = np.array([c[0] for c in choices], dtype=np.uint8)
        self.choice_bit = np.array([c[1] for c in choices], dtype=np.uint8)
        self.choice_intensity = np.array([c[2] for c in choices], dtype=np.uint8)
        basis_probability = np.where(self.choice_basis == Z, source.p_z, 1 - source.p_z)
        self.choice_probability = basis_probability / 2 * np.array(source.probabilities)[self.choice_intensity]

        eta_channel = transmittance(bench.fibre)
        eve = bench.eavesdropper
        block = pns_block_fraction(bench) if isinstance(eve, PhotonNumberSplitting) else None
        choice_index, weights, lams, photons, routes = [], [], [], [], []

        def coherent(c, weight, mean, basis, bit):
            choice_index.append(c)
            weights.append(weight)
            lams.append(mean * _routing(receiver, basis, bit))
            photons.append(-1)
            routes.append(np.zeros(_DETECTORS))

        def fock(c, weight, n, basis, bit):
            choice_index.append(c)
            weights.append(weight)
            lams.append(np.zeros(_DETECTORS))
            photons.append(n)
            routes.append(_routing(receiver, basis, bit))

        for c, (basis, bit, k) in enumerate(choices):
            mu = intensities[k]
            if eve is None:
                coherent(c, 1.0, mu * eta_channel, basis, bit)
            elif isinstance(eve, InterceptResend):
                f, empty = eve.fraction, math.exp(-mu)
                coherent(c, 1 - f, mu * eta_channel, basis, bit)
                coherent(c, f * empty, 0.0, basis, bit)
                coherent(c, f * (1 - empty) / 2, mu * eta_channel, basis, bit)      # Eve's basis matches
                for eve_bit in (0, 1):                                               # it does not
                    coherent(c, f * (1 - empty) / 4, mu * eta_channel, 1 - basis, eve_bit)
            else:
                poisson = _poisson(mu)
                vacuum = poisson[0] + (block * poisson[1] if len(poisson) > 1 else 0.0)
                coherent(c, vacuum, 0.0, basis, bit)
                for n, probability in enumerate(poisson[1:], start=1):
                    forwarded = probability * (1 - block) if n == 1 else probability
                    fock(c, forwarded, max(n - 1, 1), basis, bit)

        self.branch_choice = np.array(choice_index)
        self.branch_weight = np.array(weights)
        lam = np.array(lams)
        photons = np.array(photons)
        route = np.array(routes)
        no_dark = math.log1p(-receiver.dark_count)

        # Pattern probabilities per branch, all 16 patterns. Coherent: a product over independent detectors.
        click = -np.expm1(no_dark - lam)                                   # (J, 4)
        pattern = np.where(_BITS[None, :, :], click[:, None, :], 1 - click[:, None, :]).prod(axis=2)
        any_click = -np.expm1(_DETECTORS * no_dark - lam.sum(axis=1))
        is_fock = photons >= 0
        if is_fock.any():
            # Fock: P(click set within T) = (1 - p_dc)^|not T| (1 - sum_{d not in T} route_d)^n, then Moebius.
            n = photons[is_fock][:, None].astype(float)
            outside = ~_BITS                                               # detectors outside T, per T
            miss = 1 - route[is_fock] @ outside.T                          # (F, 16)
            within = np.exp(outside.sum(axis=1) * no_dark) * np.power(np.clip(miss, 0, 1), n)
            pattern[is_fock] = np.clip(within @ _MOEBIUS, 0, 1)
            any_click[is_fock] = -np.expm1(_DETECTORS * no_dark
                                           + n[:, 0] * np.log1p(-np.minimum(route[is_fock].sum(axis=1), 1)))
        self.branch_pattern = pattern
        self.branch_click = any_click

        choice_count = len(choices)
        weighted = self.branch_weight[:, None] * pattern
        per_choice = np.zeros((choice_count, _PATTERNS))
        np.add.at(per_choice, self.branch_choice, weighted)
        self.choice_pattern = per_choice                                   # P(pattern | choice)
        self.choice_click = np.bincount(self.branch_choice, self.branch_weight * any_click, choice_count)
        self.click_probability = float(np.dot(self.choice_probability, self.choice_click))

        # Joint draw of (choice, non-empty pattern) given a click: one uniform and one binary search per slot.
        joint = (self.choice_probability[:, None] * per_choice[:, 1:]).ravel()
        self.joint_cumulative = _cumulative(joint)
        self.no_click_cumulative = _cumulative(self.choice_probability * (1 - self.choice_click))


def _cumulative(weights):
    cumulative = np.cumsum(weights)
    if cumulative.size and cumulative[-1] > 0:
        cumulative /= cumulative[-1]
        cumulative[-1] = 1.0
    return cumulative


def _draw(cumulative, count, rng):
    return np.minimum(np.searchsorted(cumulative, rng.random(count), side="right"), cumulative.size - 1)


def pns_block_fraction(bench):
    """Fraction of single-photon pulses a :class:`PhotonNumberSplitting` Eve blocks on ``bench``.

    Her own ``block_single`` if she set one; otherwise the fraction that makes the signal intensity's gain equal to
    the honest channel's (the gain is linear in it). Raises :class:`ValueError` if no fraction in [0, 1] does:
    at short distance forwarding every multi-photon pulse losslessly already gives more than the honest gain, at
    long distance even forwarding every single photon gives less.
    """
    eve = bench.eavesdropper
    if not isinstance(eve, PhotonNumberSplitting):
        raise ValueError(f"the bench's eavesdropper is not photon-number splitting but {eve!r}")
    if eve.block_single is not None:
        return eve.block_single
    honest = gains(OpticalBench(bench.source, bench.fibre, bench.receiver)).gain[0]
    blocked, kept = (gains(OpticalBench(bench.source, bench.fibre, bench.receiver,
                                        PhotonNumberSplitting(fraction))).gain[0] for fraction in (1.0, 0.0))
    fraction = (kept - honest) / (kept - blocked)
    if not 0 <= fraction <= 1:
        raise ValueError(f"photon-number splitting cannot keep the signal gain {honest:.4g} over "
                         f"{bench.fibre.length_km} km: it would have to block a fraction {fraction:.4g} of the "
                         f"single-photon pulses (lossless forwarding gives {kept:.4g} to {blocked:.4g})")
    return fraction


# _SQUASH[S, b, v]: probability that Bob's squashing turns pattern S into basis b and bit v, from the host's own
# squash() over every choice of its two random bits.
def _squash_table():
    table = np.zeros((_PATTERNS, 2, 2))
    patterns = np.repeat(np.arange(1, _PATTERNS, dtype=np.uint8), 4)
    random_bits = np.tile(np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.uint8), (_PATTERNS - 1, 1))
    basis, bit = squash(patterns, random_bits)
    np.add.at(table, (patterns, basis, bit), 0.25)
    return table


_SQUASH = _squash_table()


def gains(bench):
    """Closed-form per-slot probabilities per intensity: the gain Q_k and the matched-basis QBER E_k.

    Exact for the model without dead time and afterpulsing (both left out), eavesdropper included. For tests and
    for the expected figures of finite-key estimates.

    Returns
    -------
    Gains
    """
    model = _Model(bench)
    count = model.intensity_count
    outcome = model.choice_pattern @ _SQUASH.reshape(_PATTERNS, 4)                  # (C, basis * 2 + bit)
    # Probability of each choice given its intensity: its basis's times 1/2 for the bit.
    share = np.where(model.choice_basis == Z, bench.source.p_z, 1 - bench.source.p_z) / 2
    gain = np.bincount(model.choice_intensity, share * model.choice_click, count)
    sifted = np.zeros((2, count))
    wrong = np.zeros((2, count))
    for c in range(model.choice_basis.size):
        basis, bit, k = model.choice_basis[c], model.choice_bit[c], model.choice_intensity[c]
        sifted[basis, k] += share[c] * (outcome[c, 2 * basis] + outcome[c, 2 * basis + 1])
        wrong[basis, k] += share[c] * outcome[c, 2 * basis + 1 - bit]
    with np.errstate(invalid="ignore", divide="ignore"):
        error = np.where(sifted > 0, wrong / sifted, np.nan)
    return Gains(intensities=bench.source.intensities, gain=gain, sifted=sifted, error=error)


def sifted_key_probability(bench):
    """Expected sifted Z-basis (raw key) bits per pulse, from :func:`gains` (no dead time or afterpulsing)."""
    result = gains(bench)
    return float(np.dot(bench.source.probabilities, result.sifted[Z]))


def _resolve(times, parent, dead, live_from):
    """Which candidate clicks of one detector register, given its dead time.

    ``times`` is ascending (ties allowed: the earlier entry wins); ``parent[i]`` is the position of the click whose
    afterpulse candidate ``i`` is (``-1`` for a photon or dark-count candidate, or an afterpulse whose parent lay in
    an earlier chunk): an afterpulse candidate exists only if its parent registered. The detector is live from slot
    ``live_from``. A candidate registers iff it exists and lies more than ``dead`` slots after the last registered
    click.

    The rule is sequential, but almost every candidate is isolated: no other candidate within ``dead`` slots before
    it and not an afterpulse, so it registers iff it is past ``live_from``. The rest (clusters and afterpulses) are
    solved by Jacobi iteration of the rule; each round fixes at least the next click of every dependency chain
    (clicks depend only on earlier ones, so the fixed point is unique and is the sequential answer), and chains are
    short when clicks are sparse. Dense clicks fall back to a sequential pass over the clustered candidates.
    """
    registered = times >= live_from
    if times.size == 0:
        return registered
    close = np.diff(times) <= dead
    involved = parent >= 0
    involved[1:] |= close
    involved[:-1] |= close
    index = np.flatnonzero(involved)
    if index.size == 0:
        return registered
    t = times[index]
    parents = parent[index]
    children = np.flatnonzero(parents >= 0)
    child_parents = parents[children]
    start = live_from - dead - 1                  # as if a click registered just early enough to end at live_from
    current = registered[index]
    for _ in range(_JACOBI_ROUNDS):
        exists = np.ones(index.size, dtype=bool)
        exists[children] = registered[child_parents]
        last = np.maximum.accumulate(np.where(current, t, start))
        before = np.empty_like(last)
        before[0] = start
        before[1:] = last[:-1]
        update = exists & (t - before > dead)
        registered[index] = update
        if np.array_equal(update, current):
            return registered
        current = update
    # Long chains (dense clicks): one sequential pass; a parent always comes before its afterpulse.
    flags = registered.tolist()
    last = start
    for position, moment, origin in zip(index.tolist(), t.tolist(), parents.tolist()):
        flag = (origin < 0 or flags[origin]) and moment - last > dead
        flags[position] = flag
        if flag:
            last = moment
    return np.array(flags, dtype=bool)


class _Detector:
    """One detector's dead time and afterpulse state, carried from chunk to chunk."""

    def __init__(self, receiver, live_from):
        self.dead = receiver.dead_time
        self.afterpulse = receiver.afterpulse
        self.delay = receiver.afterpulse_delay
        self.live_from = live_from
        self.pending = np.empty(0, dtype=np.int64)      # afterpulse candidates at or after the current chunk

    def process(self, base, end, rng):
        """Resolve the candidates of the chunk ending before ``end``.

        ``base`` holds the ascending, distinct photon and dark-count candidate slots. Returns a mask of the ``base``
        candidates that registered and the ascending slots of the afterpulses that registered in the chunk.
        """
        dead, p_afterpulse = self.dead, self.afterpulse
        none = np.empty(0, dtype=np.int64)
        if dead == 0 and p_afterpulse == 0:
            return np.ones(base.size, dtype=bool), none
        carried = self.pending[self.pending < end]
        later = self.pending[self.pending >= end]
        count = base.size

        # Every potential afterpulse candidate of the chunk: each candidate gets its afterpulse coin and delay once,
        # and the candidate exists iff its parent registers. Candidates from earlier chunks have no parent here.
        times = [base, carried]
        parents = [np.full(count + carried.size, -1, dtype=np.int64)]
        frontier = np.arange(count + carried.size)
        frontier_times = np.concatenate((base, carried))
        total = frontier.size
        while p_afterpulse > 0 and frontier.size:
            hit = rng.random(frontier.size) < p_afterpulse
            if not hit.any():
                break
            child_times = frontier_times[hit] + dead + rng.geometric(1 / self.delay, int(hit.sum()))
            times.append(child_times)
            parents.append(frontier[hit])
            inside = child_times < end
            frontier = total + np.flatnonzero(inside)
            frontier_times = child_times[inside]
            total += child_times.size
        times = np.concatenate(times)
        parents = np.concatenate(parents)

        # Merge the afterpulse candidates of the chunk into the (sorted) base ones; at equal slots base comes first.
        extra = count + np.flatnonzero(times[count:] < end)
        extra = extra[np.argsort(times[extra], kind="stable")]
        insert = np.searchsorted(base, times[extra], side="right")
        position = np.full(times.size, -1, dtype=np.int64)
        position[:count] = np.arange(count) + np.cumsum(np.bincount(insert, minlength=count + 1))[:count]
        position[extra] = insert + np.arange(extra.size)
        merged = np.empty(count + extra.size, dtype=np.int64)
        merged_parent = np.empty(count + extra.size, dtype=np.int64)
        merged[position[:count]] = base
        merged_parent[position[:count]] = -1
        merged[position[extra]] = times[extra]
        extra_parents = parents[extra]
        merged_parent[position[extra]] = np.where(extra_parents >= 0, position[np.maximum(extra_parents, 0)], -1)

        registered = _resolve(merged, merged_parent, dead, self.live_from)

        clicks = merged[registered]
        if clicks.size:
            self.live_from = max(self.live_from, int(clicks[-1]) + dead + 1)
        is_afterpulse = np.ones(merged.size, dtype=bool)
        is_afterpulse[position[:count]] = False
        afterpulses = merged[registered & is_afterpulse]
        # Afterpulse candidates beyond the chunk whose parent registered wait for the next one.
        beyond = count + carried.size + np.flatnonzero(times[count + carried.size:] >= end)
        beyond = beyond[registered[position[parents[beyond]]]]
        self.pending = np.sort(np.concatenate((later, times[beyond])))
        return registered[position[:count]], afterpulses


def register_clicks(candidates, receiver, *, rng, end=None):
    """Apply ``receiver``'s dead time and afterpulsing to one detector's candidate clicks.

    Parameters
    ----------
    candidates : array of int
        Strictly increasing slots where photons or dark counts would make the detector click.
    receiver : Receiver
        Supplies ``dead_time``, ``afterpulse`` and ``afterpulse_delay``.
    rng : numpy.random.Generator
    end : int or None
        First slot after the block: afterpulses from then on are dropped. Default: after the last candidate.

    Returns
    -------
    numpy.ndarray of int64
        The slots where the detector registers a click, ascending. The detector starts live.
    """
    candidates = np.asarray(candidates, dtype=np.int64)
    if candidates.ndim != 1 or np.any(np.diff(candidates) <= 0):
        raise ValueError("candidate clicks must be a strictly increasing one-dimensional array of slots")
    if end is None:
        end = int(candidates[-1]) + 1 if candidates.size else 0
    if candidates.size and candidates[-1] >= end:
        raise ValueError(f"candidate clicks must lie before the end slot {end}, not at {int(candidates[-1])}")
    detector = _Detector(receiver, int(candidates[0]) if candidates.size else 0)
    mask, afterpulses = detector.process(candidates, end, rng)
    return np.union1d(candidates[mask], afterpulses)


def _click_slots(probability, start, end, rng):
    """Ascending slots in [start, end) where at least one candidate click happens: geometric gaps."""
    if probability <= 0 or end <= start:
        return np.empty(0, dtype=np.int64)
    expected = (end - start) * probability
    size = int(expected + 6 * math.sqrt(expected) + 16)
    parts, cursor = [], start - 1
    while True:
        positions = cursor + np.cumsum(rng.geometric(probability, size))
        if positions[-1] >= end:
            parts.append(positions[:np.searchsorted(positions, end)])
            break
        parts.append(positions)
        cursor = int(positions[-1])
        size = max(16, int((end - cursor) * probability * 1.1) + 16)
    return np.concatenate(parts)


def _check_rng(rng):
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, not {rng!r}")


def run(bench, pulses, *, rng, first_slot=0):
    """Simulate ``pulses`` slots from ``first_slot`` on and return the slots where Bob registered a click.

    Exact for the model, at a cost proportional to the number of clicks (see the module's description). Every
    block starts with live detectors; afterpulses that would fall after the block are dropped.

    Parameters
    ----------
    bench : OpticalBench
    pulses : int
        Number of slots Alice emits, >= 0.
    rng : numpy.random.Generator
        All randomness: Alice's, Eve's, the photons' and the detectors'.
    first_slot : int
        Global number of the first slot, >= 0.

    Returns
    -------
    Record

    Raises
    ------
    ValueError
        If ``pulses`` or ``first_slot`` is negative or not an integer, or a PNS attack cannot keep the signal gain.
    """
    if not isinstance(bench, OpticalBench):
        raise ValueError(f"run needs an OpticalBench, not {bench!r}")
    pulses = _integer(pulses, "the number of pulses")
    first_slot = _integer(first_slot, "the first slot")
    _check_rng(rng)
    model = _Model(bench)
    detectors = [_Detector(bench.receiver, first_slot) for _ in range(_DETECTORS)]
    end = first_slot + pulses
    probability = model.click_probability
    chunk = max(1, int(_CHUNK_CLICKS / probability)) if probability > 0 else max(pulses, 1)
    parts = []
    start = first_slot
    while start < end:
        stop = min(end, start + chunk)
        slot, choice, pattern = _chunk(model, detectors, start, stop, rng)
        parts.append((slot, model.choice_basis[choice], model.choice_bit[choice], model.choice_intensity[choice],
                      pattern))
        start = stop
    empty = np.empty(0, np.uint8)
    slot, basis, bit, intensity, pattern = ((np.concatenate(arrays) for arrays in zip(*parts)) if parts else
                                            (np.empty(0, np.int64), empty, empty, empty, empty))
    return Record(pulses=pulses, slot=slot, alice_basis=basis, alice_bit=bit, alice_intensity=intensity,
                  pattern=pattern, frame_slots=bench.frame_slots)


def _chunk(model, detectors, start, end, rng):
    """One chunk of :func:`run`: (slots, choice indices, patterns) of the registered detections in [start, end)."""
    slots = _click_slots(model.click_probability, start, end, rng)
    joint = _draw(model.joint_cumulative, slots.size, rng)
    patterns_per_choice = _PATTERNS - 1
    choice = joint // patterns_per_choice
    candidates = (joint % patterns_per_choice + 1).astype(np.uint8)
    receiver_idle = detectors[0].dead == 0 and detectors[0].afterpulse == 0
    if receiver_idle:
        return slots, choice, candidates

    pattern = np.zeros(slots.size, dtype=np.uint8)
    afterpulse_slots, afterpulse_bits = [], []
    for index, detector in enumerate(detectors):
        bit = np.uint8(1 << index)
        mine = np.flatnonzero(candidates & bit)
        registered, afterpulses = detector.process(slots[mine], end, rng)
        pattern[mine[registered]] |= bit
        afterpulse_slots.append(afterpulses)
        afterpulse_bits.append(np.full(afterpulses.size, bit, dtype=np.uint8))
    afterpulse_slots = np.concatenate(afterpulse_slots)
    if afterpulse_slots.size:
        afterpulse_bits = np.concatenate(afterpulse_bits)
        where = np.searchsorted(slots, afterpulse_slots)
        known = where < slots.size
        known[known] = slots[where[known]] == afterpulse_slots[known]
        np.bitwise_or.at(pattern, where[known], afterpulse_bits[known])
        # Afterpulses in slots without any candidate click: Alice's choices there are conditioned on "no click".
        new_slots, inverse = np.unique(afterpulse_slots[~known], return_inverse=True)
        if new_slots.size:
            new_pattern = np.zeros(new_slots.size, dtype=np.uint8)
            np.bitwise_or.at(new_pattern, inverse, afterpulse_bits[~known])
            new_choice = _draw(model.no_click_cumulative, new_slots.size, rng)
            # Merge the new slots in: one set of positions for the three arrays.
            at = np.searchsorted(slots, new_slots)
            old_position = np.arange(slots.size) + np.cumsum(np.bincount(at, minlength=slots.size + 1))[:slots.size]
            new_position = at + np.arange(new_slots.size)
            merged = np.empty(slots.size + new_slots.size, dtype=np.int64)
            merged_choice = np.empty(merged.size, dtype=np.int64)
            merged_pattern = np.empty(merged.size, dtype=np.uint8)
            for target, old, new in ((merged, slots, new_slots), (merged_choice, choice, new_choice),
                                     (merged_pattern, pattern, new_pattern)):
                target[old_position] = old
                target[new_position] = new
            slots, choice, pattern = merged, merged_choice, merged_pattern
    keep = pattern != 0
    return slots[keep], choice[keep], pattern[keep]


def slot_events(bench, first_slot, slots, *, rng):
    """Every slot's modulator drive and Bob's detector pulses, simulated slot by slot and photon by photon.

    The per-slot event stream a board sees, for gateware tests: meant for small numbers of slots (it draws every
    slot and resolves dead time and afterpulses in a Python loop). An independent implementation of the model of
    :func:`run`, which the tests compare statistically. The detectors start live; afterpulses after the last slot
    are dropped.

    Parameters
    ----------
    bench : OpticalBench
    first_slot : int
        Global number of the first slot, >= 0.
    slots : int
        Number of slots, >= 0.
    rng : numpy.random.Generator

    Returns
    -------
    SlotEvents
    """
    if not isinstance(bench, OpticalBench):
        raise ValueError(f"slot_events needs an OpticalBench, not {bench!r}")
    first_slot = _integer(first_slot, "the first slot")
    count = _integer(slots, "the number of slots")
    _check_rng(rng)
    source, receiver, eve = bench.source, bench.receiver, bench.eavesdropper
    eta_channel = transmittance(bench.fibre)

    # Alice.
    basis = (rng.random(count) >= source.p_z).astype(np.uint8)
    bit = rng.integers(0, 2, count, dtype=np.uint8)
    intensity = _draw(_cumulative(np.array(source.probabilities)), count, rng).astype(np.uint8)
    return detector_events(bench, basis, bit, intensity, first_slot=first_slot, rng=rng)


def detector_events(bench, basis, bit, intensity, *, first_slot, rng):
    """Bob's detector pulses for slots that Alice drove with ``basis``, ``bit`` and ``intensity`` (one entry per
    slot, from ``first_slot`` on): the channel, Eve and Bob of :func:`slot_events`, for Alice's choices made
    elsewhere (by the gateware's sequencer in a simulated link). An intensity of ``NOT_SENT`` sends no light.

    Returns
    -------
    SlotEvents
    """
    if not isinstance(bench, OpticalBench):
        raise ValueError(f"detector_events needs an OpticalBench, not {bench!r}")
    first_slot = _integer(first_slot, "the first slot")
    basis, bit, intensity = (np.asarray(array, dtype=np.uint8) for array in (basis, bit, intensity))
    count = basis.size
    if not bit.size == intensity.size == count:
        raise ValueError(f"basis, bit and intensity must have one entry per slot, not {basis.size}, {bit.size} "
                         f"and {intensity.size}")
    source, receiver, eve = bench.source, bench.receiver, bench.eavesdropper
    eta_channel = transmittance(bench.fibre)
    mu = np.append(np.array(source.intensities, dtype=np.float64), 0.0)[np.minimum(intensity, NOT_SENT)]
    photons = rng.poisson(mu)

    # The channel (and Eve): photons entering Bob's receiver, and the state they carry.
    sent_basis, sent_bit = basis.copy(), bit.copy()
    if eve is None:
        arriving = rng.binomial(photons, eta_channel)
    elif isinstance(eve, InterceptResend):
        intercepted = rng.random(count) < eve.fraction
        eve_basis = rng.integers(0, 2, count, dtype=np.uint8)
        eve_bit = np.where(eve_basis == basis, bit, rng.integers(0, 2, count, dtype=np.uint8)).astype(np.uint8)
        measured = intercepted & (photons > 0)
        resent = np.where(measured, rng.poisson(mu), 0)
        sent_basis = np.where(measured, eve_basis, basis).astype(np.uint8)
        sent_bit = np.where(measured, eve_bit, bit).astype(np.uint8)
        arriving = rng.binomial(np.where(intercepted, resent, photons), eta_channel)
    else:
        block = pns_block_fraction(bench)
        blocked = (photons == 1) & (rng.random(count) < block)
        arriving = np.where(photons >= 2, photons - 1, np.where(blocked, 0, photons))

    # Bob: efficiency, basis splitter, misalignment; then which detectors see a photon.
    detected = rng.binomial(arriving, receiver.efficiency)
    in_z = rng.binomial(detected, receiver.p_z)
    hits = np.zeros((_DETECTORS, count), dtype=np.int64)
    for arm, arm_photons in ((Z, in_z), (X, detected - in_z)):
        matched = sent_basis == arm
        to_other = np.where(matched, rng.binomial(arm_photons, receiver.misalignment),
                            rng.binomial(arm_photons, 0.5))
        # Matched arm: the prepared bit's detector gets the rest; unmatched: either half, by symmetry.
        right = arm_photons - to_other
        ones = sent_bit == 1
        hits[2 * arm] += np.where(ones, to_other, right)
        hits[2 * arm + 1] += np.where(ones, right, to_other)
    photon_click = hits > 0
    dark_click = rng.random((_DETECTORS, count)) < receiver.dark_count

    # Each detector in time order: dead time and afterpulses.
    period = bench.slot_ns
    event_slots, event_detectors, event_causes = [], [], []
    end = first_slot + count
    for detector in range(_DETECTORS):
        candidate = np.flatnonzero(photon_click[detector] | dark_click[detector])
        cause = np.where(photon_click[detector][candidate], PHOTON, DARK)
        queue = list(zip((first_slot + candidate).tolist(), [0] * candidate.size, cause.tolist()))
        heapq.heapify(queue)
        live_from = first_slot
        while queue:
            moment, _, why = heapq.heappop(queue)
            if moment < live_from:
                continue
            event_slots.append(moment)
            event_detectors.append(detector)
            event_causes.append(why)
            live_from = moment + receiver.dead_time + 1
            if receiver.afterpulse and rng.random() < receiver.afterpulse:
                later = moment + receiver.dead_time + int(rng.geometric(1 / receiver.afterpulse_delay))
                if later < end:
                    heapq.heappush(queue, (later, 1, AFTERPULSE))   # after a photon or dark count of its slot
    event_slots = np.array(event_slots, dtype=np.int64)
    event_detectors = np.array(event_detectors, dtype=np.uint8)
    event_causes = np.array(event_causes, dtype=np.uint8)
    offset = rng.random(event_slots.size) * period                 # dark counts and afterpulses: anywhere
    photon = event_causes == PHOTON
    offset[photon] = period / 2 + rng.normal(0.0, receiver.jitter_ns, int(photon.sum()))
    time = event_slots * period + offset
    order = np.argsort(time, kind="stable")
    return SlotEvents(first_slot=first_slot, slot_ns=period, alice_basis=basis, alice_bit=bit,
                      alice_intensity=intensity, time_ns=time[order], detector=event_detectors[order],
                      cause=event_causes[order], slot=event_slots[order], frame_slots=bench.frame_slots)
