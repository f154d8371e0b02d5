"""Parameter estimation and the finite-key secret length of efficient three-intensity decoy-state BB84.

The bound is that of Lim, Curty, Walenta, Xu and Zbinden, "Concise security bounds for practical decoy-state quantum
key distribution", PRA 89, 022307 (2014), arXiv:1311.7129, Eqs. (1)-(5); the asymptotic reference rates are the
GLLP / Lo-Ma-Chen infinite-decoy rate (Ma, Qi, Zhao, Lo, PRA 72, 012326, 2005) and the repeaterless PLOB bound
(Pirandola, Laurenza, Ottaviani, Banchi, Nat. Commun. 8, 15043, 2017).

Conventions
-----------
Our **Z basis is the key basis** and **X is the test basis**. Lim et al. use the opposite names (their key basis is
X), so every symbol of theirs swaps its basis label here:

=====================================  ==================================  ===========================================
Lim et al.                             here                                meaning
=====================================  ==================================  ===========================================
q_x                                    p_z                                 probability of the key basis (each side)
mu_1, mu_2, mu_3; p_mu_k               ``DecoySettings.intensities``,      signal, decoy and weakest intensity and the
                                       ``.probabilities``                  probabilities Alice sends them with
tau_n                                  ``DecoySettings.tau(n)``            probability that Alice sends n photons
n_{X,k}, n_X                           ``BlockCounts.n_z[k]``, sum         sifted key-basis detections per intensity
n_{Z,k}, n_Z                           ``BlockCounts.n_x[k]``, sum         sifted test-basis detections per intensity
m_{Z,k}, m_Z                           ``BlockCounts.m_x[k]``, sum         bit errors among the test-basis detections
n^{+-}_{X,k}, m^{+-}_{Z,k}             ``_finite_size_range``              Hoeffding-corrected counts (below)
s_{X,0}, s_{X,1}                       ``s_z0``, ``s_z1``                  key-basis vacuum / single-photon events
s_{Z,0}, s_{Z,1}                       ``s_x0``, ``s_x1``                  test-basis vacuum / single-photon events
v_{Z,1}                                ``v_x1``                            bit errors of the test-basis single photons
phi_X = c_{X,1} / s_{X,1}              ``phi_z``                           phase-error rate of the key single photons
lambda_EC                              ``leak_ec``                         bits revealed by error correction
=====================================  ==================================  ===========================================

Intensities are ordered signal first: ``intensities = (mu1, mu2, mu3)`` with mu1 > mu2 + mu3 and mu2 > mu3 >= 0, the
conditions under which Lim et al.'s bounds hold; mu3 may be 0 (a vacuum decoy).

The bounds (index k runs over the three intensities, all with the same ``eps_sec``):

- Hoeffding: n^{+-}_k = (e^{mu_k} / p_k) (n_k +- sqrt(n / 2 ln(21 / eps_sec))), n the total over k; the same for
  the errors m with the total error count m.
- Eq. (2), vacuum events: s_0 >= tau_0 (mu2 n^-_3 - mu3 n^+_2) / (mu2 - mu3).
- Eq. (3), single-photon events:
  s_1 >= mu1 tau_1 (n^-_2 - n^+_3 - (mu2^2 - mu3^2) / mu1^2 (n^+_1 - s_0 / tau_0)) / (mu1 (mu2 - mu3) - mu2^2 + mu3^2).
- Eq. (4), single-photon errors in the test basis: v_x1 <= tau_1 (m^+_2 - m^-_3) / (mu2 - mu3).
- Eq. (5), phase error: phi_z <= v_x1 / s_x1 + gamma(eps_sec, v_x1 / s_x1, s_x1, s_z1) with
  gamma(a, b, c, d) = sqrt((c + d) (1 - b) b / (c d ln 2) log2((c + d) / (c d (1 - b) b) 21^2 / a^2)).
- Eq. (1): l = floor(s_z0 + s_z1 (1 - h(phi_z)) - leak_EC - 6 log2(21 / eps_sec) - log2(2 / eps_cor)).

Two choices of ours, both valid because a number of events is never negative: the vacuum lower bounds s_z0 and s_x0
are clipped at 0 (Eq. (2) is usually negative when few vacuum-intensity pulses click, and Eq. (3) grows with s_0, so
0 is the better valid value to feed it), and the error upper bound v_x1 is clipped at 0. The block is **aborted**
(length 0, with a reason) when a basis has no detections, when s_z1 or s_x1 is not positive, when phi_z >= 1/2, or
when Eq. (1) leaves no bit. ``eps_sec`` is the secrecy parameter of Lim et al.'s theorem (they compose it of 21
equal parts, hence the 21s), ``eps_cor`` that of the verification hash.

Assumptions the bound rests on (Lim et al., Sec. V and App. B): Alice's pulses are phase randomised with Poissonian
photon numbers at exactly the three calibrated intensities; the two bases are mutually unbiased; Bob's detection
probability does not depend on his basis (no detector efficiency mismatch); double clicks are assigned a random bit
(the squashing of ``docs/DESIGN.md``); vacuum pulses carry no information about the bit.

What a user should know (Wiesemann, Krause, Tupkary, Lütkenhaus, Rusca, Walenta, arXiv:2405.16578)
------------------------------------------------------------------------------------------------------------
Wiesemann et al. give a complete finite-size proof of 1-decoy and 2-decoy BB84 against coherent attacks and, in
their words, "resolve important technical flaws found in previous works regarding the fixed-length treatment of
protocols and the careful handling of acceptance testing"; they also make explicit the conditioning on events
(such as passing the checks) that earlier proofs leave implicit. (Only their abstract was at hand when this module
was written; items 1 and 2 are our reading of it against Lim et al.'s text, item 3 is ours.) For us:

1. **Fixed length versus variable length.** Lim et al.'s protocol and proof are for a fixed-length key, yet their
   Eq. (1) computes the length from the block's own observations (s_z1, phi_z and the leak_EC that Cascade really
   spent): a variable-length protocol, which the fixed-length argument does not cover as it stands. So the lengths
   returned here carry eps_sec only heuristically. Rigorous remedies: fix the length and acceptance thresholds on
   the observed statistics before the run and abort whenever a block is worse, or use a variable-length proof
   (Tupkary et al., PRR 6, 023002, 2024), which costs a few more bits of security terms.
2. **Acceptance test and conditioning.** The estimates hold with high probability over the whole run but are used
   only in blocks that pass parameter estimation and verification; stated carelessly they need not hold
   conditioned on passing. Abort only by the published rule (the conditions above), never by a judgement made after
   seeing the key.
3. **The phase-error term gamma** is Fung, Ma and Chau's (PRA 81, 012318, 2010), which Lim et al. themselves call
   "based on an approximation technique for the hypergeometric distribution": it is not a proven tail bound. A
   symptom that matters in practice: gamma vanishes as v_x1 / s_x1 -> 0, so a small test sample that happens to
   show no bit error gives phi_z = 0 and counts every single-photon bit as secret, where a proven sampling bound
   (Serfling's inequality, for example) would still charge about sqrt(ln(1/eps) / s_x1). Distrust blocks with few
   X-basis single photons (up to thousands) until the bound is replaced.

Until these are settled, use these lengths for simulation, planning and comparison with the literature; a claim of
eps_sec-security for a product needs the consolidated proof.
"""

import math
import numbers
from dataclasses import dataclass


__all__ = ["DecoySettings", "BlockCounts", "DecoyBounds", "FiniteKeyResult", "binary_entropy", "decoy_bounds",
           "secret_length", "asymptotic_rate", "plob_bound", "expected_counts"]


# Lim et al. split eps_sec into 21 equal parts (App. B, Eq. (B4)); each concentration bound uses one part.
_EPS_PARTS = 21


def _real(value, name):
    """``value`` as a finite float, or a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number, not {value!r}")
    return float(value)


def _triple(values, name):
    """Three finite reals as a tuple, or a ValueError naming ``name``."""
    try:
        items = tuple(values)
    except TypeError:
        raise ValueError(f"{name} must be three numbers, not {values!r}") from None
    if len(items) != 3:
        raise ValueError(f"{name} must be three numbers (one per intensity), not {len(items)}: {values!r}")
    for index, item in enumerate(items):
        _real(item, f"{name}[{index}]")
    return items


def _check_probability_open(value, name):
    """A probability strictly between 0 and 1 (security parameters)."""
    value = _real(value, name)
    if not 0 < value < 1:
        raise ValueError(f"{name} must lie strictly between 0 and 1, not {value!r}")
    return value


@dataclass(frozen=True)
class DecoySettings:
    """Alice's three intensities and the probabilities she sends them with.

    Parameters
    ----------
    intensities : tuple of three floats
        Mean photon numbers ``(mu1, mu2, mu3)``: signal, decoy and weakest decoy, with mu1 > mu2 + mu3 and
        mu2 > mu3 >= 0 (Lim et al.'s conditions; mu3 = 0 is a vacuum decoy).
    probabilities : tuple of three floats
        ``(p_mu1, p_mu2, p_mu3)``, each in (0, 1], summing to 1 (to 1e-9).

    Raises
    ------
    ValueError
        If the intensities are out of order or the probabilities are not a distribution over the three.
    """
    intensities: tuple[float, float, float]
    probabilities: tuple[float, float, float]

    def __post_init__(self):
        mu1, mu2, mu3 = (float(mu) for mu in _triple(self.intensities, "intensities"))
        if mu3 < 0:
            raise ValueError(f"the weakest intensity mu3 must be non-negative, not {mu3!r}")
        if not mu2 > mu3:
            raise ValueError(f"the decoy intensity mu2 must exceed mu3: mu2 = {mu2!r} is not above mu3 = {mu3!r}")
        if not mu1 > mu2 + mu3:
            raise ValueError(f"the signal intensity mu1 must exceed mu2 + mu3 = {mu2 + mu3!r}, not {mu1!r} "
                             f"(intensities are ordered signal, decoy, weakest)")
        probabilities = tuple(float(p) for p in _triple(self.probabilities, "probabilities"))
        for index, p in enumerate(probabilities):
            if not 0 < p <= 1:
                raise ValueError(f"probabilities[{index}] must lie in (0, 1]: every intensity must be sent, "
                                 f"not {p!r}")
        total = math.fsum(probabilities)
        if abs(total - 1) > 1e-9:
            raise ValueError(f"the probabilities must sum to 1, not {total:.12g}")
        object.__setattr__(self, "intensities", (mu1, mu2, mu3))
        object.__setattr__(self, "probabilities", probabilities)

    def tau(self, n):
        """Lim et al.'s tau_n: the probability that Alice's pulse holds ``n`` photons, sum_k p_k e^-k k^n / n!."""
        if not isinstance(n, numbers.Integral) or n < 0:
            raise ValueError(f"the photon number must be a non-negative integer, not {n!r}")
        return math.fsum(p * math.exp(-mu) * mu ** n / math.factorial(n)
                         for mu, p in zip(self.intensities, self.probabilities))


@dataclass(frozen=True)
class BlockCounts:
    """Sifted detection and error counts of one block, per intensity (signal, decoy, weakest).

    Parameters
    ----------
    n_z : tuple of three numbers
        Detections where both chose the key basis Z (the raw key), per intensity.
    n_x : tuple of three numbers
        Detections where both chose the test basis X, per intensity.
    m_x : tuple of three numbers
        Bit errors among the ``n_x`` detections (every X-basis outcome is revealed), per intensity.

    Counts are normally integers; expected (real) counts from a channel model are accepted too.

    Raises
    ------
    ValueError
        If a count is negative or not finite, or there are more errors than detections.
    """
    n_z: tuple[int, int, int]
    n_x: tuple[int, int, int]
    m_x: tuple[int, int, int]

    def __post_init__(self):
        for name in ("n_z", "n_x", "m_x"):
            values = _triple(getattr(self, name), name)
            for index, value in enumerate(values):
                if value < 0:
                    raise ValueError(f"{name}[{index}] must be a non-negative count, not {value!r}")
            object.__setattr__(self, name, values)
        for index, (errors, detections) in enumerate(zip(self.m_x, self.n_x)):
            if errors > detections:
                raise ValueError(f"m_x[{index}] = {errors!r} errors exceed the n_x[{index}] = {detections!r} "
                                 f"X-basis detections")


@dataclass(frozen=True)
class DecoyBounds:
    """The decoy-state bounds of one block (Lim et al. Eqs. (2)-(5), key basis Z).

    Attributes
    ----------
    s_z0, s_z1 : float
        Lower bounds on the vacuum and single-photon events among the key-basis detections (s_z0 clipped at 0).
    s_x0, s_x1 : float
        The same for the test-basis detections.
    v_x1 : float
        Upper bound on the bit errors of the test-basis single-photon events (clipped at 0).
    phi_z : float
        Upper bound on the phase-error rate of the key-basis single-photon events; ``nan`` when s_z1 or s_x1 is
        not positive (no bound exists then).
    """
    s_z0: float
    s_z1: float
    s_x0: float
    s_x1: float
    v_x1: float
    phi_z: float


@dataclass(frozen=True)
class FiniteKeyResult:
    """The secret length of one block and the figures it came from.

    Attributes
    ----------
    length : int
        Secret bits to keep after privacy amplification; 0 when the block is aborted.
    s_z0, s_z1, s_x1, v_x1, phi_z : float
        The bounds, as in :class:`DecoyBounds` (those not computed before an abort are ``nan``).
    leak_ec : int
        Bits revealed by error correction, as given.
    eps_sec, eps_cor : float
        Secrecy and correctness parameters the length was computed for.
    abort_reason : str or None
        Why no key can be extracted, when ``length`` is 0; None otherwise.
    """
    length: int
    s_z0: float
    s_z1: float
    s_x1: float
    v_x1: float
    phi_z: float
    leak_ec: int
    eps_sec: float
    eps_cor: float
    abort_reason: str | None


def binary_entropy(p):
    """h(p) = -p log2 p - (1 - p) log2 (1 - p) in bits, with h(0) = h(1) = 0.

    Raises
    ------
    ValueError
        If ``p`` is not a number in [0, 1].
    """
    p = _real(p, "the probability")
    if not 0 <= p <= 1:
        raise ValueError(f"the binary entropy needs a probability in [0, 1], not {p!r}")
    if p == 0 or p == 1:
        return 0.0
    return -p * math.log2(p) - (1 - p) * math.log2(1 - p)


def _finite_size_range(counts, settings, eps_sec):
    """Lim et al.'s n^- and n^+ for each intensity: Hoeffding's interval, rescaled by e^mu / p.

    The deviation uses the total over the three intensities: given the detections, each is assigned an intensity
    independently (the counterfactual view of App. A), so their split among intensities obeys Hoeffding's inequality.
    """
    deviation = math.sqrt(math.fsum(counts) / 2 * math.log(_EPS_PARTS / eps_sec))
    lower, upper = [], []
    for count, mu, p in zip(counts, settings.intensities, settings.probabilities):
        scale = math.exp(mu) / p
        lower.append(scale * (count - deviation))
        upper.append(scale * (count + deviation))
    return lower, upper


def _vacuum_bound(lower, upper, settings):
    """Eq. (2), clipped at 0: a lower bound on the vacuum events."""
    _, mu2, mu3 = settings.intensities
    bound = settings.tau(0) * (mu2 * lower[2] - mu3 * upper[1]) / (mu2 - mu3)
    return max(bound, 0.0)


def _single_photon_bound(lower, upper, vacuum, settings):
    """Eq. (3): a lower bound on the single-photon events, given a lower bound on the vacuum events."""
    mu1, mu2, mu3 = settings.intensities
    multi_photon = (mu2 ** 2 - mu3 ** 2) / mu1 ** 2 * (upper[0] - vacuum / settings.tau(0))
    denominator = mu1 * (mu2 - mu3) - mu2 ** 2 + mu3 ** 2      # = (mu2 - mu3)(mu1 - mu2 - mu3) > 0
    return mu1 * settings.tau(1) * (lower[1] - upper[2] - multi_photon) / denominator


def _gamma(a, b, c, d):
    """Lim et al.'s gamma(a, b, c, d) of Eq. (5): the sampling correction to the phase-error rate.

    ``b`` is the observed single-photon error rate (0 <= b < 1), ``c`` and ``d`` the sizes of the two samples.
    """
    if b == 0:
        # b (1 - b) log(1 / (b (1 - b))) -> 0: the correction vanishes with the observed error rate (see the module
        # docstring for why that is a weakness of this bound).
        return 0.0
    variance = (c + d) * (1 - b) * b / (c * d * math.log(2))
    logarithm = (math.log2(c + d) - math.log2(c) - math.log2(d) - math.log2((1 - b) * b)
                 + 2 * math.log2(_EPS_PARTS / a))
    return math.sqrt(variance * max(logarithm, 0.0))


def decoy_bounds(counts, settings, *, eps_sec):
    """The decoy-state bounds of a block: Lim et al. Eqs. (2)-(5) with our key basis Z.

    Parameters
    ----------
    counts : BlockCounts
        The block's sifted detections and test-basis errors per intensity.
    settings : DecoySettings
        The intensities and their probabilities.
    eps_sec : float
        Secrecy parameter, in (0, 1); each of Lim et al.'s 21 error terms is eps_sec / 21.

    Returns
    -------
    DecoyBounds
        ``s_z0, s_z1, s_x0, s_x1, v_x1, phi_z``. The single-photon bounds may be negative (too few detections);
        ``phi_z`` is ``nan`` unless both single-photon bounds are positive. When v_x1 / s_x1 >= 1 the gamma term is
        undefined and ``phi_z`` is that ratio (already past any useful phase error).

    Raises
    ------
    ValueError
        If ``eps_sec`` is not in (0, 1) or the arguments are of the wrong types.
    """
    _check_types(counts, settings)
    eps_sec = _check_probability_open(eps_sec, "eps_sec")
    z_lower, z_upper = _finite_size_range(counts.n_z, settings, eps_sec)
    x_lower, x_upper = _finite_size_range(counts.n_x, settings, eps_sec)
    m_lower, m_upper = _finite_size_range(counts.m_x, settings, eps_sec)
    s_z0 = _vacuum_bound(z_lower, z_upper, settings)
    s_x0 = _vacuum_bound(x_lower, x_upper, settings)
    s_z1 = _single_photon_bound(z_lower, z_upper, s_z0, settings)
    s_x1 = _single_photon_bound(x_lower, x_upper, s_x0, settings)
    _, mu2, mu3 = settings.intensities
    # Eq. (4): only the two weaker intensities enter the error bound.
    v_x1 = max(settings.tau(1) * (m_upper[1] - m_lower[2]) / (mu2 - mu3), 0.0)
    if s_z1 > 0 and s_x1 > 0:
        rate = v_x1 / s_x1
        phi_z = rate + _gamma(eps_sec, rate, s_x1, s_z1) if rate < 1 else rate
    else:
        phi_z = math.nan
    return DecoyBounds(s_z0=s_z0, s_z1=s_z1, s_x0=s_x0, s_x1=s_x1, v_x1=v_x1, phi_z=phi_z)


def _check_types(counts, settings):
    if not isinstance(counts, BlockCounts):
        raise ValueError(f"counts must be a BlockCounts, not {type(counts).__name__}")
    if not isinstance(settings, DecoySettings):
        raise ValueError(f"settings must be a DecoySettings, not {type(settings).__name__}")


def secret_length(counts, settings, *, leak_ec, eps_sec=1e-10, eps_cor=1e-15):
    """The secret key length of a block (Lim et al. Eq. (1)), or 0 and the reason the block is aborted.

    Parameters
    ----------
    counts : BlockCounts
        The block's sifted detections and test-basis errors per intensity.
    settings : DecoySettings
        The intensities and their probabilities.
    leak_ec : int
        Bits revealed by error correction (every parity Cascade disclosed), >= 0.
    eps_sec : float, optional
        Secrecy parameter in (0, 1).
    eps_cor : float, optional
        Correctness parameter in (0, 1): the verification hash publishes log2(2 / eps_cor) bits, charged here.

    Returns
    -------
    FiniteKeyResult
        ``length`` = floor(s_z0 + s_z1 (1 - h(phi_z)) - leak_ec - 6 log2(21/eps_sec) - log2(2/eps_cor)), and the
        bounds. The block is aborted (length 0 and ``abort_reason`` set) when a basis has no detections, a
        single-photon bound is not positive, phi_z >= 1/2, or the formula leaves no bit.

    Raises
    ------
    ValueError
        If a parameter is out of range (``leak_ec`` negative or not an integer, an eps outside (0, 1)).
    """
    _check_types(counts, settings)
    eps_sec = _check_probability_open(eps_sec, "eps_sec")
    eps_cor = _check_probability_open(eps_cor, "eps_cor")
    if isinstance(leak_ec, bool) or not isinstance(leak_ec, numbers.Integral) or leak_ec < 0:
        raise ValueError(f"leak_ec must be a non-negative integer number of bits, not {leak_ec!r}")
    leak_ec = int(leak_ec)

    def aborted(reason, bounds=None):
        values = (bounds.s_z0, bounds.s_z1, bounds.s_x1, bounds.v_x1, bounds.phi_z) if bounds else (math.nan,) * 5
        return FiniteKeyResult(0, *values, leak_ec=leak_ec, eps_sec=eps_sec, eps_cor=eps_cor, abort_reason=reason)

    if math.fsum(counts.n_z) == 0:
        return aborted("no Z-basis (key) detections in the block")
    if math.fsum(counts.n_x) == 0:
        return aborted("no X-basis (test) detections in the block: the phase error cannot be bounded")
    bounds = decoy_bounds(counts, settings, eps_sec=eps_sec)
    if not bounds.s_z1 > 0:
        return aborted(f"too few Z-basis detections to bound the single-photon events: "
                       f"s_Z1 = {bounds.s_z1:.4g} <= 0", bounds)
    if not bounds.s_x1 > 0:
        return aborted(f"too few X-basis detections to bound the single-photon events: "
                       f"s_X1 = {bounds.s_x1:.4g} <= 0", bounds)
    if bounds.s_z0 + bounds.s_z1 > math.fsum(counts.n_z):
        # Lower bounds above the detections they count: no physical channel gives these statistics, so the
        # decoy analysis does not describe this block. Abort rather than hash to a length the key cannot have.
        return aborted(f"inconsistent decoy statistics: the vacuum and single-photon lower bounds "
                       f"({bounds.s_z0 + bounds.s_z1:.4g}) exceed the {math.fsum(counts.n_z):.4g} Z-basis "
                       f"detections", bounds)
    if not bounds.phi_z < 0.5:
        qber = math.fsum(counts.m_x) / math.fsum(counts.n_x)
        return aborted(f"phase error bound {bounds.phi_z:.4g} >= 0.5 (X-basis error rate {qber:.4g})", bounds)
    security = 6 * math.log2(_EPS_PARTS / eps_sec) + math.log2(2 / eps_cor)
    secret = bounds.s_z0 + bounds.s_z1 * (1 - binary_entropy(bounds.phi_z))
    bound = secret - leak_ec - security
    length = math.floor(bound)
    if length < 1:
        qber = math.fsum(counts.m_x) / math.fsum(counts.n_x)
        return aborted(f"no secret key: the bound is {bound:.4g} bits (s_Z0 + s_Z1 (1 - h(phi_Z)) = {secret:.4g} "
                       f"with phase error bound {bounds.phi_z:.4g} at X-basis error rate {qber:.4g}, "
                       f"leak_EC = {leak_ec}, security terms {security:.4g})", bounds)
    return FiniteKeyResult(length, bounds.s_z0, bounds.s_z1, bounds.s_x1, bounds.v_x1, bounds.phi_z,
                           leak_ec=leak_ec, eps_sec=eps_sec, eps_cor=eps_cor, abort_reason=None)


def _check_transmittance(value, name="the transmittance"):
    value = _real(value, name)
    if not 0 <= value <= 1:
        raise ValueError(f"{name} must lie in [0, 1], not {value!r}")
    return value


def _check_channel(transmittance, dark_count, misalignment):
    transmittance = _check_transmittance(transmittance)
    dark_count = _real(dark_count, "the dark count probability")
    if not 0 <= dark_count < 1:
        raise ValueError(f"the dark count probability must lie in [0, 1), not {dark_count!r}")
    misalignment = _real(misalignment, "the misalignment error")
    if not 0 <= misalignment <= 0.5:
        raise ValueError(f"the misalignment error must lie in [0, 0.5], not {misalignment!r}")
    return transmittance, dark_count, misalignment


def _check_basis_probability(p_z):
    p_z = _real(p_z, "p_z")
    if not 0 < p_z <= 1:
        raise ValueError(f"p_z must lie in (0, 1], not {p_z!r}")
    return p_z


def asymptotic_rate(transmittance, *, dark_count, misalignment, intensity, error_correction_efficiency=1.16,
                    p_z=1.0):
    """Infinite-decoy (GLLP / Lo-Ma-Chen) secret key rate per pulse, in the limit of infinitely long keys.

    R = p_z^2 [Q_1 (1 - h(e_1)) - f Q_mu h(E_mu)] (the GLLP rate as in Ma, Qi, Zhao, Lo, PRA 72, 012326, with the
    sifting factor of efficient BB84), clipped at 0, for key from the signal pulses of intensity mu, with Y_1 and e_1
    known exactly (infinitely many decoys).

    Channel model (exact where Ma et al. expand to first order in Y_0 eta):

    - eta = ``transmittance``: the whole transmittance, fibre times Bob's optics and detector efficiency.
    - Y_0 = ``dark_count``: the probability that **the receiver** (all its detectors together) clicks in a slot when
      no photon arrives. For two detectors of dark-count probability p_dc each, Y_0 = 1 - (1 - p_dc)^2 ~ 2 p_dc.
      A dark click gives a random bit (error 1/2).
    - n photons click with probability eta_n = 1 - (1 - eta)^n; the yield is Y_n = 1 - (1 - Y_0)(1 - eta)^n (Ma et
      al.: Y_0 + eta_n) and the error probability per pulse e_n Y_n = Y_0 / 2 + e_d eta_n, e_d = ``misalignment``.
    - Averaging over Poissonian photon numbers: Q_mu = 1 - (1 - Y_0) e^(-eta mu), E_mu Q_mu = Y_0 / 2 +
      e_d (1 - e^(-eta mu)), Q_1 = Y_1 mu e^-mu.

    Parameters
    ----------
    transmittance : float
        eta in [0, 1].
    dark_count : float
        Y_0 in [0, 1), per slot for the whole receiver.
    misalignment : float
        e_d in [0, 0.5]: the probability that a detected photon gives the wrong bit.
    intensity : float
        Signal mean photon number mu > 0.
    error_correction_efficiency : float, optional
        f >= 1: error correction reveals f h(E_mu) bits per sifted bit.
    p_z : float, optional
        Probability that each side chooses the key basis, in (0, 1]; p_z = 1 is the asymptotic ideal of
        efficient BB84 (Lo, Chau, Ardehali), p_z = 1/sqrt(2) gives standard BB84's sifting factor 1/2.

    Returns
    -------
    float
        Secret bits per pulse sent, >= 0.
    """
    eta, y0, e_d = _check_channel(transmittance, dark_count, misalignment)
    mu = _real(intensity, "the intensity")
    if not mu > 0:
        raise ValueError(f"the intensity must be positive, not {mu!r}")
    f = _real(error_correction_efficiency, "the error correction efficiency")
    if f < 1:
        raise ValueError(f"the error correction efficiency must be at least 1 (the Shannon limit), not {f!r}")
    p_z = _check_basis_probability(p_z)
    gain = 1 - (1 - y0) * math.exp(-eta * mu)
    if gain == 0:
        return 0.0
    errors = y0 / 2 + e_d * -math.expm1(-eta * mu)
    yield_1 = 1 - (1 - y0) * (1 - eta)
    error_1 = (y0 / 2 + e_d * eta) / yield_1
    gain_1 = yield_1 * mu * math.exp(-mu)
    rate = p_z ** 2 * (gain_1 * (1 - binary_entropy(error_1)) - f * gain * binary_entropy(errors / gain))
    return max(rate, 0.0)


def plob_bound(channel_transmittance):
    """The repeaterless PLOB bound -log2(1 - eta): secret bits per channel use of a pure-loss channel.

    Pirandola, Laurenza, Ottaviani, Banchi, Nat. Commun. 8, 15043 (2017). Infinite at eta = 1.
    """
    eta = _check_transmittance(channel_transmittance, "the channel transmittance")
    if eta == 1:
        return math.inf
    return -math.log1p(-eta) / math.log(2)


def expected_counts(pulses, settings, *, transmittance, dark_count, misalignment, p_z, afterpulse=0.0):
    """Expected block counts for ``pulses`` pulses through a model channel: for tests, plots and planning.

    The model is Lim et al.'s dedicated-fibre model (Sec. IV) written per photon number. With eta =
    ``transmittance`` (fibre times Bob), Y_0 = ``dark_count`` (per slot, whole receiver; Lim et al.'s 2 p_dc) and
    p_ap = ``afterpulse``, a pulse of n photons clicks with probability Y_n (1 + p_ap), Y_n = 1 - (1 - Y_0)(1 - eta)^n,
    and gives a wrong bit with probability Y_0 / 2 + e_mis (1 - (1 - eta)^n) + p_ap Y_n / 2. Averaged over the
    Poissonian photon numbers of intensity k these are Lim et al.'s R_k = D_k (1 + p_ap), D_k = 1 - (1 - Y_0)
    e^(-eta k), and e_k = Y_0 / 2 + e_mis (1 - e^(-eta k)) + p_ap D_k / 2. (They print the fibre transmittance
    eta_ch in the e_mis term; the photons detected are those of eta = eta_ch eta_Bob, which we use. Read literally,
    their formula makes misalignment errors ten times as frequent and leaves no key for a block of 10^4 even at
    60 km, against the 135 km they report.)

    Both sides choose Z with probability ``p_z``, so n_z[k] = N p_z^2 p_k R_k, n_x[k] = N (1 - p_z)^2 p_k R_k and
    m_x[k] = N (1 - p_z)^2 p_k e_k. The channel is basis-symmetric: the key-basis error rate of intensity k equals
    m_x[k] / n_x[k].

    Returns
    -------
    BlockCounts
        Real (not rounded) expected counts.
    """
    pulses = _real(pulses, "the number of pulses")
    if pulses < 0:
        raise ValueError(f"the number of pulses must be non-negative, not {pulses!r}")
    if not isinstance(settings, DecoySettings):
        raise ValueError(f"settings must be a DecoySettings, not {type(settings).__name__}")
    eta, y0, e_mis = _check_channel(transmittance, dark_count, misalignment)
    p_z = _check_basis_probability(p_z)
    afterpulse = _real(afterpulse, "the afterpulse probability")
    if not 0 <= afterpulse < 1:
        raise ValueError(f"the afterpulse probability must lie in [0, 1), not {afterpulse!r}")
    n_z, n_x, m_x = [], [], []
    for mu, p in zip(settings.intensities, settings.probabilities):
        detection = 1 - (1 - y0) * math.exp(-eta * mu)
        clicks = detection * (1 + afterpulse)
        errors = y0 / 2 + e_mis * -math.expm1(-eta * mu) + afterpulse * detection / 2
        n_z.append(pulses * p_z ** 2 * p * clicks)
        n_x.append(pulses * (1 - p_z) ** 2 * p * clicks)
        m_x.append(pulses * (1 - p_z) ** 2 * p * errors)
    return BlockCounts(tuple(n_z), tuple(n_x), tuple(m_x))
