import random
import struct
import unittest
import zlib

from cobs import cobs

from qkdlink.host.wire import (CobsError, FrameSplitter, Reply, Request, cobs_decode, cobs_encode, decode_reply,
                               decode_request, encode_reply, encode_request, frame, seal, unseal)
from qkdlink.wire import MAX_BODY, Status


def random_bytes(rng, length, *, zeros):
    """``length`` random bytes, each zero with probability ``zeros`` and otherwise uniform over 1 to 255."""
    return bytes(0 if rng.random() < zeros else rng.randrange(1, 256) for _ in range(length))


class CobsTestCase(unittest.TestCase):
    def test_against_pypi_cobs(self):
        rng = random.Random(1)
        lengths = [0, 1, 2, 253, 254, 255, 507, 508, 509, 527, 762, 1100] + [rng.randrange(1100) for _ in range(300)]
        for length in lengths:
            for zeros in (0, 0.002, 0.1, 0.9):
                data = random_bytes(rng, length, zeros=zeros)
                with self.subTest(length=length, zeros=zeros):
                    encoded = cobs_encode(data)
                    self.assertNotIn(0, encoded)
                    self.assertEqual(cobs.decode(encoded), data)
                    self.assertEqual(cobs_decode(cobs.encode(data)), data)
                    self.assertEqual(cobs_decode(encoded), data)
                    # Where a zero-free run of a multiple of 254 bytes ends the data, host.wire still closes it
                    # with an empty block (the code 0x01 of the paper's implied final zero); PyPI cobs omits it.
                    last_run = len(data.split(b"\0")[-1])
                    extra = b"\x01" if last_run and last_run % 254 == 0 else b""
                    self.assertEqual(encoded, cobs.encode(data) + extra)
                    self.assertLessEqual(len(encoded), length + length // 254 + 1)

    def test_decode_errors_as_pypi(self):
        # Raises exactly when PyPI cobs does, and otherwise agrees with it.
        rng = random.Random(2)
        for _ in range(20000):
            data = bytes(rng.choice([0, 1, 2, 3, 4, 254, 255, 7]) for _ in range(rng.randrange(12)))
            try:
                expected = cobs.decode(data)
            except cobs.DecodeError:
                with self.assertRaises(CobsError, msg=data.hex()):
                    cobs_decode(data)
            else:
                self.assertEqual(cobs_decode(data), expected, data.hex())

    def test_known_encodings(self):
        # Examples from Cheshire and Baker's paper and the COBS literature.
        cases = [
            (b"", b"\x01"),
            (b"\x00", b"\x01\x01"),
            (b"\x00\x00", b"\x01\x01\x01"),
            (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33"),
            (b"\x11\x22\x33\x44", b"\x05\x11\x22\x33\x44"),
            (b"\x11\x00\x00\x00", b"\x02\x11\x01\x01\x01"),
            (bytes(range(1, 255)), b"\xff" + bytes(range(1, 255)) + b"\x01"),
            (bytes(range(1, 256)), b"\xff" + bytes(range(1, 255)) + b"\x02\xff"),
        ]
        for data, encoded in cases:
            with self.subTest(data=data.hex()):
                self.assertEqual(cobs_encode(data), encoded)
                self.assertEqual(cobs_decode(encoded), data)


class CrcTestCase(unittest.TestCase):
    def test_check_value(self):
        # The catalogue's check value of CRC-32/ISO-HDLC.
        self.assertEqual(seal(b"123456789")[-4:], struct.pack("<I", 0xCBF43926))

    def test_against_zlib(self):
        rng = random.Random(3)
        for length in [0, 1, 5, 100, 523]:
            body = random_bytes(rng, length, zeros=0.1)
            sealed = seal(body)
            self.assertEqual(sealed, body + zlib.crc32(body).to_bytes(4, "little"))
            self.assertEqual(unseal(sealed), body)
            for _ in range(50):
                damaged = bytearray(sealed)
                damaged[rng.randrange(len(damaged))] ^= 1 << rng.randrange(8)
                self.assertIsNone(unseal(bytes(damaged)))
        self.assertIsNone(unseal(b"\x01\x02\x03"))


class BodyTestCase(unittest.TestCase):
    def test_request_reply(self):
        self.assertEqual(encode_request(Request(0x04, 0x7f, b"\x01\x02")), b"\x04\x7f\x01\x02")
        self.assertEqual(decode_request(b"\x04\x7f\x01\x02"), Request(0x04, 0x7f, b"\x01\x02"))
        self.assertEqual(encode_reply(Reply(Status.FULL, 0x05, 9, b"ab")), b"\x08\x05\x09ab")
        self.assertEqual(decode_reply(b"\x07\x04\x01xy"), Reply(Status.OFFSET, 0x04, 1, b"xy"))
        with self.assertRaisesRegex(ValueError, r"unknown status 0x09"):
            decode_reply(b"\x09\x00\x00")

    def test_frame(self):
        body = b"\x01\x00"
        self.assertEqual(frame(body), cobs.encode(body + zlib.crc32(body).to_bytes(4, "little")) + b"\0")


class FrameSplitterTestCase(unittest.TestCase):
    def feed_in_chunks(self, splitter, data, rng):
        results = []
        index = 0
        while index < len(data):
            size = rng.choice([1, 2, 7, 100, 1000, 5000])
            results += splitter.feed(data[index:index + size])
            index += size
        return results

    def test_intact_and_edge_sizes(self):
        rng = random.Random(4)
        bodies = [random_bytes(rng, length, zeros=0.05) for length in (3, 4, 60, 254, 508, MAX_BODY - 4)]
        sealed = [seal(body) for body in bodies]
        wire = b"\0\0" + b"".join(cobs_encode(s) + b"\0" for s in sealed) + b"\0"
        self.assertEqual(self.feed_in_chunks(FrameSplitter(header=3), wire, rng), bodies)

    def test_bad_frames(self):
        good = seal(b"\x00\x01\x02")
        cases = {
            "too short for a header": (cobs_encode(seal(b"\x00\x01")), Status.FRAME),
            "too short for a CRC": (cobs_encode(b"\x05\x06\x07"), Status.FRAME),
            "longest body plus one": (cobs_encode(seal(bytes(MAX_BODY - 3))), Status.FRAME),
            "far too long": (b"\x05" * 3000, Status.FRAME),
            "code past the end": (b"\x09\x01\x02", Status.FRAME),
            "bad CRC": (cobs_encode(good[:-1] + bytes([good[-1] ^ 0x80])), Status.CRC),
        }
        for name, (encoded, status) in cases.items():
            with self.subTest(name):
                splitter = FrameSplitter(header=3)
                self.assertEqual(splitter.feed(encoded + b"\0" + cobs_encode(good) + b"\0"), [status, good[:-4]])
        longest = seal(bytes(range(1, 256)) * 2 + bytes(MAX_BODY - 4 - 510))
        self.assertEqual(FrameSplitter(header=3).feed(cobs_encode(longest) + b"\0"), [longest[:-4]])

    def test_damage_inside_frames(self):
        # Damage that keeps the delimiters: each damaged frame is reported, and only once; the others come through.
        rng = random.Random(5)
        for trial in range(40):
            bodies = [random_bytes(rng, rng.randrange(3, MAX_BODY - 3), zeros=rng.choice([0, 0.01, 0.3]))
                      for _ in range(20)]
            wire = bytearray()
            expected = []
            for body in bodies:
                encoded = bytearray(cobs_encode(seal(body)))
                kind = rng.choice(["intact", "intact", "flip", "drop", "insert"])
                position = rng.randrange(len(encoded))
                if kind == "flip":
                    encoded[position] ^= 1 << rng.randrange(8)
                    if encoded[position] == 0:
                        encoded[position] = 0x80
                elif kind == "drop":
                    del encoded[position]
                elif kind == "insert":
                    encoded.insert(position, rng.randrange(1, 256))
                wire += encoded + b"\0"
                expected.append(body if kind == "intact" else None)
            results = self.feed_in_chunks(FrameSplitter(header=3), bytes(wire), rng)
            self.assertEqual(len(results), len(bodies), f"trial {trial}")
            for index, (result, body) in enumerate(zip(results, expected)):
                if body is None:
                    self.assertIn(result, (Status.FRAME, Status.CRC), f"trial {trial}, frame {index}")
                else:
                    self.assertEqual(result, body, f"trial {trial}, frame {index}")

    def test_damage_to_delimiters(self):
        # A lost or inserted delimiter garbles the frames it touches, never the intact ones beyond them.
        rng = random.Random(6)
        for trial in range(40):
            bodies = [random_bytes(rng, rng.randrange(3, 300), zeros=0.05) for _ in range(30)]
            frames = [bytearray(cobs_encode(seal(body)) + b"\0") for body in bodies]
            damaged = set(rng.sample(range(1, 29), 6))
            for index in sorted(damaged):
                if rng.random() < 0.5:
                    del frames[index][-1]               # runs into the next frame
                    damaged.add(index + 1)
                else:
                    frames[index][rng.randrange(1, len(frames[index]) - 1)] = 0  # splits it
            results = self.feed_in_chunks(FrameSplitter(header=3), b"".join(frames), rng)
            intact = [body for index, body in enumerate(bodies) if index not in damaged]
            received = [result for result in results if isinstance(result, bytes)]
            self.assertEqual(received, intact, f"trial {trial}")
            self.assertTrue(all(result in (Status.CRC, Status.FRAME) for result in results
                                if not isinstance(result, bytes)))
