"""The whole simulated link: optical bench, Alice and Bob over an in-process channel, keys out."""

import unittest

import numpy as np

from qkdlink.host.channel import LocalChannel
from qkdlink.host.entropy import SimulatedEntropy
from qkdlink.host.finite_key import DecoySettings, secret_length
from qkdlink.host.messages import Message
from qkdlink.host.protocol import Alice, Bob, ChoiceMemory, DetectionRecord, ProtocolSettings
from qkdlink.sim import optics
from qkdlink.sim.link import pulses_for, run_link


SOURCE = optics.Source(intensities=(0.6, 0.2, 2e-4), probabilities=(0.5, 0.3, 0.2), p_z=0.8)
RECEIVER = optics.Receiver(p_z=0.8, dead_time=0, afterpulse=0)
SETTINGS = ProtocolSettings(DecoySettings(SOURCE.intensities, SOURCE.probabilities))


def bench(eavesdropper=None, distance=25.0):
    return optics.OpticalBench(source=SOURCE, fibre=optics.Fibre(length_km=distance), receiver=RECEIVER,
                               eavesdropper=eavesdropper)


def run(eavesdropper=None, *, key_bits=10**6, seed=1, blocks=1):
    honest = bench()
    return run_link(bench(eavesdropper), SETTINGS, pulses=pulses_for(honest, key_bits), blocks=blocks,
                    seed=seed)


class HonestLinkTestCase(unittest.TestCase):
    def test_identical_keys_of_the_bound_length(self):
        [block] = run()
        self.assertTrue(block.keys_equal, block.alice.abort_reason or block.bob.abort_reason)
        figures = block.bob.figures
        # The length is what the finite-key bound gives for the block's public counts and the exact leak.
        expected = secret_length(figures["counts"], SETTINGS.decoy, leak_ec=figures["leaked_bits"],
                                 eps_sec=SETTINGS.eps_sec, eps_cor=SETTINGS.eps_cor).length
        self.assertGreater(expected, 0)
        self.assertEqual(block.alice.key.size, expected)
        self.assertEqual(block.alice.figures["leaked_bits"], figures["leaked_bits"],
                         "both sides count the same leak")
        # QBER near the misalignment plus dark counts, far below any attack.
        self.assertLess(figures["qber_z"], 0.015)
        self.assertLess(figures["qber_x"], 0.015)

    def test_keys_differ_between_runs_and_blocks(self):
        first, second = run(blocks=2, key_bits=10**6, seed=5)
        self.assertTrue(first.keys_equal and second.keys_equal)
        size = min(first.alice.key.size, second.alice.key.size)
        # Independent keys agree on about half their bits.
        agreement = np.mean(first.alice.key[:size] == second.alice.key[:size])
        self.assertAlmostEqual(agreement, 0.5, delta=0.01)
        # Authentication: three tags (16 bytes of pad each) a block, two from Alice and one from Bob, however many
        # messages it takes, and at the first tag of the session the hash keys (32 bytes each way).
        self.assertEqual((first.pad_bytes, second.pad_bytes), (2 * 32 + 3 * 16, 3 * 16))


class EavesdropperTestCase(unittest.TestCase):
    def test_full_intercept_resend_aborts(self):
        [block] = run(optics.InterceptResend(fraction=1.0), key_bits=2 * 10**5)
        self.assertIsNone(block.alice.key)
        self.assertIsNone(block.bob.key)
        self.assertAlmostEqual(block.alice.figures["qber_x"], 0.25, delta=0.02)
        self.assertIn("no key can be extracted", block.alice.abort_reason)
        self.assertIn("the peer aborted: no key can be extracted", block.bob.abort_reason)

    def test_partial_attack_shortens_the_key_until_none_is_left(self):
        lengths = []
        for fraction in (0.0, 0.05, 0.1, 0.3):
            [block] = run(optics.InterceptResend(fraction=fraction), seed=11)
            lengths.append(0 if block.alice.key is None else block.alice.key.size)
            if block.alice.key is not None:
                self.assertTrue(block.keys_equal)
        self.assertGreater(lengths[0], lengths[1])
        self.assertGreater(lengths[1], lengths[2])
        self.assertEqual(lengths[3], 0)

    def test_photon_number_splitting_is_seen_by_the_decoys(self):
        [honest] = run(seed=13)
        [attacked] = run(optics.PhotonNumberSplitting(), seed=13)
        attacked_length = 0 if attacked.alice.key is None else attacked.alice.key.size
        self.assertLess(attacked_length, 0.5 * honest.alice.key.size)


class ManInTheMiddle:
    """Bob's endpoint as a man in the middle on his side passes messages on: as they are, unless a subclass says
    otherwise (on a channel without authentication, to see what the protocol itself catches)."""

    def __init__(self, endpoint):
        self.endpoint = endpoint
        self.tampered = False

    def __getattr__(self, name):
        return getattr(self.endpoint, name)


class TamperingEndpoint(ManInTheMiddle):
    """A man in the middle on Bob's side that flips one bit of the first Cascade reply he passes on."""

    def receive(self, kind=None, **kwargs):
        message = self.endpoint.receive(kind, **kwargs)
        if message.kind == "parities" and not self.tampered:
            reply = bytearray(message["reply"])
            reply[-1] ^= 0x01
            self.tampered = True
            message = Message("parities", {"reply": bytes(reply)})
        return message


class NoKeyEndpoint(ManInTheMiddle):
    """A man in the middle that tells Bob, at the end of the block, that Alice has no key."""

    def skip_until(self, kind, **kwargs):
        message, skipped = self.endpoint.skip_until(kind, **kwargs)
        if message.kind == "close":
            self.tampered = True
            message = Message("close", {"key": 0})
        return message, skipped


class ForgedEstimateEndpoint(ManInTheMiddle):
    """A man in the middle that rewrites Alice's estimate so that the X-basis errors exceed the detections."""

    def receive(self, kind=None, **kwargs):
        message = self.endpoint.receive(kind, **kwargs)
        if message.kind == "estimate":
            self.tampered = True
            fields = dict(message.fields)
            fields["m_x"] = fields["n_x"] + 1
            message = Message("estimate", fields)
        return message


class ProtocolFaultTestCase(unittest.TestCase):
    def run_block(self, bob_endpoint_wrapper=lambda endpoint: endpoint, mangle=lambda record: record):
        from concurrent.futures import ThreadPoolExecutor
        link = bench()
        record = optics.run(link, pulses_for(link, 10**6), rng=np.random.default_rng(21))
        alice_end, bob_end = LocalChannel.pair()
        alice = Alice(alice_end, SETTINGS, SimulatedEntropy(1))
        bob = Bob(bob_endpoint_wrapper(bob_end), SETTINGS, SimulatedEntropy(2))
        choices = ChoiceMemory(record.slot, record.alice_basis, record.alice_bit, record.alice_intensity)
        detections = mangle(DetectionRecord(record.slot, record.pattern))
        with ThreadPoolExecutor(2) as pool:
            alice_result = pool.submit(alice.run_block, 0, record.pulses, choices)
            bob_result = pool.submit(bob.run_block, 0, detections)
            return alice_result.result(timeout=120), bob_result.result(timeout=120)

    def test_a_tampered_parity_never_gives_different_keys(self):
        endpoints = []
        alice, bob = self.run_block(lambda endpoint: endpoints.append(TamperingEndpoint(endpoint)) or
                                    endpoints[0])
        self.assertTrue(endpoints[0].tampered, "the man in the middle never saw a Cascade reply")
        # Cascade notices answers that contradict each other, or verification notices keys that still differ;
        # or the flipped parity only cost an extra question. Never a key that differs.
        if alice.key is None or bob.key is None:
            self.assertIsNone(alice.key)
            self.assertIsNone(bob.key)
            self.assertRegex(bob.abort_reason, r"reconciliation failed: Alice's parities contradict each other|"
                                               r"verification failed")
        else:
            np.testing.assert_array_equal(alice.key, bob.key)

    def test_no_key_without_the_peers(self):
        # Bob hears that Alice has no key: he keeps none, and says so in his close, so she keeps none either.
        endpoints = []
        alice, bob = self.run_block(lambda endpoint: endpoints.append(NoKeyEndpoint(endpoint)) or endpoints[0])
        self.assertTrue(endpoints[0].tampered)
        self.assertEqual((alice.key, alice.abort_reason), (None, "the peer has no key"))
        self.assertEqual((bob.key, bob.abort_reason), (None, "the peer has no key"))

    def test_unknown_slot_aborts_both(self):
        def shift(record):
            return DetectionRecord(record.slot + 1, record.pattern)
        alice, bob = self.run_block(mangle=shift)
        self.assertIsNone(alice.key)
        self.assertIsNone(bob.key)
        self.assertIn("slot Alice has no record of", alice.abort_reason)
        self.assertIn("the peer aborted", bob.abort_reason)

    def test_forged_counts_abort_both_sides_at_once(self):
        endpoints = []
        def wrap(endpoint):
            endpoints.append(ForgedEstimateEndpoint(endpoint))
            return endpoints[0]
        alice, bob = self.run_block(wrap)
        self.assertTrue(endpoints[0].tampered)
        self.assertIsNone(alice.key)
        self.assertIsNone(bob.key)
        self.assertIn("invalid data from the peer", bob.abort_reason)
        self.assertIn("the peer aborted: invalid data from the peer", alice.abort_reason)
        # Bob's abort reached Alice at once, not after a receive time-out.
        self.assertLess(alice.figures["seconds"], 30)
