import unittest

import numpy as np

from qkdlink.host.channel import LocalChannel
from qkdlink.host.messages import Message, ProtocolError


class MessageTestCase(unittest.TestCase):
    def test_round_trip(self):
        message = Message("sift", {
            "block": 7, "qber": 0.0125, "name": "Zürich", "seed": b"\x00\xff",
            "slots": np.array([1, 2**40, -3], np.int64), "bits": np.array([0, 1, 1], np.uint8),
            "empty": np.zeros(0, np.uint16), "flag": True,
        })
        decoded = Message.decode(message.encode())
        self.assertEqual(decoded.kind, "sift")
        self.assertEqual(list(decoded.fields), list(message.fields))
        for name, value in message.fields.items():
            if isinstance(value, np.ndarray):
                self.assertEqual(decoded[name].dtype, value.dtype)
                np.testing.assert_array_equal(decoded[name], value)
            else:
                self.assertEqual(decoded[name], value)

    def test_layout(self):
        # The framing in the module docstring, written out by hand.
        expected = (b"\x01" + b"\x01k" + b"\x02\x00" +
                    b"\x01a" + b"i" + (5).to_bytes(8, "little", signed=True) +
                    b"\x01b" + b"a" + b"H" + (2).to_bytes(8, "little") + b"\x01\x00\x02\x01")
        self.assertEqual(Message("k", {"a": 5, "b": np.array([1, 0x102], np.uint16)}).encode(), expected)

    def test_malformed(self):
        good = Message("test", {"bits": np.array([1, 0, 1], np.uint8), "n": 3}).encode()
        cases = {
            "truncated": good[:-1],
            "stray bytes": good + b"\x00",
            "version": b"\x02" + good[1:],
            "unknown type": b"\x01\x01k\x01\x00\x01az",
            "unknown array type": b"\x01\x01k\x01\x00\x01aad" + (0).to_bytes(8, "little"),
            "repeated field": b"\x01\x01k\x02\x00" + 2 * (b"\x01ai" + bytes(8)),
            "huge array": good[:good.index(b"aB") + 2] + (2**60).to_bytes(8, "little") + b"\x00",
            "empty": b"",
        }
        for name, data in cases.items():
            with self.subTest(name):
                with self.assertRaises(ValueError):
                    Message.decode(data)

    def test_unsupported_values(self):
        with self.assertRaisesRegex(TypeError, r"field 'x': cannot encode a list"):
            Message("k", {"x": [1, 2]}).encode()
        with self.assertRaisesRegex(TypeError, r"arrays must be one-dimensional integers"):
            Message("k", {"x": np.zeros(2)}).encode()

    def test_missing_field(self):
        with self.assertRaisesRegex(ProtocolError, r"detect message has no field 'slot'"):
            Message("detect")["slot"]


class LocalChannelTestCase(unittest.TestCase):
    def test_exchange_and_kinds(self):
        alice, bob = LocalChannel.pair()
        alice.send(Message("block", {"block": 1}))
        self.assertEqual(bob.receive("block")["block"], 1)
        bob.send(Message("detect"))
        with self.assertRaisesRegex(ProtocolError, r"expected a sift message, got detect"):
            alice.receive("sift")
        bob.send(Message("abort", {"reason": "QBER too high"}))
        with self.assertRaisesRegex(ProtocolError, r"the peer aborted: QBER too high"):
            alice.receive("sift")
        self.assertEqual((alice.messages_sent, bob.messages_sent), (1, 2))

    def test_timeout_is_bounded(self):
        alice, _ = LocalChannel.pair()
        with self.assertRaisesRegex(ProtocolError, r"alice: no message from the peer within 0.05 s"):
            alice.receive(timeout=0.05)
