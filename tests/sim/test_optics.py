"""The simulated optical bench against closed forms and a brute-force simulation written out here.

Statistical checks use seeded generators and allow five standard errors, so they are deterministic and fail only if
the model is wrong by several standard errors.
"""

import math
import unittest
from unittest import mock

import numpy as np

from qkdlink.sim import optics
from qkdlink.sim.optics import (Fibre, InterceptResend, OpticalBench, PhotonNumberSplitting, Receiver, Source,
                                gains, register_clicks, run, slot_events)


# Standard errors a statistical check allows.
SIGMAS = 5

IDLE = dict(dead_time=0, afterpulse=0.0)            # a receiver without dead time and afterpulsing


def detector_routes(receiver, basis, bit):
    """Probabilities that a photon prepared in (basis, bit), entering Bob's receiver, reaches Z0, Z1, X0, X1."""
    route = np.zeros(4)
    for arm, share in ((0, receiver.p_z), (1, 1 - receiver.p_z)):
        if arm == basis:
            route[2 * arm + bit] = share * (1 - receiver.misalignment)
            route[2 * arm + 1 - bit] = share * receiver.misalignment
        else:
            route[2 * arm:2 * arm + 2] = share / 2
    return route * receiver.efficiency


def squash_probabilities(pattern):
    """{(basis, bit): probability} of the squashing rule of docs/DESIGN.md for one non-zero pattern.

    Clicks in one basis only: that basis, and the bit of the detector that clicked (random if both did). Clicks in
    both bases: a random basis and a random bit.
    """
    z, x = pattern & 3, pattern >> 2 & 3
    if z and x:
        return {(basis, bit): 0.25 for basis in (0, 1) for bit in (0, 1)}
    basis, lanes = (0, z) if z else (1, x)
    return {(basis, 0): 0.5, (basis, 1): 0.5} if lanes == 3 else {(basis, lanes >> 1): 1.0}


def squash(pattern, rng):
    """The same rule on arrays: (basis, bit) per detection, random where the rule says so."""
    z, x = pattern & 3, pattern >> 2 & 3
    both = (z != 0) & (x != 0)
    basis = np.where(both, rng.integers(0, 2, pattern.size), np.where(z == 0, 1, 0))
    lanes = np.where(basis == 0, z, x)
    bit = np.where(both | (lanes == 3), rng.integers(0, 2, pattern.size), lanes >> 1)
    return basis, bit


def intercept_resend_expectation(bench, fraction, k, basis):
    """Matched-basis QBER in ``basis`` at intensity k under intercept-resend, for a clean receiver.

    No dark counts and no misalignment. A coherent pulse of mean mu' = eta mu at Bob puts independent Poisson
    numbers in the matched arm (mean a) and the other arm (mean o). Squashing gives a matched-basis detection
    with probability s = (1 - e^-a) (e^-o + (1 - e^-o) / 2); an error comes from clicks in both arms (a random
    bit: (1 - e^-a) (1 - e^-o) / 4 of the pulses) and, when Eve's basis was wrong (half her resent pulses), from
    the matched arm's 50/50 split (s / 2). Eve resends only non-empty pulses, A = f (1 - e^-mu) of them.
    """
    receiver = bench.receiver
    mu = bench.source.intensities[k]
    mean = mu * 10 ** (-bench.fibre.attenuation_db_per_km * bench.fibre.length_km / 10) * receiver.efficiency
    share = receiver.p_z if basis == 0 else 1 - receiver.p_z
    matched_arm, other_arm = -math.expm1(-mean * share), -math.expm1(-mean * (1 - share))
    detection = matched_arm * (1 - other_arm + other_arm / 2)
    both_arms = matched_arm * other_arm / 4
    attacked = fraction * -math.expm1(-mu)
    return ((1 - fraction + attacked / 2) * both_arms + attacked * detection / 4) / ((1 - fraction + attacked) *
                                                                                      detection)


def honest_expectation(bench):
    """Gain Q_k, matched-basis probability and QBER per basis and intensity of the honest channel.

    Four detectors click independently for a coherent state, detector d with probability
    1 - (1 - p_dc) exp(-lambda_d); the pattern probability is the product, and the squashing rule gives the basis
    and bit. The gain is 1 - (1 - p_dc)^4 exp(-eta mu), the four-detector form of the GLLP/Lo-Ma-Chen gain.
    """
    source, receiver = bench.source, bench.receiver
    channel = 10 ** (-bench.fibre.attenuation_db_per_km * bench.fibre.length_km / 10)
    p_dc = receiver.dark_count
    count = len(source.intensities)
    gain = np.array([1 - (1 - p_dc) ** 4 * math.exp(-channel * receiver.efficiency * mu)
                     for mu in source.intensities])
    matched = np.zeros((2, count))
    wrong = np.zeros((2, count))
    for k, mu in enumerate(source.intensities):
        for basis in (0, 1):
            share = (source.p_z if basis == 0 else 1 - source.p_z) / 2
            for bit in (0, 1):
                click = 1 - (1 - p_dc) * np.exp(-mu * channel * detector_routes(receiver, basis, bit))
                for pattern in range(1, 16):
                    probability = math.prod(click[d] if pattern >> d & 1 else 1 - click[d] for d in range(4))
                    for (bob_basis, bob_bit), weight in squash_probabilities(pattern).items():
                        if bob_basis == basis:
                            matched[basis, k] += share * probability * weight
                            wrong[basis, k] += share * probability * weight * (bob_bit != bit)
    return gain, matched, wrong / matched


def brute_force(bench, pulses, rng):
    """Every slot drawn and every photon followed (honest channel, no dead time): Alice's intensity, basis and bit
    and Bob's pattern, per slot."""
    source, receiver = bench.source, bench.receiver
    channel = 10 ** (-bench.fibre.attenuation_db_per_km * bench.fibre.length_km / 10)
    basis = (rng.random(pulses) >= source.p_z).astype(int)
    bit = rng.integers(0, 2, pulses)
    intensity = rng.choice(len(source.intensities), pulses, p=source.probabilities)
    photons = rng.poisson(np.array(source.intensities)[intensity])
    surviving = rng.binomial(photons, channel)
    pattern = np.zeros(pulses, dtype=np.int64)
    for prepared_basis in (0, 1):
        for prepared_bit in (0, 1):
            chosen = (basis == prepared_basis) & (bit == prepared_bit)
            route = detector_routes(receiver, prepared_basis, prepared_bit)
            # Each surviving photon lands on one detector or is lost (the fifth outcome).
            landed = rng.multinomial(surviving[chosen], np.append(route, 1 - route.sum()))[:, :4]
            pattern[chosen] = ((landed > 0) << np.arange(4)).sum(axis=1)
    dark = rng.random((pulses, 4)) < receiver.dark_count
    pattern |= (dark << np.arange(4)).sum(axis=1)
    return intensity, basis, bit, pattern


def z_score(count, trials, probability):
    """How many binomial standard errors ``count`` out of ``trials`` lies from ``trials * probability``."""
    spread = math.sqrt(max(trials * probability * (1 - probability), 1e-300))
    return (count - trials * probability) / spread


def two_sample_z(count_a, trials_a, count_b, trials_b):
    pooled = (count_a + count_b) / (trials_a + trials_b)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / trials_a + 1 / trials_b))
    return (count_a / trials_a - count_b / trials_b) / spread


def chi_square_homogeneity(counts_a, counts_b):
    """Chi-square statistic and degrees of freedom that two histograms come from the same distribution."""
    counts_a, counts_b = np.asarray(counts_a, float), np.asarray(counts_b, float)
    total_a, total_b = counts_a.sum(), counts_b.sum()
    cells = (counts_a + counts_b) > 0
    a, b = counts_a[cells], counts_b[cells]
    expected_a = (a + b) * total_a / (total_a + total_b)
    expected_b = (a + b) * total_b / (total_a + total_b)
    statistic = float(((a - expected_a) ** 2 / expected_a + (b - expected_b) ** 2 / expected_b).sum())
    return statistic, int(cells.sum()) - 1


def chi_square_limit(dof):
    """A generous upper limit for a chi-square statistic: mean plus five standard deviations."""
    return dof + SIGMAS * math.sqrt(2 * dof)


def sequential_dead_time(candidates, dead):
    """The non-paralysable rule, one candidate at a time."""
    registered, live_from = [], -math.inf
    for slot in candidates:
        if slot >= live_from:
            registered.append(slot)
            live_from = slot + dead + 1
    return registered


class OpticsTestCase(unittest.TestCase):
    def assertWithin(self, z, message, sigmas=SIGMAS):
        self.assertLess(abs(z), sigmas, f"{message}: {z:.2f} standard errors off")

    def test_gains_and_qber_match_closed_form(self):
        bench = OpticalBench(receiver=Receiver(**IDLE))
        gain, matched, error = honest_expectation(bench)
        # The module's closed form agrees with the one derived here, also at other settings.
        for other in (bench, OpticalBench(Source((0.8, 0.3, 0.0), (0.5, 0.3, 0.2), 0.5), Fibre(0.0),
                                          Receiver(p_z=0.3, efficiency=1.0, dark_count=0.02, misalignment=0.1))):
            expected = honest_expectation(other)
            result = gains(other)
            np.testing.assert_allclose(result.gain, expected[0], rtol=1e-9)
            np.testing.assert_allclose(result.sifted, expected[1], rtol=1e-9)
            np.testing.assert_allclose(result.error, expected[2], rtol=1e-9)
        self.assertAlmostEqual(optics.sifted_key_probability(bench),
                               float(np.dot(bench.source.probabilities, matched[0])), delta=1e-15)

        rng = np.random.default_rng(20260101)
        pulses = 10 ** 8
        record = run(bench, pulses, rng=rng)
        basis, bit = squash(record.pattern, rng)
        for k, p_k in enumerate(bench.source.probabilities):
            mine = record.alice_intensity == k
            self.assertWithin(z_score(mine.sum(), pulses, p_k * gain[k]), f"gain of intensity {k}")
            for b in (0, 1):
                sifted = mine & (record.alice_basis == b) & (basis == b)
                self.assertWithin(z_score(sifted.sum(), pulses, p_k * matched[b, k]),
                                  f"matched-basis detections of intensity {k} in basis {b}")
                errors = (bit[sifted] != record.alice_bit[sifted]).sum()
                self.assertWithin(z_score(errors, sifted.sum(), error[b, k]), f"QBER of intensity {k} in basis {b}")
        # The signal's statistics are large enough for a tight absolute check too.
        signal = (record.alice_intensity == 0) & (record.alice_basis == 0) & (basis == 0)
        self.assertAlmostEqual((bit[signal] != record.alice_bit[signal]).mean(), error[0, 0], delta=3e-4)

    def test_agrees_with_brute_force_per_slot(self):
        bench = OpticalBench(Source((2.0, 0.6, 0.1), (0.4, 0.3, 0.3), p_z=0.6), Fibre(2.0),
                             Receiver(p_z=0.7, efficiency=0.4, dark_count=0.01, misalignment=0.05, **IDLE))
        pulses = 200_000
        intensity, basis, bit, pattern = brute_force(bench, pulses, np.random.default_rng(1))
        record = run(bench, pulses, rng=np.random.default_rng(2))
        self.assertTrue(np.all(np.diff(record.slot) > 0))
        for k in range(3):
            clicked = (intensity == k) & (pattern > 0)
            ours = record.alice_intensity == k
            self.assertWithin(two_sample_z(ours.sum(), pulses, clicked.sum(), pulses), f"click rate of intensity {k}")
            statistic, dof = chi_square_homogeneity(np.bincount(pattern[clicked], minlength=16)[1:],
                                                    np.bincount(record.pattern[ours], minlength=16)[1:])
            self.assertLess(statistic, chi_square_limit(dof), f"pattern distribution of intensity {k}")
            # Alice's basis and bit jointly with the pattern: the Bayes step of the fast simulation.
            brute_cells = (basis[clicked] * 2 + bit[clicked]) * 16 + pattern[clicked]
            our_cells = (record.alice_basis[ours].astype(int) * 2 + record.alice_bit[ours]) * 16 + record.pattern[ours]
            statistic, dof = chi_square_homogeneity(np.bincount(brute_cells, minlength=64),
                                                    np.bincount(our_cells, minlength=64))
            self.assertGreater(dof, 40)
            self.assertLess(statistic, chi_square_limit(dof), f"choices and patterns of intensity {k}")

    def test_dead_time_removes_exactly_the_clicks_inside_the_window(self):
        rng = np.random.default_rng(3)
        three = Receiver(dead_time=3, afterpulse=0.0)
        # Non-paralysable: blocked candidates do not extend the dead time.
        np.testing.assert_array_equal(register_clicks([0, 1, 2, 3, 5, 9, 10, 14], three, rng=rng), [0, 5, 9, 14])
        np.testing.assert_array_equal(register_clicks([0, 2, 4, 6], three, rng=rng), [0, 4])
        np.testing.assert_array_equal(register_clicks([0, 2, 4, 6], Receiver(**IDLE), rng=rng), [0, 2, 4, 6])
        # Afterpulses (certain, one slot after the dead time) register and block like any click: 0 gives 3, 3
        # gives 6 (blocking the candidate at 4), 6 gives 9, and 12 is past the end.
        certain = Receiver(dead_time=2, afterpulse=1 - 1e-15, afterpulse_delay=1.0)
        np.testing.assert_array_equal(register_clicks([0, 4], certain, rng=rng, end=10), [0, 3, 6, 9])
        # Random sparse and dense candidates against the sequential rule (dense ones take the fallback path).
        for density in (0.001, 0.05, 0.5, 1.0):
            for dead in (1, 4, 30):
                candidates = np.flatnonzero(rng.random(20_000) < density)
                np.testing.assert_array_equal(
                    register_clicks(candidates, Receiver(dead_time=dead, afterpulse=0.0), rng=rng),
                    sequential_dead_time(candidates.tolist(), dead), f"density {density}, dead time {dead}")

        # In run(): light so bright and clean that the candidates of a slot follow from Alice's choices: the
        # prepared detector and both detectors of the other basis. Small chunks make dead time cross chunk edges.
        dead = 3
        bench = OpticalBench(Source((1000.0, 600.0, 400.0), (0.5, 0.3, 0.2), 0.5), Fibre(0.0),
                             Receiver(p_z=0.5, efficiency=1.0, dark_count=0.0, misalignment=0.0, dead_time=dead,
                                      afterpulse=0.0))
        first, pulses = 12_345, 3_000
        with mock.patch.object(optics, "_CHUNK_CLICKS", 100):
            record = run(bench, pulses, rng=rng, first_slot=first)
        candidates = {}
        for slot, basis, bit in zip(record.slot.tolist(), record.alice_basis.tolist(), record.alice_bit.tolist()):
            candidates[slot] = {2 * basis + bit, 2 * (1 - basis), 2 * (1 - basis) + 1}
        patterns = dict(zip(record.slot.tolist(), record.pattern.tolist()))
        live_from = [first] * 4
        missing = 0
        for slot in range(first, first + pulses):
            if slot not in patterns:
                # Nothing registered: for some choice of Alice's, every candidate detector was dead.
                missing += 1
                options = [{2 * b + y, 2 * (1 - b), 2 * (1 - b) + 1} for b in (0, 1) for y in (0, 1)]
                self.assertTrue(any(all(slot < live_from[d] for d in option) for option in options), slot)
                continue
            for detector in range(4):
                expected = detector in candidates[slot] and slot >= live_from[detector]
                self.assertEqual(bool(patterns[slot] >> detector & 1), expected, f"slot {slot} detector {detector}")
                if expected:
                    live_from[detector] = slot + dead + 1
        self.assertGreater(missing, 0)

    def test_afterpulses(self):
        # Dark counts only (the light is negligible at 200 km), so the click rate and the gaps between a
        # detector's clicks show the afterpulse cascade: rate p_dc / (1 - p_ap), and after a click the next one
        # comes d + G slots later (an afterpulse, G geometric) with probability p_ap, else after a dark count.
        p_dc, p_ap, dead, delay = 1e-3, 0.3, 2, 5.0
        bench = OpticalBench(Source((2e-3, 1e-3, 0.0), (1 / 3, 1 / 3, 1 / 3)), Fibre(200.0),
                             Receiver(dark_count=p_dc, dead_time=dead, afterpulse=p_ap, afterpulse_delay=delay))
        pulses = 20_000_000
        for chunk in (optics._CHUNK_CLICKS, 300):
            with self.subTest(chunk=chunk), mock.patch.object(optics, "_CHUNK_CLICKS", chunk):
                record = run(bench, pulses, rng=np.random.default_rng(4))
                clicks = gaps = short = 0
                for detector in range(4):
                    slots = record.slot[record.pattern >> detector & 1 == 1]
                    clicks += slots.size
                    gap = np.diff(slots)
                    self.assertTrue(np.all(gap > dead), "a click inside the dead time")
                    gaps += gap.size
                    short += np.count_nonzero(gap <= dead + 20)
                # First order in p_dc * (dead time + delay): the rate loss and dark counts that pre-empt.
                expected_rate = 4 * p_dc / (1 - p_ap) * (1 - p_dc * dead / (1 - p_ap))
                self.assertAlmostEqual(clicks / pulses / expected_rate, 1, delta=0.01)
                expected_short = p_ap * (1 - (1 - 1 / delay) ** 20) + (1 - p_ap) * (1 - (1 - p_dc) ** 20)
                self.assertWithin(z_score(short, gaps, expected_short), "gaps of at most the dead time + 20 slots",
                                  sigmas=SIGMAS + 1)
                # Afterpulse-only slots carry Alice's choices conditioned on no click: here nearly the prior.
                for k in range(3):
                    self.assertWithin(z_score(np.count_nonzero(record.alice_intensity == k), len(record), 1 / 3),
                                      f"intensity {k} among the clicks")

    def test_full_intercept_resend_gives_a_quarter_of_errors(self):
        rng = np.random.default_rng(5)
        clean = Receiver(dark_count=0.0, misalignment=0.0, **IDLE)
        for receiver in (clean, Receiver(**IDLE)):
            bench = OpticalBench(receiver=receiver, eavesdropper=InterceptResend(1.0))
            record = run(bench, 50_000_000, rng=rng)
            basis, bit = squash(record.pattern, rng)
            for k in (0, 1):
                for b in (0, 1):
                    mine = (basis == b) & (record.alice_basis == b) & (record.alice_intensity == k)
                    errors = np.count_nonzero(bit[mine] != record.alice_bit[mine])
                    if receiver is clean:
                        expected = intercept_resend_expectation(bench, 1.0, k, b)
                        self.assertAlmostEqual(expected, 0.25, delta=0.003)     # 1/4 plus rare double clicks
                        self.assertWithin(z_score(errors, mine.sum(), expected), f"QBER of intensity {k}, basis {b}")
                    else:
                        # Misalignment adds e_mis / 2, dark counts next to nothing.
                        self.assertAlmostEqual(errors / mine.sum(), 0.25, delta=0.006 + SIGMAS * 0.433 /
                                               math.sqrt(mine.sum()))
            self.assertAlmostEqual(gains(bench).qber[0], 0.25, delta=0.006)

    def test_partial_intercept_resend_gives_about_a_quarter_of_the_fraction(self):
        # Eve resends only non-empty pulses, so her share of the detections is f (1 - e^-mu) / (f (1 - e^-mu) + 1 -
        # f); a quarter of it are errors. Bright pulses make it f / 4.
        fraction = 0.4
        bench = OpticalBench(Source((4.0, 1.0, 0.25), (0.4, 0.3, 0.3)),
                             receiver=Receiver(dark_count=0.0, misalignment=0.0, **IDLE),
                             eavesdropper=InterceptResend(fraction))
        rng = np.random.default_rng(6)
        record = run(bench, 4_000_000, rng=rng)
        basis, bit = squash(record.pattern, rng)
        result = gains(bench)
        for k in range(3):
            for b in (0, 1):
                expected = intercept_resend_expectation(bench, fraction, k, b)
                self.assertAlmostEqual(result.error[b, k], expected, delta=1e-12)
                mine = (basis == b) & (record.alice_basis == b) & (record.alice_intensity == k)
                errors = np.count_nonzero(bit[mine] != record.alice_bit[mine])
                self.assertWithin(z_score(errors, mine.sum(), expected), f"QBER of intensity {k}, basis {b}")
        signal = (basis == 0) & (record.alice_basis == 0) & (record.alice_intensity == 0)
        self.assertAlmostEqual(np.mean(bit[signal] != record.alice_bit[signal]), fraction / 4, delta=0.005)

    def test_photon_number_splitting_changes_the_decoy_yields(self):
        source = Source((0.5, 0.1, 0.01), (1 / 3, 1 / 3, 1 / 3))
        receiver = Receiver(**IDLE)
        honest = OpticalBench(source, receiver=receiver)
        attacked = OpticalBench(source, receiver=receiver, eavesdropper=PhotonNumberSplitting())

        # Closed form here: Eve forwards n - 1 photons of n >= 2 (lossless), and of single photons the fraction
        # 1 - b; Bob then clicks with 1 - (1 - p_dc)^4 (1 - eta_bob)^m for m photons.
        eta_bob, dark = receiver.efficiency, (1 - receiver.dark_count) ** 4
        channel = 10 ** (-0.2 * 25 / 10)

        def pns_gain(mu, block):
            loss = 1 - eta_bob
            multi = math.exp(-mu) / loss * (math.exp(mu * loss) - 1 - mu * loss)
            single = mu * math.exp(-mu) * (block + (1 - block) * loss)
            return 1 - dark * (math.exp(-mu) + single + multi)

        signal = source.intensities[0]
        honest_signal = 1 - dark * math.exp(-channel * eta_bob * signal)
        block = (pns_gain(signal, 0) - honest_signal) / (pns_gain(signal, 0) - pns_gain(signal, 1))
        self.assertAlmostEqual(optics.pns_block_fraction(attacked), block, delta=1e-9)
        np.testing.assert_allclose(gains(attacked).gain, [pns_gain(mu, block) for mu in source.intensities],
                                   rtol=1e-9)

        pulses = 30_000_000
        honest_record = run(honest, pulses, rng=np.random.default_rng(7))
        attacked_record = run(attacked, pulses, rng=np.random.default_rng(8))
        for k, mu in enumerate(source.intensities):
            trials = pulses * source.probabilities[k]
            ours = np.count_nonzero(attacked_record.alice_intensity == k)
            theirs = np.count_nonzero(honest_record.alice_intensity == k)
            self.assertWithin(z_score(ours, pulses, source.probabilities[k] * pns_gain(mu, block)),
                              f"PNS gain of intensity {k}")
            difference = two_sample_z(ours, trials, theirs, trials)
            if k == 0:
                self.assertWithin(difference, "the signal yield Eve keeps")
            else:
                self.assertLess(difference, -8, f"the yield of intensity {k} should drop under PNS")
        # The QBER does not betray her.
        basis, bit = squash(attacked_record.pattern, np.random.default_rng(9))
        mine = (basis == attacked_record.alice_basis) & (attacked_record.alice_intensity == 0)
        errors = np.count_nonzero(bit[mine] != attacked_record.alice_bit[mine])
        self.assertWithin(z_score(errors, mine.sum(), gains(honest).qber[0]), "signal QBER under PNS")
        # Where lossless forwarding of the multi-photon pulses alone beats the honest gain, she cannot hide.
        with self.assertRaisesRegex(ValueError, r"cannot keep the signal gain"):
            gains(OpticalBench(source, Fibre(0.0), receiver, PhotonNumberSplitting()))

    def test_slot_events_consistent_with_run(self):
        bench = OpticalBench(Source((2.0, 0.5, 0.05), (0.5, 0.3, 0.2), p_z=0.6), Fibre(1.0),
                             Receiver(p_z=0.6, efficiency=0.5, dark_count=0.01, misalignment=0.05, dead_time=3,
                                      afterpulse=0.2, afterpulse_delay=3.0, jitter_ns=0.2),
                             slot_rate_hz=50e6, frame_slots=256)
        rng = np.random.default_rng(10)
        blocks, slots = 60, 400
        period = 20.0
        event_patterns, event_intensity = [], []
        for block in range(blocks):
            first = 1_000_000 + block * 777
            events = slot_events(bench, first, slots, rng=rng)
            self.assertEqual(events.alice_basis.size, slots)
            self.assertEqual(events.slot_ns, period)
            self.assertTrue(np.all(np.diff(events.time_ns) >= 0))
            self.assertTrue(np.all((events.slot >= first) & (events.slot < first + slots)))
            offset = events.time_ns - events.slot * period
            photon = events.cause == optics.PHOTON
            self.assertTrue(np.all(np.abs(offset[photon] - period / 2) < 6 * 0.2))
            self.assertTrue(np.all((offset[~photon] >= 0) & (offset[~photon] < period)))
            for detector in range(4):
                mine = np.sort(events.slot[events.detector == detector])
                self.assertTrue(np.all(np.diff(mine) > 3), "a click inside the dead time")
            event_patterns.append(events.patterns())
            event_intensity.append(events.alice_intensity)
        event_patterns = np.concatenate(event_patterns)
        event_intensity = np.concatenate(event_intensity)
        self.assertEqual(set(np.unique(events.cause)), {optics.PHOTON, optics.DARK, optics.AFTERPULSE})

        # run() over blocks of the same length, so that the edges (live detectors at the start, afterpulses
        # dropped at the end) weigh the same.
        run_patterns = np.zeros(0, dtype=np.uint8)
        run_intensity = np.zeros(0, dtype=np.uint8)
        run_blocks = 1000
        for block in range(run_blocks):
            record = run(bench, slots, rng=rng, first_slot=block * slots)
            run_patterns = np.concatenate((run_patterns, record.pattern))
            run_intensity = np.concatenate((run_intensity, record.alice_intensity))
        for k in range(3):
            pulses = blocks * slots
            self.assertWithin(z_score(np.count_nonzero(event_intensity == k), pulses, bench.source.probabilities[k]),
                              f"Alice's intensity {k}")
            sent = np.count_nonzero(event_intensity == k)
            clicked = np.count_nonzero(event_patterns[event_intensity == k])
            expected = np.count_nonzero(run_intensity == k) / (run_blocks * slots * bench.source.probabilities[k])
            self.assertWithin(z_score(clicked, sent, expected), f"click rate of intensity {k}", sigmas=SIGMAS + 1)
            statistic, dof = chi_square_homogeneity(np.bincount(event_patterns[event_intensity == k], minlength=16)[1:],
                                                    np.bincount(run_patterns[run_intensity == k], minlength=16)[1:])
            self.assertLess(statistic, chi_square_limit(dof), f"pattern distribution of intensity {k}")

    def test_slots_frames_and_reproducibility(self):
        bench = OpticalBench(frame_slots=1 << 10)
        first = 5 * (1 << 10) - 100
        one = run(bench, 200_000, rng=np.random.default_rng(11), first_slot=first)
        two = run(bench, 200_000, rng=np.random.default_rng(11), first_slot=first)
        for name in ("slot", "alice_basis", "alice_bit", "alice_intensity", "pattern"):
            np.testing.assert_array_equal(getattr(one, name), getattr(two, name))
        self.assertEqual(one.pulses, 200_000)
        self.assertEqual(one.slot.dtype, np.int64)
        for name in ("alice_basis", "alice_bit", "alice_intensity", "pattern"):
            self.assertEqual(getattr(one, name).dtype, np.uint8)
        self.assertTrue(np.all(np.diff(one.slot) > 0))
        self.assertTrue(np.all((one.slot >= first) & (one.slot < first + 200_000)))
        self.assertTrue(np.all((one.pattern > 0) & (one.pattern < 16)))
        np.testing.assert_array_equal(one.frame, one.slot // 1024)
        self.assertEqual(int(one.frame.min()), 4)
        empty = run(bench, 0, rng=np.random.default_rng(12))
        self.assertEqual((empty.pulses, len(empty)), (0, 0))

    def test_bad_parameters_raise_clear_errors(self):
        cases = [
            (lambda: Fibre(-1.0), r"fibre length must be at least 0 km, not -1\.0"),
            (lambda: Fibre(10.0, -0.2), r"attenuation must be at least 0 dB/km"),
            (lambda: Source((0.1, 0.5, 0.0)), r"strictly decreasing .* not \(0\.1, 0\.5, 0\.0\)"),
            (lambda: Source((0.5, 0.5, 0.0)), r"strictly decreasing"),
            (lambda: Source((0.5, 0.1, -0.1)), r"non-negative"),
            (lambda: Source(probabilities=(0.5, 0.2, 0.2)), r"must sum to 1, not 0\.9"),
            (lambda: Source(probabilities=(1.2, -0.1, -0.1)), r"must lie in \[0, 1\], not 1\.2"),
            (lambda: Source(probabilities=(0.5, 0.5)), r"3 intensities need as many probabilities"),
            (lambda: Source(p_z=1.0), r"source's p_z must lie in \(0, 1\), not 1\.0"),
            (lambda: Source(p_z=0), r"source's p_z must lie in \(0, 1\), not 0"),
            (lambda: Receiver(p_z=0.0), r"receiver's p_z must lie in \(0, 1\)"),
            (lambda: Receiver(efficiency=0.0), r"efficiency must lie in \(0, 1\], not 0\.0"),
            (lambda: Receiver(efficiency=1.5), r"efficiency must lie in \(0, 1\], not 1\.5"),
            (lambda: Receiver(dark_count=1.0), r"dark-count probability must lie in \[0, 1\)"),
            (lambda: Receiver(misalignment=0.7), r"misalignment must lie in \[0, 0\.5\]"),
            (lambda: Receiver(dead_time=-1), r"dead time \(in slots\) must be an integer of at least 0, not -1"),
            (lambda: Receiver(dead_time=2.5), r"dead time .* not 2\.5"),
            (lambda: Receiver(afterpulse_delay=0.5), r"mean afterpulse delay must be at least 1 slot"),
            (lambda: Receiver(jitter_ns=float("nan")), r"timing jitter must be finite"),
            (lambda: InterceptResend(1.5), r"intercepted fraction must lie in \[0, 1\], not 1\.5"),
            (lambda: PhotonNumberSplitting(-0.1), r"blocked single-photon fraction"),
            (lambda: OpticalBench(eavesdropper="eve"), r"eavesdropper must be None"),
            (lambda: OpticalBench(slot_rate_hz=0), r"slot rate must be positive"),
            (lambda: OpticalBench(frame_slots=0), r"frame_slots must be an integer of at least 1"),
            (lambda: run(OpticalBench(), -1, rng=np.random.default_rng()), r"number of pulses .* not -1"),
            (lambda: run(OpticalBench(), 10, rng=np.random.default_rng(), first_slot=-5), r"first slot .* -5"),
            (lambda: run(OpticalBench(), 1.5, rng=np.random.default_rng()), r"number of pulses .* not 1\.5"),
            (lambda: slot_events(OpticalBench(), 0, -1, rng=np.random.default_rng()), r"number of slots"),
            (lambda: register_clicks([3, 3], Receiver(), rng=np.random.default_rng()), r"strictly increasing"),
        ]
        for make, message in cases:
            with self.subTest(message=message), self.assertRaisesRegex(ValueError, message):
                make()
        with self.assertRaisesRegex(TypeError, r"rng must be a numpy.random.Generator"):
            run(OpticalBench(), 10, rng=42)
