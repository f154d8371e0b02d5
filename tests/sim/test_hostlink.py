"""HostLinkModel against docs/protocol.md: every expected value here is written from the spec, not from the model."""

import struct
import unittest
import zlib

from cobs import cobs

from qkdlink.sim.hostlink import HostLinkModel
from qkdlink.wire import Role


# Commands and statuses as docs/protocol.md numbers them.
HELLO, READ, WRITE, READ_STREAM, WRITE_STREAM = 1, 2, 3, 4, 5
OK, CRC, FRAME, UNKNOWN, ARGUMENT, ADDRESS, STREAM, OFFSET, FULL = range(9)

# Alice's streams in the order of docs/protocol.md (the stream number is the index), with depths for the tests.
ALICE_STREAMS = ["lookups", "matches", "test", "releases", "key_commands", "flips", "key_words", "hash_blocks",
                 "seed", "hash"]
DEPTHS = {"lookups": 256, "matches": 1024, "test": 64, "releases": 128, "key_commands": 32, "flips": 512,
          "key_words": 2048, "hash_blocks": 64, "seed": 16, "hash": 4096}
LOOKUPS, MATCHES = 0, 1
# Alice's register addresses: 14 common read-only, 3 of hers, then session, control, period, p_z, thresholds.
MAGIC_ADDRESS, SESSION, CONTROL, ALICE_REGISTERS = 0, 17, 18, 23
FRAMES_OK = 6


def crc(body):
    return zlib.crc32(body).to_bytes(4, "little")


def wire(body):
    return cobs.encode(body + crc(body)) + b"\0"


def parse(data):
    """(status, command, tag, payload) of each reply frame in ``data``, checked with PyPI cobs and zlib."""
    replies = []
    for encoded in data.split(b"\0")[:-1]:
        sealed = cobs.decode(encoded)
        body = sealed[:-4]
        assert sealed[-4:] == crc(body), "reply CRC"
        replies.append((body[0], body[1], body[2], body[3:]))
    assert data.endswith(b"\0") or not data
    return replies


def u32(*values):
    return b"".join(struct.pack("<I", value) for value in values)


class HostLinkModelTestCase(unittest.TestCase):
    def setUp(self):
        self.model = HostLinkModel(Role.ALICE, board="icebreaker", phases=2, frame_bits=10, depths=DEPTHS,
                                   constants={"clock_hz": 48_000_000, "baud": 3_000_000, "key_bits": 1 << 16})
        self.tag = 0

    def ask(self, command, arguments=b""):
        """One request; its reply's (status, command, tag, payload) after checking the echoed command and tag."""
        self.tag = (self.tag + 1) % 256
        [(status, echoed, tag, payload)] = parse(self.model.receive(wire(bytes([command, self.tag]) + arguments)))
        self.assertEqual((echoed, tag), (command, self.tag))
        return status, payload

    def register(self, address):
        status, payload = self.ask(READ, struct.pack("<HB", address, 1))
        self.assertEqual(status, OK)
        return struct.unpack("<I", payload)[0]

    def read_stream(self, number, ack, offset, length):
        return self.ask(READ_STREAM, struct.pack("<BIIH", number, ack, offset, length))

    def write_stream(self, number, offset, data):
        return self.ask(WRITE_STREAM, struct.pack("<BI", number, offset) + data)

    def test_hello(self):
        depth_bits = bytes([8, 10, 6, 7, 5, 9, 11, 6, 4, 12])    # log2 of DEPTHS in stream order
        expected = b"QKDL" + b"\x00\x01" + bytes([0, 1, 2, 10]) + depth_bits
        self.assertEqual(self.model.receive(wire(b"\x01\x5a")), wire(b"\x00\x01\x5a" + expected))
        self.assertEqual(self.ask(HELLO, b"\x00"), (ARGUMENT, b""))

    def test_read(self):
        ident = 0 | 1 << 8 | 2 << 16 | 10 << 24
        self.assertEqual(self.ask(READ, struct.pack("<HB", 0, 6)),
                         (OK, b"QKDL" + u32(0x0100, ident, 48_000_000, 3_000_000, 1 << 16)))
        self.assertEqual(self.ask(READ, struct.pack("<HB", ALICE_REGISTERS - 1, 1)), (OK, u32(0)))
        for address, count, status in [(0, 0, ARGUMENT), (0, 65, ARGUMENT), (ALICE_REGISTERS - 1, 2, ADDRESS),
                                       (ALICE_REGISTERS, 1, ADDRESS), (0xffff, 1, ADDRESS)]:
            with self.subTest(address=address, count=count):
                self.assertEqual(self.ask(READ, struct.pack("<HB", address, count)), (status, b""))
        self.assertEqual(self.ask(READ, b"\x00\x00"), (ARGUMENT, b""))
        self.assertEqual(self.ask(READ, b"\x00\x00\x01\x00"), (ARGUMENT, b""))

    def test_write(self):
        self.assertEqual(self.ask(WRITE, struct.pack("<H4I", SESSION, 0xdeadbeef, 1, 0x12345, 0x1ffff)), (OK, b""))
        # period is 16 bits wide: it keeps the low bits; p_z is 17 bits.
        self.assertEqual(self.ask(READ, struct.pack("<HB", SESSION, 4)), (OK, u32(0xdeadbeef, 1, 0x2345, 0x1ffff)))
        self.assertEqual(self.model.registers["session"], 0xdeadbeef)
        self.assertEqual(self.model.registers["period"], 0x2345)
        for arguments, status in [
                (struct.pack("<H2I", SESSION - 1, 5, 6), ADDRESS),          # starts on a read-only register
                (struct.pack("<HI", MAGIC_ADDRESS, 5), ADDRESS),
                (struct.pack("<H2I", ALICE_REGISTERS - 1, 5, 6), ADDRESS),   # runs past the end
                (struct.pack("<H", SESSION), ARGUMENT),                     # no value
                (struct.pack("<H", SESSION) + b"\x01\x02\x03", ARGUMENT),    # not whole words
                (struct.pack("<H65I", SESSION, *range(65)), ARGUMENT)]:
            with self.subTest(arguments=arguments[:12].hex()):
                self.assertEqual(self.ask(WRITE, arguments), (status, b""))
        # Nothing was written by the refused ones.
        self.assertEqual(self.ask(READ, struct.pack("<HB", SESSION, 2)), (OK, u32(0xdeadbeef, 1)))

    def test_unknown_commands(self):
        for command in (0x00, 0x06, 0x80, 0xff):
            self.assertEqual(self.ask(command, b"\x01\x02"), (UNKNOWN, b""))

    def test_bad_frames_and_counters(self):
        good = b"\x02\x07" + struct.pack("<HB", 0, 1)
        damaged = bytearray(good + crc(good))
        damaged[3] ^= 0x10
        self.assertEqual(parse(self.model.receive(cobs.encode(bytes(damaged)) + b"\0")), [(CRC, 0, 0, b"")])
        cases = [
            cobs.encode(b"\x01" + crc(b"\x01")),                # 5 bytes: shorter than a header and a CRC
            b"\x05\x01\x02",                                    # a COBS code running past the end
            wire(b"\x05\x00" + bytes(522))[:-1],                # 524 + 4 bytes: longer than MAX_BODY
            b"\x03" * 2000,                                     # far too long
        ]
        for encoded in cases:
            self.assertEqual(parse(self.model.receive(encoded + b"\0")), [(FRAME, 0, 0, b"")], encoded[:8].hex())
        # Empty frames are ignored; a frame cut by a delimiter is one bad frame and the next comes through.
        data = b"\0\0\0" + wire(good)[:5] + b"\0" + wire(good)
        self.assertEqual(parse(self.model.receive(data)), [(FRAME, 0, 0, b""), (OK, 2, 7, b"QKDL")])
        # A body of MAX_BODY = 527 bytes is a frame (here a WRITE_STREAM of 516 bytes, too many); one more is not.
        longest = struct.pack("<BBBI", WRITE_STREAM, 9, LOOKUPS, 0) + bytes(range(1, 256)) * 2 + bytes(6)
        self.assertEqual(parse(self.model.receive(wire(longest))), [(ARGUMENT, WRITE_STREAM, 9, b"")])
        self.assertEqual(parse(self.model.receive(wire(longest + b"\x01"))), [(FRAME, 0, 0, b"")])
        self.assertEqual(self.ask(HELLO, b"x")[0], ARGUMENT)
        # Intact requests: the READ, the longest WRITE_STREAM, the HELLO, and this READ's own frame (counted before
        # it is answered). Bad frames: the cases, the cut frame (5 encoded bytes decode to at most 4) and the
        # overlong WRITE_STREAM. Answered with an error: the WRITE_STREAM and the HELLO.
        self.assertEqual(self.ask(READ, struct.pack("<HB", FRAMES_OK, 6)),
                         (OK, u32(4, 1, len(cases) + 2, 0, 0, 2)))

    def test_read_stream(self):
        data = bytes((7 * index) % 251 for index in range(1000))
        self.assertTrue(self.model.produce("matches", data))
        self.assertFalse(self.model.produce("matches", bytes(25)))      # 1024 - 1000 free: all or nothing
        self.assertEqual(self.read_stream(MATCHES, 0, 0, 600), (OK, u32(0, 1000) + data[:512]))
        self.assertEqual(self.read_stream(MATCHES, 0, 512, 600), (OK, u32(0, 1000) + data[512:]))
        self.assertEqual(self.read_stream(MATCHES, 0, 1000, 600), (OK, u32(0, 1000)))
        self.assertEqual(self.read_stream(MATCHES, 0, 1001, 1), (OFFSET, u32(0, 1000)))
        self.assertEqual(self.read_stream(MATCHES, 1001, 0, 1), (OFFSET, u32(0, 1000)))
        # An ack frees the bytes before it; an older ack changes nothing; offsets below low are refused.
        self.assertEqual(self.read_stream(MATCHES, 500, 500, 3), (OK, u32(500, 1000) + data[500:503]))
        self.assertEqual(self.read_stream(MATCHES, 400, 500, 3), (OK, u32(500, 1000) + data[500:503]))
        self.assertEqual(self.read_stream(MATCHES, 400, 499, 3), (OFFSET, u32(500, 1000)))
        # The ack takes effect before the offset is checked against the new low.
        self.assertEqual(self.read_stream(MATCHES, 800, 700, 3), (OFFSET, u32(500, 1000)))
        self.assertEqual(self.read_stream(MATCHES, 800, 800, 0), (OK, u32(800, 1000)))
        self.assertTrue(self.model.produce("matches", bytes(800)))
        self.assertFalse(self.model.produce("matches", bytes(25)))
        for number in (LOOKUPS, 10, 255):
            self.assertEqual(self.read_stream(number, 0, 0, 1), (STREAM, b""))
        self.assertEqual(self.ask(READ_STREAM, struct.pack("<BIIH", MATCHES, 0, 0, 1) + b"\x00"), (ARGUMENT, b""))

    def test_write_stream(self):
        data = bytes(range(100))
        self.assertEqual(self.write_stream(LOOKUPS, 0, data), (OK, u32(0, 100)))
        self.assertEqual(self.write_stream(LOOKUPS, 0, data), (OK, u32(0, 100)))     # a retry: no effect
        self.assertEqual(self.write_stream(LOOKUPS, 50, data[50:]), (OK, u32(0, 100)))
        self.assertEqual(self.write_stream(LOOKUPS, 50, bytes(51)), (OFFSET, u32(0, 100)))
        self.assertEqual(self.write_stream(LOOKUPS, 101, b"\x01"), (OFFSET, u32(0, 100)))
        self.assertEqual(self.write_stream(LOOKUPS, 100, b""), (OK, u32(0, 100)))
        self.assertEqual(self.model.consume("lookups", 30), data[:30])
        self.assertEqual(self.write_stream(LOOKUPS, 100, bytes(187)), (FULL, u32(30, 100)))  # 256 - 70 free
        self.assertEqual(self.write_stream(LOOKUPS, 100, bytes(186)), (OK, u32(30, 286)))
        self.assertEqual(self.model.consume("lookups"), data[30:] + bytes(186))
        self.assertEqual(self.model.consume("lookups"), b"")
        self.assertEqual(self.write_stream(LOOKUPS, 286, bytes(513)), (ARGUMENT, b""))
        self.assertEqual(self.ask(WRITE_STREAM, b"\x00\x00\x00\x00"), (ARGUMENT, b""))
        for number in (MATCHES, 10):
            self.assertEqual(self.write_stream(number, 0, b"\x01"), (STREAM, b""))

    def test_offsets_wrap(self):
        start = (1 << 32) - 100
        for name in ("matches", "lookups"):
            self.model.streams[name].low = self.model.streams[name].high = start
        data = bytes(range(256)) + bytes(range(44))
        self.assertTrue(self.model.produce("matches", data))
        self.assertEqual(self.read_stream(MATCHES, start, start, 512), (OK, u32(start, 200) + data))
        self.assertEqual(self.read_stream(MATCHES, start, 0, 512), (OK, u32(start, 200) + data[100:]))
        self.assertEqual(self.read_stream(MATCHES, 150, 150, 512), (OK, u32(150, 200) + data[250:]))
        self.assertEqual(self.read_stream(MATCHES, start, 150, 512), (OK, u32(150, 200) + data[250:]))
        self.assertEqual(self.read_stream(MATCHES, 0, start, 1), (OFFSET, u32(150, 200)))
        self.assertEqual(self.write_stream(LOOKUPS, start, data[:200]), (OK, u32(start, 100)))
        self.assertEqual(self.write_stream(LOOKUPS, start, data[:200]), (OK, u32(start, 100)))
        self.assertEqual(self.write_stream(LOOKUPS, start + 200 - (1 << 32), data[200:250]), (OK, u32(start, 150)))
        self.assertEqual(self.model.consume("lookups"), data[:250])
        self.assertEqual(self.write_stream(LOOKUPS, start, data[:200]), (OK, u32(150, 150)))

    def test_every_request_twice(self):
        # Idempotence: each request, sent again, gets the same reply and changes nothing more.
        self.assertTrue(self.model.produce("matches", bytes(range(200))))
        requests = [
            bytes([READ, 1]) + struct.pack("<HB", 0, 6),                  # not the counters
            bytes([WRITE, 2]) + struct.pack("<HII", CONTROL, 3, 0x40),
            bytes([READ_STREAM, 3]) + struct.pack("<BIIH", MATCHES, 50, 60, 10),
            bytes([WRITE_STREAM, 4]) + struct.pack("<BI", LOOKUPS, 0) + b"abc",
            bytes([HELLO, 5]),
        ]
        for request in requests:
            with self.subTest(command=request[0]):
                first = self.model.receive(wire(request))
                state = {name: (buffer.low, buffer.high) for name, buffer in self.model.streams.items()}
                registers = {name: value for name, value in self.model.registers.items()
                             if name != "frames_ok"}
                self.assertEqual(self.model.receive(wire(request)), first)
                self.assertEqual({name: (buffer.low, buffer.high) for name, buffer in self.model.streams.items()},
                                 state)
                self.assertEqual({name: value for name, value in self.model.registers.items()
                                  if name != "frames_ok"}, registers)
        self.assertEqual(self.model.registers["period"], 0x40)
        self.assertEqual(self.model.consume("lookups"), b"abc")
        self.assertEqual((self.model.streams["matches"].low, self.model.streams["matches"].high), (50, 200))
