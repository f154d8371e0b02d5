import os
import socket
import struct
import threading
import time
import unittest
from contextlib import ExitStack

import numpy as np

from qkdlink.host.auth import STREAMS, PadExhausted, PadPool
from qkdlink.host.channel import AuthenticationFailed, ChannelClosed, LocalChannel, connect, listen
from qkdlink.host.messages import Message, ProtocolError


TIMEOUT = 5.0                   # seconds: every wait in these tests is bounded by this
FIRST_MESSAGE = 2               # frames 0 and 1 of each direction are the hello and the handshake confirmation
CUT = object()                  # in a proxy's forward list: close both connections here


def pads(nbytes=1 << 16):
    """Alice's and Bob's copies of the same pre-shared pad."""
    secret = os.urandom(2 * nbytes)
    return PadPool.from_secret(secret), PadPool.from_secret(secret)


def cost(tags, rekey_interval=1024):
    """Pad bytes a direction takes for a session of ``tags`` tags (the handshake confirmation's included): 16 per
    tag and 32 per hash key, one at the start and one every ``rekey_interval`` tags."""
    return 16 * tags + 32 * -(-tags // rekey_interval)


def recv_exactly(sock, count):
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def frame_of(header_and_body, *, sequence=None, body=None):
    """Rebuild a frame (length prefix included) with another sequence number or body."""
    old = header_and_body[4:]
    body = old if body is None else body
    if sequence is not None:
        body = body[:1] + struct.pack("<Q", sequence) + body[9:]
    return struct.pack("<I", len(body)) + body


def flip(frame, byte, bit=0):
    tampered = bytearray(frame)
    tampered[byte] ^= 1 << bit
    return bytes(tampered)


class Proxy:
    """A man in the middle on loopback, between Alice (who connects to it) and Bob's listener.

    It relays whole frames; ``tamper(direction, index, frame)`` sees each one (length prefix included; ``index``
    counts the frames of ``direction``, the hello being 0) and returns the frames to pass on and the frames to
    send back to where this one came from.
    """

    def __init__(self, target, tamper=None):
        self.target = target
        self.tamper = tamper or (lambda direction, index, frame: ([frame], []))
        self.frames = {stream: [] for stream in STREAMS}
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(TIMEOUT)
        self.address = self._listener.getsockname()
        self._sockets = []
        self._locks = {}
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        try:
            client, _ = self._listener.accept()
        except OSError:
            return
        self._sockets.append(client)
        try:
            server = socket.create_connection(self.target, timeout=TIMEOUT)
        except OSError:
            self._cut()
            return
        self._sockets.append(server)
        for sock in self._sockets:
            sock.settimeout(TIMEOUT)
            self._locks[sock] = threading.Lock()
        relays = [threading.Thread(target=self._relay, args=(client, server, "alice->bob"), daemon=True),
                  threading.Thread(target=self._relay, args=(server, client, "bob->alice"), daemon=True)]
        for relay in relays:
            relay.start()
        for relay in relays:
            relay.join(2 * TIMEOUT)

    def _relay(self, source, destination, direction):
        try:
            while (header := recv_exactly(source, 4)) is not None:
                body = recv_exactly(source, struct.unpack("<I", header)[0])
                if body is None:
                    break
                frame = header + body
                forward, back = self.tamper(direction, len(self.frames[direction]), frame)
                self.frames[direction].append(frame)
                for sock, frames in ((destination, forward), (source, back)):
                    for data in frames:
                        if data is CUT:
                            self._cut()
                            return
                        with self._locks[sock]:
                            sock.sendall(data)
            destination.shutdown(socket.SHUT_WR)
        except OSError:
            self._cut()

    def _cut(self):
        for sock in self._sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        self._cut()
        self._listener.close()
        self._thread.join(2 * TIMEOUT)
        for sock in self._sockets:
            sock.close()


def in_thread(function):
    """Run ``function`` in a thread; the returned callable waits (bounded) and returns its result or error."""
    outcome = {}

    def run():
        try:
            outcome["value"] = function()
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def result():
        thread.join(3 * TIMEOUT)
        assert not thread.is_alive(), f"{function} did not finish within {3 * TIMEOUT} s"
        return outcome.get("value", outcome.get("error"))
    return result


class LinkTestCase(unittest.TestCase):
    def setUp(self):
        self.stack = ExitStack()
        self.addCleanup(self.stack.close)

    def open_link(self, alice_pad, bob_pad, *, tamper=None, proxy=True, alice=None, bob=None):
        """Bob listens, Alice connects (through a man in the middle unless ``proxy`` is false); returns both
        endpoints, or the errors that ``connect`` and ``accept`` raised."""
        listener = self.stack.enter_context(listen())
        address = listener.address
        if proxy:
            self.proxy = Proxy(address, tamper)
            self.stack.callback(self.proxy.close)
            address = self.proxy.address
        bob_side = in_thread(lambda: listener.accept(role="bob", pad=bob_pad, timeout=TIMEOUT, **(bob or {})))
        try:
            alice_end = connect(*address, role="alice", pad=alice_pad, timeout=TIMEOUT, **(alice or {}))
        except ChannelClosed as error:
            alice_end = error
        bob_end = bob_side()
        for end in alice_end, bob_end:
            if not isinstance(end, BaseException):
                self.stack.callback(end.close)
        return alice_end, bob_end

    def converse(self, alice, bob, rounds=4, *, burst=1, size=64):
        """Alice sends ``burst`` pings, Bob answers each round with a pong; returns what each side received
        and the error that stopped it, if any."""
        def alice_side():
            received = []
            try:
                for i in range(rounds):
                    for j in range(burst):
                        alice.send(Message("ping", {"i": i * burst + j, "data": bytes(size)}))
                    received.append(alice.receive("pong", timeout=TIMEOUT)["i"])
            except ProtocolError as error:
                return received, error
            return received, None

        def bob_side():
            received = []
            try:
                for i in range(rounds):
                    for j in range(burst):
                        received.append(bob.receive("ping", timeout=TIMEOUT)["i"])
                    bob.send(Message("pong", {"i": i}))
            except ProtocolError as error:
                return received, error
            return received, None

        alice_result, bob_result = in_thread(alice_side), in_thread(bob_side)
        return alice_result(), bob_result()


class RoundTripTestCase(LinkTestCase):
    def test_messages_both_ways_over_loopback(self):
        alice_pad, bob_pad = pads()
        alice, bob = self.open_link(alice_pad, bob_pad, proxy=False)
        big = np.random.default_rng(7).integers(0, 2**62, 400_000, dtype=np.int64)    # a 3.2 MB frame
        alice.send(Message("detect", {"slot": big, "frames": 3}))
        received = bob.receive("detect", timeout=TIMEOUT)
        np.testing.assert_array_equal(received["slot"], big)
        bob.send(Message("sift", {"basis": np.array([1, 0, 1], np.uint8)}))
        np.testing.assert_array_equal(alice.receive("sift", timeout=TIMEOUT)["basis"], [1, 0, 1])
        self.assertEqual((alice.messages_sent, bob.messages_received, bob.messages_sent), (1, 1, 1))
        self.assertEqual(alice.peer[1], bob._sock.getsockname()[1])
        # The hello takes no pad; the confirmation and one message per direction do.
        for pad in alice_pad, bob_pad:
            self.assertEqual([pad.position(stream) for stream in STREAMS], [cost(2), cost(2)])
        self.assertEqual(alice.pad_consumed, dict.fromkeys(STREAMS, cost(2)))
        self.assertEqual(alice.pad_skipped, dict.fromkeys(STREAMS, 0))

    def test_pads_stay_in_step_over_many_messages(self):
        alice_pad, bob_pad = pads()
        alice, bob = self.open_link(alice_pad, bob_pad, alice={"rekey_interval": 16}, bob={"rekey_interval": 16})
        (alice_got, alice_error), (bob_got, bob_error) = self.converse(alice, bob, rounds=300, size=0)
        self.assertIsNone(alice_error)
        self.assertIsNone(bob_error)
        self.assertEqual((alice_got, bob_got), (list(range(300)), list(range(300))))
        for pad in alice_pad, bob_pad:
            self.assertEqual([pad.position(stream) for stream in STREAMS], [cost(301, 16)] * 2)
        self.assertEqual((alice.failures, bob.failures), ({}, {}))

    def test_close_is_seen_by_the_peer(self):
        alice, bob = self.open_link(*pads(), proxy=False)
        alice.close()
        started = time.monotonic()
        with self.assertRaisesRegex(ChannelClosed, r"bob: the peer closed the connection") as caught:
            bob.receive(timeout=TIMEOUT)
        self.assertLess(time.monotonic() - started, 1.0)
        self.assertEqual(caught.exception.kind, "closed")
        with self.assertRaisesRegex(ChannelClosed, r"alice: the channel refuses further use after: alice: closed"):
            alice.send(Message("ping"))

    def test_timeouts_are_bounded(self):
        alice, bob = self.open_link(*pads(), proxy=False)
        started = time.monotonic()
        with self.assertRaisesRegex(ChannelClosed, r"bob: no message from the peer within 0.2 s") as caught:
            bob.receive(timeout=0.2)
        self.assertLess(time.monotonic() - started, 1.0)
        self.assertEqual(caught.exception.kind, "timeout")
        self.assertEqual(bob.failures, {"timeout": 1})
        # A TCP endpoint ends on any failure: it could not tell where the next frame starts.
        with self.assertRaisesRegex(ChannelClosed, r"refuses further use"):
            bob.receive(timeout=0.2)
        with self.assertRaisesRegex(ChannelClosed, r"alice: the peer closed the connection"):
            alice.receive(timeout=TIMEOUT)

        with listen() as listener:
            started = time.monotonic()
            with self.assertRaisesRegex(ChannelClosed, r"bob: no peer connected to .* within 0.2 s"):
                listener.accept(role="bob", pad=PadPool(), timeout=0.2)
            self.assertLess(time.monotonic() - started, 1.0)
            address = listener.address
        with self.assertRaisesRegex(ChannelClosed, r"alice: cannot connect to 127.0.0.1:\d+"):
            connect(*address, role="alice", pad=PadPool(), timeout=TIMEOUT)

    def test_a_message_too_large_for_a_frame_takes_no_pad(self):
        alice_pad, bob_pad = pads()
        alice, _ = self.open_link(alice_pad, bob_pad, proxy=False, alice={"max_frame": 1000})
        position = alice_pad.position("alice->bob")
        with self.assertRaisesRegex(ValueError, r"a \d+-byte message does not fit in a frame of at most 1000"):
            alice.send(Message("ping", {"data": bytes(1000)}))
        self.assertEqual(alice_pad.position("alice->bob"), position)


class ManInTheMiddleTestCase(LinkTestCase):
    def attack(self, tamper, *, burst=1, rounds=4):
        alice, bob = self.open_link(*pads(), tamper=tamper)
        self.assertNotIsInstance(alice, BaseException, "the handshake failed")
        self.assertNotIsInstance(bob, BaseException, "the handshake failed")
        return (alice, bob), self.converse(alice, bob, rounds=rounds, burst=burst)

    def check_detected(self, ends, outcomes, victim, kind, delivered):
        """``victim`` (0: Alice, 1: Bob) detects an attack of ``kind`` having received only ``delivered``; the other
        side learns that the connection closed; neither goes on."""
        (received, error), (_, other_error) = outcomes[victim], outcomes[1 - victim]
        self.assertIsInstance(error, AuthenticationFailed, error)
        self.assertEqual(error.kind, kind, error)
        self.assertEqual(received, delivered)
        self.assertIsInstance(other_error, ChannelClosed)
        self.assertNotIsInstance(other_error, AuthenticationFailed)
        self.assertEqual(ends[victim].failures, {kind: 1})
        self.assertIs(ends[victim].failure, error)
        with self.assertRaisesRegex(AuthenticationFailed, r"refuses further use after: .*authentication failed"):
            ends[victim].send(Message("ping"))

    def test_no_attack(self):
        _, outcomes = self.attack(None)
        self.assertEqual(outcomes, (([0, 1, 2, 3], None), ([0, 1, 2, 3], None)))

    def test_one_flipped_bit_is_detected(self):
        # Frame layout on the wire: length (4 bytes) | flag (1) | sequence number (8) | message | tag (16).
        def lowest_length_bit(frame):     # a shorter length: the frame is read short and its tag is wrong
            length = struct.unpack_from("<I", frame)[0]
            return (length & -length).bit_length() - 1

        regions = {"length": (lowest_length_bit, "tag"),
                   "flag": (lambda frame: 8 * 4, "malformed"),
                   "sequence": (lambda frame: 8 * 5, "sequence"),
                   "message": (lambda frame: 8 * (len(frame) // 2) + 3, "tag"),
                   "tagged into untagged": (lambda frame: 8 * 4 + 7, "malformed"),
                   "tag": (lambda frame: 8 * len(frame) - 1, "tag")}
        for direction, victim in (("alice->bob", 1), ("bob->alice", 0)):
            for region, (offset, kind) in regions.items():
                with self.subTest(direction=direction, region=region):
                    self.setUp()
                    target = FIRST_MESSAGE + 1

                    def tamper(d, index, frame, direction=direction, target=target, offset=offset):
                        if d == direction and index == target:
                            bit = offset(frame)
                            return [flip(frame, bit // 8, bit % 8)], []
                        return [frame], []

                    ends, outcomes = self.attack(tamper)
                    # Ping 1 or pong 1 is hit: the victim received message 0 only.
                    self.check_detected(ends, outcomes, victim, kind, [0])
                    self.stack.close()

    def test_stripped_tag(self):
        # The man in the middle marks ping 1 untagged, drops its tag and rewrites it: a tagged message was due.
        def tamper(direction, index, frame):
            if direction == "alice->bob" and index == FIRST_MESSAGE + 1:
                body = bytes([0x5A]) + frame[5:-16].replace(b"\x01i\x01", b"\x01i\x07")
                return [struct.pack("<I", len(body)) + body], []
            return [frame], []
        self.check_detected(*self.attack(tamper), 1, "untagged", [0])

    def test_replay(self):
        def tamper(direction, index, frame):
            if direction == "alice->bob" and index == FIRST_MESSAGE + 1:
                return [frame, frame], []
            return [frame], []
        self.check_detected(*self.attack(tamper), 1, "sequence", [0, 1])

    def test_replay_of_an_old_frame_with_its_number_rewritten(self):
        def tamper(direction, index, frame):
            if direction == "alice->bob" and index == FIRST_MESSAGE + 2:
                old = self.proxy.frames[direction][FIRST_MESSAGE]
                return [frame_of(old, sequence=index - 1)], []      # confirmation 0, message 0 is sequence 1
            return [frame], []
        self.check_detected(*self.attack(tamper), 1, "tag", [0, 1])

    def test_reorder(self):
        held = []

        def tamper(direction, index, frame):
            if direction == "alice->bob" and index == FIRST_MESSAGE + 2:
                held.append(frame)
                return [], []
            if direction == "alice->bob" and index == FIRST_MESSAGE + 3:
                return [frame, held[0]], []
            return [frame], []
        self.check_detected(*self.attack(tamper, burst=2), 1, "sequence", [0, 1])

    def test_dropped_frame(self):
        def tamper(direction, index, frame):
            return ([] if direction == "alice->bob" and index == FIRST_MESSAGE + 2 else [frame]), []
        self.check_detected(*self.attack(tamper, burst=2), 1, "sequence", [0, 1])

    def test_reflection(self):
        # Alice's message 1 goes on to Bob and back to Alice in place of Bob's answer, which is dropped. It has
        # the sequence number Alice expects, so only the tag can tell.
        def tamper(direction, index, frame):
            if index == FIRST_MESSAGE + 1:
                return ([frame], [frame]) if direction == "alice->bob" else ([], [])
            return [frame], []
        self.check_detected(*self.attack(tamper), 0, "tag", [0])

    def test_truncated_frame(self):
        def tamper(direction, index, frame):
            if direction == "alice->bob" and index == FIRST_MESSAGE + 1:
                return [frame[:len(frame) // 2], CUT], []
            return [frame], []
        self.check_detected(*self.attack(tamper), 1, "truncated", [0])

    def test_shortened_message_with_a_consistent_length(self):
        def tamper(direction, index, frame):
            if direction == "alice->bob" and index == FIRST_MESSAGE + 1:
                body = frame[4:]
                return [frame_of(frame, body=body[:-16 - 3] + body[-16:])], []
            return [frame], []
        self.check_detected(*self.attack(tamper), 1, "tag", [0])

    def test_oversize_frame(self):
        def tamper(direction, index, frame):
            if direction == "bob->alice" and index == FIRST_MESSAGE:
                return [struct.pack("<I", 2**31) + frame[4:]], []
            return [frame], []
        ends, outcomes = self.attack(tamper)
        self.check_detected(ends, outcomes, 0, "oversize", [])

    def test_forged_hello(self):
        # The man in the middle says Alice is 64 bytes further on her stream: Bob skips them, and the confirmation
        # no longer verifies; or says Bob plays alice.
        def ahead(direction, index, frame):
            if direction == "alice->bob" and index == 0:
                position = struct.unpack_from("<Q", frame, len(frame) - 16)[0]
                return [frame[:-16] + struct.pack("<Q", position + 64) + frame[-8:]], []
            return [frame], []

        def impostor(direction, index, frame):
            if direction == "bob->alice" and index == 0:
                return [frame.replace(b"\x03bob", b"\x03ali")], []
            return [frame], []

        for tamper, pattern in [(ahead, r"wrong tag|tampered"), (impostor, r"the peer says it is 'ali'")]:
            with self.subTest(tamper.__name__):
                self.setUp()
                alice, bob = self.open_link(*pads(), tamper=tamper)
                errors = [end for end in (alice, bob) if isinstance(end, AuthenticationFailed)]
                self.assertTrue(errors, (alice, bob))
                self.assertRegex(str(errors[0]), pattern)
                for end in alice, bob:
                    self.assertIsInstance(end, ChannelClosed)
                self.stack.close()


class HandshakeTestCase(LinkTestCase):
    def test_pads_are_brought_in_step(self):
        # Alice sent a message Bob never saw (48 bytes: a hash key and a tag) and Bob took 16 bytes of his own
        # stream before a crash: each side catches up with the other.
        alice_pad, bob_pad = pads()
        alice_pad.take("alice->bob", 48)
        bob_pad.take("bob->alice", 16)
        alice, bob = self.open_link(alice_pad, bob_pad)
        self.assertEqual(bob.pad_skipped, {"alice->bob": 48, "bob->alice": 0})
        self.assertEqual(alice.pad_skipped, {"alice->bob": 0, "bob->alice": 16})
        (alice_got, alice_error), (bob_got, bob_error) = self.converse(alice, bob)
        self.assertEqual((alice_got, alice_error, bob_got, bob_error), ([0, 1, 2, 3], None, [0, 1, 2, 3], None))
        self.assertEqual(alice_pad.position("alice->bob"), 48 + cost(5))
        self.assertEqual(bob_pad.position("alice->bob"), 48 + cost(5))
        self.assertEqual(alice_pad.position("bob->alice"), 16 + cost(5))

    def test_pads_too_far_apart(self):
        alice_pad, bob_pad = pads()
        alice_pad.take("alice->bob", 5000)
        alice, bob = self.open_link(alice_pad, bob_pad)
        self.assertIsInstance(bob, AuthenticationFailed)
        self.assertRegex(str(bob), r"bob: the peer is 5000 bytes ahead on the alice->bob pad, more than the 4096 "
                                   r"that lost messages explain")
        self.assertIsInstance(alice, ChannelClosed)
        self.assertEqual(bob_pad.position("alice->bob"), 0)      # nothing skipped

    def test_two_alices(self):
        listener = self.stack.enter_context(listen())
        other = in_thread(lambda: listener.accept(role="alice", pad=pads()[0], timeout=TIMEOUT))
        with self.assertRaisesRegex(AuthenticationFailed, r"the peer says it is 'alice'; one side must be alice"):
            connect(*listener.address, role="alice", pad=pads()[0], timeout=TIMEOUT)
        self.assertIsInstance(other(), ChannelClosed)

    def test_exhausted_pad(self):
        # Enough for the handshake and two messages from Alice.
        secret = os.urandom(cost(3))
        alice_pad = PadPool({"alice->bob": secret, "bob->alice": secret})
        bob_pad = PadPool({"alice->bob": secret, "bob->alice": secret})
        alice, bob = self.open_link(alice_pad, bob_pad, proxy=False)
        for i in range(2):
            alice.send(Message("ping", {"i": i}))
            self.assertEqual(bob.receive("ping", timeout=TIMEOUT)["i"], i)
        with self.assertRaisesRegex(PadExhausted, r"alice->bob' holds 0 bytes, 16 needed"):
            alice.send(Message("ping", {"i": 2}))
        self.assertEqual(alice.failures, {"pad exhausted": 1})
        with self.assertRaisesRegex(ChannelClosed, r"refuses further use"):
            alice.send(Message("ping", {"i": 2}))
        with self.assertRaisesRegex(ChannelClosed, r"bob: the peer closed the connection"):
            bob.receive(timeout=TIMEOUT)


class LocalChannelAuthenticationTestCase(unittest.TestCase):
    def test_authenticated_local_channel(self):
        secret = os.urandom(4096)
        alice_pad, bob_pad = PadPool.from_secret(secret), PadPool.from_secret(secret)
        alice, bob = LocalChannel.pair(pads=(alice_pad, bob_pad), rekey_interval=2)
        for i in range(5):
            alice.send(Message("ping", {"i": i}))
            self.assertEqual(bob.receive("ping", timeout=TIMEOUT)["i"], i)
        self.assertEqual(alice_pad.position("alice->bob"), cost(5, 2))
        self.assertEqual(bob_pad.position("alice->bob"), cost(5, 2))
        # A man in the middle changes a byte of the next frame in the queue.
        alice.send(Message("ping", {"i": 5}))
        frame = bob._inbox.get(timeout=TIMEOUT)
        bob._inbox.put(flip(frame, 12))
        with self.assertRaisesRegex(AuthenticationFailed, r"bob: authentication failed on alice->bob: message 5"):
            bob.receive(timeout=TIMEOUT)
        with self.assertRaisesRegex(AuthenticationFailed, r"refuses further use"):
            bob.send(Message("pong"))

    def test_timeouts_do_not_end_a_local_endpoint(self):
        alice, bob = LocalChannel.pair(pads=pads(1024))
        with self.assertRaisesRegex(ChannelClosed, r"bob: no message from the peer within 0.05 s"):
            bob.receive(timeout=0.05)
        alice.send(Message("ping"))
        self.assertEqual(bob.receive("ping", timeout=TIMEOUT).kind, "ping")
        self.assertEqual(bob.failures, {"timeout": 1})


class InterruptTestCase(LinkTestCase):
    def check_interrupt(self, alice, bob):
        """A thread waiting on Bob wakes when another interrupts him, and Alice learns the channel closed."""
        waiting = in_thread(lambda: bob.receive(timeout=TIMEOUT))
        time.sleep(0.1)
        started = time.monotonic()
        bob.interrupt()
        error = waiting()
        self.assertIsInstance(error, ChannelClosed)
        self.assertEqual(str(error), "bob: interrupted by this side")
        self.assertLess(time.monotonic() - started, TIMEOUT / 2)
        with self.assertRaises(ChannelClosed) as caught:
            alice.receive(timeout=TIMEOUT)
        self.assertEqual(caught.exception.kind, "closed")
        with self.assertRaises(ChannelClosed):
            bob.send(Message("ping"))
        bob.close()

    def test_local(self):
        self.check_interrupt(*LocalChannel.pair(pads=pads(1024)))

    def test_tcp(self):
        self.check_interrupt(*self.open_link(*pads(), proxy=False))

    def test_pending_connection(self):
        listener = self.stack.enter_context(listen())
        self.assertFalse(listener.pending())
        client = socket.create_connection(listener.address, timeout=TIMEOUT)
        self.addCleanup(client.close)
        self.assertTrue(listener.pending(TIMEOUT))


class ProtocolOverTCPTestCase(LinkTestCase):
    """A block of the real protocol between two endpoints on loopback."""

    def run_block(self, tamper=None):
        from concurrent.futures import ThreadPoolExecutor
        from qkdlink.host.entropy import SimulatedEntropy
        from qkdlink.host.protocol import Alice, Bob, ChoiceMemory, DetectionRecord
        from qkdlink.sim import optics
        from qkdlink.sim.link import pulses_for
        from tests.sim.test_link import SETTINGS, bench

        alice_pad, bob_pad = pads(1 << 20)
        alice_end, bob_end = self.open_link(alice_pad, bob_pad, tamper=tamper)
        link = bench()
        record = optics.run(link, pulses_for(link, 10**6), rng=np.random.default_rng(8))
        choices = ChoiceMemory(record.slot, record.alice_basis, record.alice_bit, record.alice_intensity)
        with ThreadPoolExecutor(2) as pool:
            alice = pool.submit(Alice(alice_end, SETTINGS, SimulatedEntropy(1)).run_block, 0, record.pulses, choices)
            bob = pool.submit(Bob(bob_end, SETTINGS, SimulatedEntropy(2)).run_block, 0,
                              DetectionRecord(record.slot, record.pattern))
            return alice.result(timeout=60), bob.result(timeout=60), (alice_end, bob_end), (alice_pad, bob_pad)

    def test_honest_block(self):
        alice, bob, ends, (alice_pad, bob_pad) = self.run_block()
        self.assertFalse(alice.aborted, alice.abort_reason)
        np.testing.assert_array_equal(alice.key, bob.key)
        # The handshake confirmation, then the block's three closing messages (Alice's close and confirmation,
        # Bob's close), which cover all of it.
        for end, tags in zip(ends, (3, 2)):
            self.assertEqual(end.authenticator.tags_sent, tags)
            self.assertGreater(end.messages_sent, 10)
            stream = end.authenticator.send_stream
            self.assertEqual(alice_pad.position(stream), cost(tags))
            self.assertEqual(bob_pad.position(stream), cost(tags))

    def test_one_flipped_bit_aborts_the_block(self):
        # The man in the middle flips a bit in the middle of Bob's fourth message (after detect, detected and test:
        # the start of Cascade): both sides abort, and neither has a key.
        def tamper(direction, index, frame):
            if direction == "bob->alice" and index == FIRST_MESSAGE + 3:
                return [flip(frame, len(frame) // 2)], []
            return [frame], []
        alice, bob, ends, _ = self.run_block(tamper)
        self.assertTrue(alice.aborted and bob.aborted)
        self.assertIsNone(alice.key)
        self.assertIsNone(bob.key)
        # Alice acts on the message as it comes (the flip breaks its shuffle seed's field name), and the tag of
        # Bob's close, over all his messages of the block, tells her why.
        self.assertRegex(alice.abort_reason, r"^alice: authentication failed on bob->alice: messages 1-6 \(\d+ bytes "
                                             r"with their headers\) have a wrong tag: .* \(the block had failed "
                                             r"already: cascade message has no field 'shuffle_seed'\)$")
        # Bob found Alice's close genuine and sent his; she hung up instead of confirming.
        self.assertRegex(bob.abort_reason, r"^bob: the peer closed the connection \(the block had failed already: "
                                           r"the peer aborted: cascade message has no field 'shuffle_seed'\)$")
        self.assertEqual(ends[0].failures, {"tag": 1})

    def replace(self, direction, marker, message):
        """A tamper function that puts ``message``, untagged and with the same sequence number, in place of the
        first frame of ``direction`` that holds ``marker``."""
        done = []

        def tamper(d, index, frame):
            if d == direction and marker in frame and not done:
                done.append(frame)
                body = bytes([0x5A]) + frame[5:13] + message.encode()
                return [struct.pack("<I", len(body)) + body], []
            return [frame], []
        return tamper, done

    def test_forged_messages_are_reported_as_forged(self):
        # An abort forged in place of Bob's test bits sends Alice to her close at once; Bob, waiting for her
        # estimate, takes her close as the end of the block, and his close's tag shows Alice the forgery.
        tamper, done = self.replace("bob->alice", b"\x04test", Message("abort", {"reason": "forged"}))
        alice, bob, ends, _ = self.run_block(tamper)
        self.assertTrue(done)
        self.assertIsNone(alice.key)
        self.assertIsNone(bob.key)
        self.assertRegex(alice.abort_reason, r"^alice: authentication failed on bob->alice: messages \d+-\d+ .* "
                                             r"\(the block had failed already: the peer aborted: forged\)$")
        self.assertLess(alice.figures["seconds"], 30, "a time-out, not the tag, ended the block")
        # A seed field of the wrong type is bad data, not an allocation of 2^62 bytes.
        tamper, done = self.replace("alice->bob", b"\x06verify", Message("verify", {"seed": 2**62, "tag": b""}))
        self.setUp()
        alice, bob, ends, _ = self.run_block(tamper)
        self.assertTrue(done)
        self.assertIsNone(alice.key)
        self.assertIsNone(bob.key)
        self.assertRegex(bob.abort_reason, r"^bob: authentication failed on alice->bob: .* \(the block had failed "
                                           r"already: invalid data from the peer: TypeError: packed bits must be "
                                           r"bytes, not int\)$")

    def test_a_change_late_in_the_block_leaves_neither_side_a_key(self):
        # The last untagged messages each way: Alice's privacy amplification seed, Bob's verification answer. The
        # changed seed gives Bob a key Alice does not have; the side that checks the changed direction finds it at
        # the tag and hangs up, and the other side, waiting for its next closing message, keeps nothing either.
        for direction, marker, victim in [("alice->bob", b"\x07amplify", "bob"), ("bob->alice", b"\x08verified", "alice")]:
            with self.subTest(direction):
                self.setUp()

                def tamper(d, index, frame, direction=direction, marker=marker):
                    if d == direction and marker in frame:
                        return [flip(frame, len(frame) - 1)], []
                    return [frame], []
                alice, bob, ends, _ = self.run_block(tamper)
                self.assertIsNone(alice.key)
                self.assertIsNone(bob.key)
                failed = alice if victim == "alice" else bob
                self.assertRegex(failed.abort_reason, rf"^{victim}: authentication failed on {direction}: messages "
                                                      rf"\d+-\d+ .* have a wrong tag")
                other = bob if victim == "alice" else alice
                self.assertRegex(other.abort_reason, r"the peer closed the connection")
                self.stack.close()
