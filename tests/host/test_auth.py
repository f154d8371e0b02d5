import math
import os
import tempfile
import unittest
from pathlib import Path

import numpy as np

from qkdlink.host.auth import (TAGGED, UNTAGGED, Authenticator, AuthenticationFailed, PadExhausted, PadPool, StorePad, STREAMS,
                               MAX_SPAN, PolyHash, forgery_probability, pad_cost, poly_hash, refill, skip_to,
                               split_key)
from qkdlink.host.channel import ChannelClosed


P = 2**127 - 1


def reference_hash(key, data, *, prime=P, chunk=15):
    """h_k(x) written out from the module docstring: sum of c_i k^(L-i+1), c_i = chunk + 2^(8 len(chunk))."""
    chunks = [data[i:i + chunk] for i in range(0, len(data), chunk)]
    coefficients = [int.from_bytes(c, "little") + 2**(8 * len(c)) for c in chunks]
    return sum(c * pow(key, len(chunks) - i, prime) for i, c in enumerate(coefficients)) % prime


def reference_data(label, tagged, sequence, payload):
    """The authenticated data of one message, as the module docstring lays it out."""
    return (bytes([len(label)]) + label.encode() + bytes([0xA5 if tagged else 0x5A]) + sequence.to_bytes(8, "little") +
            len(payload).to_bytes(8, "little") + payload)


def reference_frame(tagged, sequence, payload, span=b"", hash_key=None, r=None):
    """The frame of the module docstring; a tagged one's tag covers the authenticated data ``span`` (the span's
    untagged messages and this one), with the hash key (k, b) and the pad element r."""
    frame = bytes([0xA5 if tagged else 0x5A]) + sequence.to_bytes(8, "little") + payload
    if tagged:
        k, b = hash_key
        frame += ((reference_hash(k, span) + b + r) % P).to_bytes(16, "little")
    return frame


def pads(nbytes=1 << 16, seed=None):
    """Alice's and Bob's copies of the same pad."""
    secret = os.urandom(2 * nbytes) if seed is None else np.random.default_rng(seed).bytes(2 * nbytes)
    return PadPool.from_secret(secret), PadPool.from_secret(secret)


def session(rekey_interval=1024, **kwargs):
    alice_pad, bob_pad = pads(**kwargs)
    return (Authenticator(alice_pad, "alice", rekey_interval=rekey_interval),
            Authenticator(bob_pad, "bob", rekey_interval=rekey_interval), alice_pad, bob_pad)


class RecordingPad(PadPool):
    """A pool that records where each take started and how long it was."""

    def __init__(self, streams):
        super().__init__(streams)
        self.takes = []

    def take(self, stream, nbytes):
        position = self.position(stream)
        data = super().take(stream, nbytes)
        self.takes.append((stream, position, nbytes))
        return data


class PolyHashTestCase(unittest.TestCase):
    def test_matches_the_documented_polynomial(self):
        rng = np.random.default_rng(1)
        for length in [0, 1, 14, 15, 16, 29, 30, 31, 100, 1000]:
            data = rng.bytes(length)
            key = int.from_bytes(rng.bytes(16), "little") % P
            self.assertEqual(poly_hash(key, data), reference_hash(key, data), f"length {length}")

    def test_almost_delta_universal_exhaustively_on_a_small_field(self):
        # On Z_8191 with 1-byte chunks, count for every difference delta the keys k with
        # h_k(x) - h_k(x') = delta: the bound says at most L (chunks of the longer input) for x != x'.
        # A hash without the length marker fails here: b"a" and b"a\x00", or b"" and b"\x00", would collide
        # for every key.
        prime = 8191
        rng = np.random.default_rng(2)
        pairs = [(b"", b"\x00"), (b"a", b"a\x00"), (b"\x00a", b"a"), (b"ab", b"ba"), (b"\x01\x00", b"\x01"),
                 (b"\x00\x00\x00", b"\x00\x00"), (b"xyz", b"xzy"), (b"\xff" * 4, b"\xfe" + b"\xff" * 3)]
        pairs += [(rng.bytes(int(n)), rng.bytes(int(m))) for n, m in rng.integers(0, 6, size=(8, 2))]
        for x, y in pairs:
            if x == y:
                continue
            differences = [(poly_hash(k, x, prime=prime, chunk=1) - poly_hash(k, y, prime=prime, chunk=1)) % prime
                           for k in range(prime)]
            worst = np.bincount(differences, minlength=prime).max()
            self.assertLessEqual(worst, max(len(x), len(y)), f"{x!r} {y!r}")

    def test_incremental_hash_is_the_hash_of_the_whole(self):
        rng = np.random.default_rng(11)
        for _ in range(50):
            data = rng.bytes(int(rng.integers(0, 200)))
            key = int.from_bytes(rng.bytes(16), "little") % P
            cuts = sorted(int(c) for c in rng.integers(0, len(data) + 1, size=int(rng.integers(0, 6))))
            hasher = PolyHash(key)
            for start, end in zip([0, *cuts], [*cuts, len(data)]):
                hasher.update(data[start:end])
            self.assertEqual(hasher.value(), reference_hash(key, data), f"{len(data)} bytes cut at {cuts}")
            self.assertEqual(hasher.nbytes, len(data))

    def test_chunks_must_fit_the_field(self):
        with self.assertRaisesRegex(ValueError, r"2-byte chunks do not fit below 8191"):
            poly_hash(1, b"ab", prime=8191, chunk=2)

    def test_forgery_probability(self):
        # 28 bytes of label, flag, sequence number and length come before each payload.
        for nbytes in [0, 1000, 2**20]:
            self.assertEqual(forgery_probability(nbytes), math.ceil((28 + nbytes) / 15) / P)
            self.assertEqual(forgery_probability(nbytes, messages=10), math.ceil((280 + nbytes) / 15) / P)
        self.assertLess(forgery_probability(2**30), 2.0**-100)
        self.assertLess(forgery_probability(MAX_SPAN, messages=0), 2.0**-94.9)


class AuthenticatorTestCase(unittest.TestCase):
    def test_frames_are_as_documented(self):
        secret = np.random.default_rng(3).bytes(4096)
        pad = PadPool.from_secret(secret)
        stream = secret[:2048]          # "alice->bob" is the first half
        alice = Authenticator(pad, "alice", rekey_interval=2)
        offset = 0

        def draw():
            nonlocal offset
            value = int.from_bytes(stream[offset:offset + 16], "little") & P
            offset += 16
            self.assertNotEqual(value, P)
            return value

        # Spans: [0], [1 2 3], [4], [5 6]. Draw order: k and b where the spans of tags 0 and 2 start (rekey
        # interval 2: messages 0 and 4), r at every tag.
        messages = [(b"first", True), (b"", False), (b"x" * 40, False), (b"last one", True), (b"a", True),
                    (b"b", False), (b"c", True)]
        span = b""
        for sequence, (payload, tagged) in enumerate(messages):
            if not span and sequence in (0, 4):
                hash_key = draw(), draw()
            span += reference_data("alice->bob", tagged, sequence, payload)
            expected = (reference_frame(True, sequence, payload, span, hash_key, draw()) if tagged else
                        reference_frame(False, sequence, payload))
            self.assertEqual(alice.seal(payload, tagged=tagged), expected, f"message {sequence}")
            span = b"" if tagged else span
        self.assertEqual(pad.position("alice->bob"), offset)
        self.assertEqual(offset, 16 * (2 * 2 + 4))
        self.assertEqual(alice.pad_consumed, {"alice->bob": offset, "bob->alice": 0})
        self.assertEqual((alice.sent, alice.tags_sent), (7, 4))

    def test_round_trips_keep_the_pads_in_step(self):
        alice, bob, alice_pad, bob_pad = session(rekey_interval=100, nbytes=1 << 17)
        rng = np.random.default_rng(4)
        n = 1500
        for i in range(n):
            message = rng.bytes(int(rng.integers(0, 200)))
            self.assertEqual(bob.open(alice.seal(message)), message)
            self.assertEqual(alice.open(bob.seal(message[::-1])), message[::-1])
        # 16 bytes per message, 32 more for each hash key (messages 0, 100, ..., 1400).
        cost = 16 * n + 32 * 15
        self.assertEqual(pad_cost(n, rekey_interval=100), cost)
        for stream in STREAMS:
            self.assertEqual(alice_pad.position(stream), cost)
            self.assertEqual(bob_pad.position(stream), cost)
        self.assertEqual(alice.pad_consumed, dict.fromkeys(STREAMS, cost))
        self.assertEqual(bob.pad_consumed, alice.pad_consumed)
        self.assertEqual((alice.sent, alice.received, bob.sent, bob.received), (n, n, n, n))

    def test_takes_are_contiguous_and_never_overlap(self):
        secret = os.urandom(8192)
        streams, _ = split_key(secret, 4096)
        alice_pad, bob_pad = RecordingPad(streams), RecordingPad(streams)
        alice = Authenticator(alice_pad, "alice", rekey_interval=3)
        bob = Authenticator(bob_pad, "bob", rekey_interval=3)
        for i in range(20):
            bob.open(alice.seal(bytes([i])))
            alice.open(bob.seal(bytes([i, i])))
        for pad in alice_pad, bob_pad:
            for stream in STREAMS:
                takes = [(position, nbytes) for s, position, nbytes in pad.takes if s == stream]
                ends = [0] + [position + nbytes for position, nbytes in takes[:-1]]
                self.assertEqual([position for position, _ in takes], ends)
        self.assertEqual(alice_pad.takes, [(s, p, n) for s, p, n in bob_pad.takes])

    def test_every_single_bit_flip_is_detected(self):
        alice = session(seed=5)[0]
        frame = alice.seal(b"hello")
        following = alice.seal(b"next")
        for bit in range(8 * len(frame)):
            _, bob, _, _ = session(seed=5)
            tampered = bytearray(frame)
            tampered[bit // 8] ^= 1 << bit % 8
            with self.subTest(bit=bit):
                with self.assertRaises(AuthenticationFailed) as caught:
                    bob.open(bytes(tampered))
                self.assertEqual(caught.exception.kind, "malformed" if bit < 8 else "sequence" if bit < 72 else "tag")
        _, bob, _, _ = session(seed=5)
        self.assertEqual(bob.open(frame), b"hello")
        self.assertEqual(bob.open(following), b"next")

    def test_untagged_messages_wait_for_their_tag(self):
        alice, bob, alice_pad, bob_pad = session(seed=7)
        payloads = [b"sift", b"", b"estimate" * 100, b"close"]
        frames = [alice.seal(payload, tagged=index == 3) for index, payload in enumerate(payloads)]
        for index, frame in enumerate(frames[:3]):
            self.assertEqual(bob.open(frame, untagged=True), payloads[index])
            self.assertEqual(bob.unverified, index + 1)
        self.assertEqual(bob.open(frames[3]), b"close")
        self.assertEqual(bob.unverified, 0)
        # One hash key and one tag for the four messages, on both sides.
        self.assertEqual(alice_pad.position("alice->bob"), 48)
        self.assertEqual(bob_pad.position("alice->bob"), 48)
        self.assertEqual((bob.received, bob.tags_received), (4, 1))

    def test_untagged_only_where_the_receiver_allows_it(self):
        # A man in the middle strips the tag of a message that must come tagged and rewrites it.
        alice, bob, _, _ = session(seed=10)
        frame = alice.seal(b"prepare block 7")
        stripped = bytes([UNTAGGED]) + frame[1:9] + b"prepare block 8"
        self.check_fails(bob, stripped, "untagged", r"message 0 came untagged where a tagged one was due")
        with self.assertRaisesRegex(AuthenticationFailed, r"session ended"):
            bob.open(frame)
        # A receiver that opens a message untagged before it knows its kind checks afterwards.
        alice, bob, _, _ = session(seed=10)
        bob.expect_verified()
        self.assertEqual(bob.open(alice.seal(b"sift", tagged=False), untagged=True), b"sift")
        with self.assertRaisesRegex(AuthenticationFailed, r"the close message came untagged .*: message 0 is "
                                                          r"unverified") as caught:
            bob.expect_verified("the close message")
        self.assertEqual(caught.exception.kind, "untagged")

    def test_a_tampered_untagged_message_fails_at_its_tag(self):
        alice = session(seed=8)[0]
        frames = [alice.seal(payload, tagged=False) for payload in (b"one", b"two", b"three")]
        frames.append(alice.seal(b"tag", tagged=True))
        frames.append(alice.seal(b"after", tagged=True))
        untagged_as_tagged = bytes([TAGGED]) + frames[2][1:]
        tag_stripped = bytes([UNTAGGED]) + frames[3][1:-16]
        for name, tampered, kind, pattern in [
                ("payload bit", [frames[0], frames[1][:-1] + b"u", *frames[2:4]], "tag",
                 r"messages 0-3 \(\d+ bytes with their headers\) have a wrong tag"),
                ("dropped", [frames[0], frames[2]], "sequence", r"message number 2 where 1"),
                ("replayed", [frames[0], frames[0]], "sequence", r"message number 0 where 1"),
                ("cut short", [frames[0], frames[1], frames[2][:-1], frames[3]], "tag", r"messages 0-3"),
                ("flag set", [frames[0], frames[1], untagged_as_tagged], "truncated",
                 r"tagged frame of 14 bytes"),
                ("tag moved", [frames[0], frames[1], untagged_as_tagged + frames[3][-16:]], "tag", r"messages 0-2"),
                ("tag stripped", [*frames[:3], tag_stripped, frames[4]], "tag", r"messages 0-4"),
                ("unknown flag", [bytes([2]) + frames[0][1:]], "malformed", r"frame flag 0x02 is neither untagged \(0x5a\) nor tagged \(0xa5\)")]:
            with self.subTest(name):
                bob = session(seed=8)[1]
                for frame in tampered[:-1]:
                    bob.open(frame, untagged=True)
                self.check_fails(bob, tampered[-1], kind, pattern, untagged=True)

    def test_spans_are_bounded(self):
        # A sender tags a message that would take its span past half the bound; a receiver fails a longer span.
        alice, bob, _, _ = session(seed=9)
        alice.max_span = bob.max_span = 400
        frames = [alice.seal(bytes(50), tagged=False) for _ in range(4)]
        self.assertEqual([frame[0] for frame in frames], [UNTAGGED, UNTAGGED, TAGGED, UNTAGGED])   # 78 bytes each
        with self.assertRaisesRegex(ValueError, r"a 200-byte message is more than half the 400 bytes"):
            alice.seal(bytes(200))
        for frame in frames[:3]:
            bob.open(frame, untagged=True)
        self.assertEqual(bob.unverified, 0)
        _, _, alice_pad, bob_pad = session(seed=9)
        greedy = Authenticator(alice_pad, "alice", max_span=10**6)
        bob = Authenticator(bob_pad, "bob", max_span=400)
        frames = [greedy.seal(bytes(100), tagged=False) for _ in range(4)]
        for frame in frames[:3]:
            bob.open(frame, untagged=True)
        self.check_fails(bob, frames[3], "oversize", r"messages 0-3 hold 512 bytes without a tag, more than the 400",
                         untagged=True)

    def check_fails(self, receiver, frame, kind, pattern, *, untagged=False):
        with self.assertRaisesRegex(AuthenticationFailed, pattern) as caught:
            receiver.open(frame, untagged=untagged)
        self.assertEqual(caught.exception.kind, kind)
        self.assertIsInstance(caught.exception, ChannelClosed)

    def test_replay(self):
        alice, bob, _, _ = session()
        first = alice.seal(b"one")
        bob.open(first)
        self.check_fails(bob, first, "sequence", r"bob: authentication failed on alice->bob: message number 0 "
                                                 r"where 1 was expected")

    def test_replay_with_the_sequence_number_rewritten(self):
        alice, bob, _, _ = session()
        first = alice.seal(b"one")
        bob.open(first)
        alice.seal(b"two")
        self.check_fails(bob, first[:1] + (1).to_bytes(8, "little") + first[9:], "tag",
                         r"message 1 \(3 bytes\) has a wrong tag")

    def test_reorder(self):
        alice, bob, _, _ = session()
        alice.seal(b"one")
        second = alice.seal(b"two")
        self.check_fails(bob, second, "sequence", r"message number 1 where 0 was expected")

    def test_reflection(self):
        alice = session()[0]
        frame = alice.seal(b"one")       # message 0 of alice->bob, sent back to Alice as message 0 of bob->alice
        self.check_fails(alice, frame, "tag", r"alice: authentication failed on bob->alice: message 0")

    def test_truncation_and_extension(self):
        frame = session(seed=6)[0].seal(b"a longer message")
        for name, tampered, kind in [("last byte cut", frame[:-1], "tag"),
                                     ("payload cut", frame[:9 + 5] + frame[-16:], "tag"),
                                     ("payload extended", frame[:-16] + b"!" + frame[-16:], "tag"),
                                     ("shorter than a tag", frame[:24], "truncated"),
                                     ("shorter than a header", frame[:8], "truncated"),
                                     ("empty", b"", "truncated")]:
            with self.subTest(name):
                self.check_fails(session(seed=6)[1], tampered, kind, "authentication failed")

    def test_replay_into_a_new_session(self):
        alice, bob, _, bob_pad = session()
        frame = alice.seal(b"one")
        bob.open(frame)
        # A new session continues on the same pads with fresh hash keys: the old frame 0 is not valid there.
        self.check_fails(Authenticator(bob_pad, "bob"), frame, "tag", r"wrong tag")

    def test_refuses_use_after_a_failure(self):
        alice, bob, _, bob_pad = session()
        with self.assertRaises(AuthenticationFailed):
            bob.open(alice.seal(b"one")[:-1])
        position = bob_pad.position("bob->alice")
        for action in (lambda: bob.seal(b"x"), lambda: bob.open(alice.seal(b"two"))):
            with self.assertRaisesRegex(AuthenticationFailed, r"the session ended .*wrong tag.*no further"):
                action()
        self.assertEqual(bob_pad.position("bob->alice"), position)

    def test_exhausted_pad_is_an_error_not_a_reuse(self):
        secret = os.urandom(64)
        # Alice's stream holds the hash key and two tags (64 bytes) and 8 bytes more.
        alice_pad = PadPool({"alice->bob": secret + secret[:8]})
        alice = Authenticator(alice_pad, "alice")
        alice.seal(b"one")
        alice.seal(b"two")
        with self.assertRaisesRegex(PadExhausted, r"the authentication pad 'alice->bob' holds 8 bytes, 16 needed"):
            alice.seal(b"three")
        self.assertEqual((alice_pad.available("alice->bob"), alice_pad.position("alice->bob")), (8, 64))
        with self.assertRaisesRegex(AuthenticationFailed, r"session ended.*holds 8 bytes"):
            alice.seal(b"three")
        self.assertEqual(alice.sent, 2)

    def test_roles_and_settings(self):
        pad = PadPool()
        with self.assertRaisesRegex(ValueError, r"role must be one of alice, bob, not 'eve'"):
            Authenticator(pad, "eve")
        with self.assertRaisesRegex(ValueError, r"rekey interval must be a positive integer, not 0"):
            Authenticator(pad, "alice", rekey_interval=0)


class PadTestCase(unittest.TestCase):
    def test_pool_erases_what_it_hands_out(self):
        pool = PadPool({"alice->bob": b"abcdef"})
        self.assertEqual(pool.take("alice->bob", 2), b"ab")
        self.assertEqual(pool.take("alice->bob", 0), b"")
        self.assertEqual(pool.take("alice->bob", 3), b"cde")
        self.assertNotIn(b"abcde", bytes(pool._data["alice->bob"]))
        pool.add("alice->bob", b"gh")
        self.assertEqual((pool.available("alice->bob"), pool.position("alice->bob")), (3, 5))
        self.assertEqual(pool.take("alice->bob", 3), b"fgh")
        with self.assertRaisesRegex(PadExhausted, r"'bob->alice' holds 0 bytes, 1 needed"):
            pool.take("bob->alice", 1)

    def test_split_and_refill(self):
        key = bytes(range(100))
        streams, rest = split_key(key, 10)
        self.assertEqual(streams, {"alice->bob": key[:10], "bob->alice": key[10:20]})
        self.assertEqual(rest, key[20:])
        streams, rest = split_key(key, {"bob->alice": 5})
        self.assertEqual(streams, {"alice->bob": b"", "bob->alice": key[:5]})
        self.assertEqual(rest, key[5:])
        with self.assertRaisesRegex(ValueError, r"a 100-byte key cannot give 102 bytes"):
            split_key(key, 51)
        with self.assertRaisesRegex(ValueError, r"unknown streams \['eve'\]"):
            split_key(key, {"eve": 1})

        # Both sides refill from the same distilled key and go on in step.
        alice, bob, alice_pad, bob_pad = session(nbytes=48)
        bob.open(alice.seal(b"last message the pad allows"))
        with self.assertRaises(PadExhausted):
            Authenticator(alice_pad, "alice").seal(b"one more")
        distilled = os.urandom(1000)
        for pad in alice_pad, bob_pad:
            self.assertEqual(refill(pad, distilled, 200), distilled[400:])
        alice, bob = Authenticator(alice_pad, "alice"), Authenticator(bob_pad, "bob")
        for i in range(8):
            self.assertEqual(bob.open(alice.seal(bytes([i]))), bytes([i]))
            self.assertEqual(alice.open(bob.seal(bytes([i]))), bytes([i]))

    def test_skip_to(self):
        pool = PadPool({"alice->bob": bytes(100)})
        pool.take("alice->bob", 10)
        self.assertEqual(skip_to(pool, "alice->bob", 40, max_skip=30), 30)
        self.assertEqual(pool.position("alice->bob"), 40)
        self.assertEqual(skip_to(pool, "alice->bob", 20, max_skip=30), 0)
        with self.assertRaisesRegex(ValueError, r"the peer is 31 bytes ahead on 'alice->bob', more than the 30"):
            skip_to(pool, "alice->bob", 71, max_skip=30)
        self.assertEqual(pool.position("alice->bob"), 40)

    def test_key_store_reserve(self):
        from qkdlink.host.keystore import KeyStore
        with tempfile.TemporaryDirectory() as directory, KeyStore(Path(directory) / "keys.db") as store:
            pad = StorePad(store)
            secret = os.urandom(200)
            refill(pad, secret, 100)
            self.assertEqual(pad.take("alice->bob", 40), secret[:40])
            self.assertEqual((pad.position("alice->bob"), pad.available("alice->bob")), (40, 60))
            self.assertEqual(pad.position("bob->alice"), 0)
            with self.assertRaises(PadExhausted):
                pad.take("bob->alice", 101)
            self.assertEqual(pad.take("bob->alice", 100), secret[100:])
