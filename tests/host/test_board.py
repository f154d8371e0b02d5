"""The driver against the board's reference model served on TCP, directly and through a faulty line."""

import random
import struct
import threading
import time
import unittest

import numpy as np

from qkdlink.host.board import (Board, BoardError, BoardReset, LinkError, StreamTimeout, TRACE, pack_beats,
                                unpack_beats)
from qkdlink.host.wire import FrameSplitter, Reply, decode_request, encode_reply, frame
from qkdlink.sim.hostlink import HostLinkModel
from qkdlink.sim.serve import FaultyLink, serve
from qkdlink.wire import MAGIC, VERSION, Command, Role, Status, register_map, stream_map


PHASES, FRAME_BITS = 4, 12
CONSTANTS = {"clock_hz": 48_000_000, "baud": 3_000_000, "key_bits": 1 << 16}


def make_model(role, *, depth=4096, depths=None, start=0):
    streams = stream_map(role, frame_bits=FRAME_BITS, phases=PHASES)
    all_depths = {stream.name: depth for stream in streams}
    all_depths.update(depths or {})
    model = HostLinkModel(role, board="ulx3s-85f", phases=PHASES, frame_bits=FRAME_BITS, depths=all_depths,
                          constants=CONSTANTS)
    for buffer in model.streams.values():
        buffer.low = buffer.high = start
    return model


def model_of(board):
    return getattr(board, "model", board)


class Rewriter:
    """A board that executes requests on ``model`` and lets ``edit(request, reply)`` decide what to send back (a
    list of replies); ``requests`` records what arrived (None for a damaged frame)."""

    def __init__(self, model, edit):
        self.model = model
        self.edit = edit
        self.requests = []
        self._splitter = FrameSplitter(header=2)

    def receive(self, data):
        out = bytearray()
        for body in self._splitter.feed(data):
            request = None if isinstance(body, Status) else decode_request(body)
            self.requests.append(request)
            for reply in self.edit(request, self.model.execute(body)):
                out += frame(encode_reply(reply))
        return bytes(out)


class Silent:
    def receive(self, data):
        return b""


class Background:
    """Produce ``data`` into out stream ``name`` (or consume ``count`` bytes from in stream ``name``) of whichever
    board ``server`` serves, in a thread, as the gateware would; ``after(done)`` runs between steps."""

    def __init__(self, server, name, *, data=None, count=None, after=None):
        self.server = server
        self.name = name
        self.data = data
        self.count = count
        self.after = after
        self.consumed = bytearray()
        self.done = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        rng = random.Random(7)
        total = len(self.data) if self.data is not None else self.count
        while self.done < total and not self._stop.is_set():
            with self.server.lock:
                model = model_of(self.server.board)
                buffer = model.streams[self.name]
                beat = buffer.stream.beat_bytes
                if self.data is not None:
                    size = min(buffer.free - buffer.free % beat, total - self.done, rng.randrange(1, 3000))
                    size -= size % beat
                    if size and model.produce(self.name, self.data[self.done:self.done + size]):
                        self.done += size
                else:
                    taken = model.consume(self.name, min(rng.randrange(1, 3000), total - self.done))
                    self.consumed += taken
                    self.done += len(taken)
            if self.after is not None:
                self.after(self.done)
            time.sleep(0.0003)

    def stop(self):
        self._stop.set()
        self._thread.join()

    def wait(self, timeout=10):
        """Let it finish (bounded): the consumer takes the last bytes the driver wrote."""
        self._thread.join(timeout)
        self.stop()
        return bytes(self.consumed)


class BoardTestCase(unittest.TestCase):
    def serve(self, make_board):
        server = serve(make_board)
        self.addCleanup(server.close)
        return server

    def open(self, url, **kwargs):
        board = Board.open(url, **kwargs)
        self.addCleanup(board.close)
        return board

    def background(self, *args, **kwargs):
        background = Background(*args, **kwargs)
        self.addCleanup(background.stop)
        return background

    def assertClean(self, board):
        counters = board.counters
        self.assertEqual((counters.retries, counters.timeouts, counters.crc_errors, counters.frame_errors,
                          counters.stale_replies), (0, 0, 0, 0, 0), counters)

    def test_open_both_roles(self):
        for role in Role:
            with self.subTest(role=role.name):
                server = self.serve(lambda: make_model(role, depths={"hash": 256, "flips": 8192}))
                board = self.open(server.url)
                self.assertEqual((board.role, board.board, board.phases, board.frame_bits),
                                 (role, "ulx3s-85f", PHASES, FRAME_BITS))
                self.assertEqual(board.info.version, VERSION)
                self.assertEqual(tuple(board.streams.values()),
                                 stream_map(role, frame_bits=FRAME_BITS, phases=PHASES))
                self.assertEqual((board.depth("hash"), board.depth("flips"), board.depth("key_words")),
                                 (256, 8192, 4096))
                self.assertEqual([register.name for register in board.registers],
                                 [register.name for register in register_map(role)])
                self.assertNotEqual(board.session, 0)
                with server.lock:
                    self.assertEqual(server.board.registers["session"], board.session)
                self.assertEqual(board.read("magic", "version", "ident"),
                                 {"magic": MAGIC, "version": 0x0100,
                                  "ident": int(role) | 2 << 8 | PHASES << 16 | FRAME_BITS << 24})
                self.assertEqual(board.hello(), board.info)
                rng = random.Random(int(role))
                with server.lock:
                    for register in register_map(role):
                        if not register.writable and register.name not in ("magic", "version", "ident"):
                            server.board.registers[register.name] = rng.getrandbits(32)
                    expected = dict(server.board.registers)
                values = board.read_all()
                self.assertEqual(list(values), [register.name for register in register_map(role)])
                self.assertEqual(values["bad_requests"], expected["bad_requests"])
                self.assertEqual({name: value for name, value in values.items() if name != "frames_ok"},
                                 {name: expected[name] for name in values if name != "frames_ok"})
                self.assertClean(board)

    def test_registers_batched(self):
        server = self.serve(lambda: make_model(Role.BOB))
        board = self.open(server.url)
        with server.lock:
            server.board.registers.update(edges=11, suppressed=22)

        def requests():
            with server.lock:
                return server.board.registers["frames_ok"]

        before = requests()
        self.assertEqual(board.read("gate_width", "edges", "magic", "suppressed"),
                         {"gate_width": 0, "edges": 11, "magic": MAGIC, "suppressed": 22})
        self.assertEqual(requests() - before, 3)     # edges and suppressed are neighbours: one READ
        before = requests()
        board.write(gate_start=0x1234, delay=0xfedcba98, period_low=0x01000000, period_high=0xff, control=3)
        self.assertEqual(requests() - before, 2)     # delay to gate_start in one WRITE, control in another
        with server.lock:
            registers = dict(server.board.registers)
        self.assertEqual((registers["delay"], registers["period_low"], registers["period_high"],
                          registers["gate_start"], registers["control"]), (0xfedcba98, 0x01000000, 0xff, 0x1234, 3))
        self.assertEqual(board.read("delay", "period_high"), {"delay": 0xfedcba98, "period_high": 0xff})
        before = requests()
        cases = [
            (ValueError, r"no register 'nope' on bob", lambda: board.read("magic", "nope")),
            (ValueError, r"no register 'period' on bob", lambda: board.write(period=1)),
            (ValueError, r"register 'magic' is read-only", lambda: board.write(session=5, magic=1)),
            (ValueError, r"register 'period_high' holds 8 bits, not 256", lambda: board.write(period_high=256)),
            (ValueError, r"register 'delay' holds 32 bits, not -1", lambda: board.write(delay=-1)),
            (TypeError, r"must be an integer, not 'x'", lambda: board.write(delay="x")),
            (TypeError, r"must be an integer, not True", lambda: board.write(control=True)),
        ]
        for error, message, call in cases:
            with self.subTest(message):
                with self.assertRaisesRegex(error, message):
                    call()
        self.assertEqual(requests(), before)         # nothing was sent
        self.assertClean(board)

    def test_board_errors(self):
        server = self.serve(lambda: make_model(Role.ALICE, depths={"lookups": 1024}))
        board = self.open(server.url)
        lookups, matches = board.streams["lookups"].number, board.streams["matches"].number
        cases = [
            (Command.HELLO, b"x", Status.ARGUMENT, r"request 0x01: the board rejected the arguments"),
            (0x7f, b"", Status.UNKNOWN, r"request 0x7f: the board does not know this command \(UNKNOWN\)"),
            (Command.READ, struct.pack("<HB", 23, 1), Status.ADDRESS, r"a register outside the map"),
            (Command.WRITE, struct.pack("<HI", 0, 1), Status.ADDRESS, r"read-only register; nothing was written"),
            (Command.READ_STREAM, struct.pack("<BIIH", lookups, 0, 0, 1), Status.STREAM,
             r"a stream of the other direction \(STREAM\)"),
            (Command.WRITE_STREAM, struct.pack("<BI", matches, 0), Status.STREAM, r"no such stream"),
            (Command.WRITE_STREAM, struct.pack("<BI", lookups, 7), Status.OFFSET,
             r"outside the stream's buffer \(OFFSET\); the board holds offsets 0 to 0"),
        ]
        for command, arguments, status, message in cases:
            with self.subTest(status=status.name):
                with self.assertRaisesRegex(BoardError, message) as caught:
                    board.request(command, arguments)
                self.assertEqual((caught.exception.status, caught.exception.command), (status, command))
        board.request(Command.WRITE_STREAM, struct.pack("<BI", lookups, 0) + bytes(512))
        board.request(Command.WRITE_STREAM, struct.pack("<BI", lookups, 512) + bytes(512))
        with self.assertRaisesRegex(BoardError, r"nothing was written \(FULL\); the board holds offsets 0 to 1024"):
            board.request(Command.WRITE_STREAM, struct.pack("<BI", lookups, 1024) + bytes(6))
        self.assertEqual(board.request(Command.READ, struct.pack("<HB", 0, 1)), b"QKDL")
        self.assertClean(board)

    def test_stream_user_errors(self):
        server = self.serve(lambda: make_model(Role.BOB))
        board = self.open(server.url)
        cases = [
            (r"stream 'answers' is an in \(host to board\) stream: use write_stream",
             lambda: board.read_stream("answers")),
            (r"stream 'tags' is an out \(board to host\) stream: use read_stream",
             lambda: board.write_stream("tags", b"")),
            (r"no stream 'lookups' on bob; streams: tags, detections", lambda: board.read_stream("lookups")),
            (r"no stream 'x' on bob", lambda: board.depth("x")),
            (r"no stream 'y' on bob", lambda: board.stream_offsets("y")),
            (r"count must be a whole number of 10-byte beats, not 15", lambda: board.read_stream("tags", 15)),
            (r"data must be whole 8-byte beats, not 12 bytes", lambda: board.write_stream("hash_blocks", bytes(12))),
        ]
        for message, call in cases:
            with self.subTest(message):
                with self.assertRaisesRegex(ValueError, message):
                    call()

    def test_bulk_read(self):
        # A megabyte of Bob's 10-byte time tags, produced as the driver acknowledges; the ring holds 4 KB.
        server = self.serve(lambda: make_model(Role.BOB))
        board = self.open(server.url)
        self.assertEqual(board.streams["tags"].beat_bytes, 10)
        data = np.random.default_rng(1).integers(0, 256, 10 * 104_858, np.uint8).tobytes()
        producer = self.background(server, "tags", data=data)
        received = board.read_stream("tags", 500_000) + board.read_stream("tags", len(data) - 500_000)
        self.assertTrue(received == data, "received bytes differ")
        board.read("magic")                          # after the ack that ended the last transfer
        with server.lock:
            tags = server.board.streams["tags"]
            self.assertEqual((tags.low, tags.high), (len(data), len(data)))
        producer.stop()
        self.assertClean(board)
        # Alice's 1-byte matches, drained as they come (count None returns what the board has).
        server = self.serve(lambda: make_model(Role.ALICE, depths={"matches": 1024}))
        board = self.open(server.url, window=2)
        data = bytes(np.random.default_rng(2).integers(0, 8, 100_000, np.uint8))
        producer = self.background(server, "matches", data=data)
        received = bytearray()
        for _ in range(100_000):
            received += board.read_stream("matches")
            if len(received) >= len(data) and producer.done == len(data):
                break
        self.assertTrue(received == data, "received bytes differ")
        self.assertEqual(board.read_stream("matches"), b"")
        self.assertClean(board)

    def test_bulk_write(self):
        # A megabyte of Bob's answers into a 1 KB ring, consumed as the gateware would.
        server = self.serve(lambda: make_model(Role.BOB, depths={"answers": 1024}))
        board = self.open(server.url)
        data = bytes(np.random.default_rng(3).integers(0, 8, 1 << 20, np.uint8))
        consumer = self.background(server, "answers", count=len(data))
        board.write_stream("answers", data[:300_000])
        board.write_stream("answers", data[300_000:])
        self.assertTrue(consumer.wait() == data, "consumed bytes differ")
        with server.lock:
            self.assertEqual(server.board.registers["bad_requests"], 0)    # never a FULL: flow control held
        self.assertClean(board)
        # Alice's 6-byte lookups, packed from fields.
        server = self.serve(lambda: make_model(Role.ALICE, depths={"lookups": 2048}))
        board = self.open(server.url, window=8)
        rng = np.random.default_rng(4)
        count = 20_000
        fields = {"frame": rng.integers(0, 1 << 32, count, np.uint64), "slot": rng.integers(0, 1 << 12, count),
                  "basis": rng.integers(0, 2, count)}
        data = pack_beats(board.streams["lookups"], **fields)
        consumer = self.background(server, "lookups", count=len(data))
        board.write_stream("lookups", data)
        self.assertTrue(consumer.wait() == data, "consumed bytes differ")
        decoded = unpack_beats(board.streams["lookups"], bytes(consumer.consumed))
        for name, values in fields.items():
            np.testing.assert_array_equal(decoded[name], values)
        self.assertClean(board)

    def test_offsets_wrap(self):
        # Streams whose offsets pass 2^32 during the transfers; the driver learns them at the first use.
        start = (1 << 32) - 5000
        server = self.serve(lambda: make_model(Role.ALICE, start=start, depths={"lookups": 1024}))
        board = self.open(server.url)
        data = bytes(np.random.default_rng(5).integers(0, 256, 30_000, np.uint8))
        self.assertEqual(board.stream_offsets("key_words"), (start, start))
        producer = self.background(server, "key_words", data=data)      # 3-byte beats
        self.assertTrue(board.read_stream("key_words", len(data)) == data)
        producer.stop()
        self.assertEqual(board.stream_offsets("key_words")[1], start + len(data))     # the driver's integers
        consumer = self.background(server, "lookups", count=30_000)
        board.write_stream("lookups", data)
        self.assertTrue(consumer.wait() == data)
        self.assertEqual(board.stream_offsets("lookups")[1], start + len(data))
        with server.lock:
            self.assertEqual(server.board.streams["lookups"].high, 30_000 - 5000)
        self.assertClean(board)

    def test_partial_reads_and_full_writes(self):
        server = self.serve(lambda: make_model(Role.ALICE, depths={"releases": 256}))
        board = self.open(server.url)
        with server.lock:
            server.board.produce("matches", bytes(range(30)))
        started = time.monotonic()
        self.assertEqual(board.read_stream("matches", 100, timeout=0.2), bytes(range(30)))
        self.assertGreaterEqual(time.monotonic() - started, 0.2)
        with server.lock:
            server.board.produce("matches", bytes(range(30, 100)))
        self.assertEqual(board.read_stream("matches", 70, timeout=0.2), bytes(range(30, 100)))
        # releases: 4-byte beats into a 256-byte ring that nothing consumes.
        data = bytes(range(256)) * 3
        with self.assertRaisesRegex(StreamTimeout, r"stream 'releases': the board took 256 of 768 bytes") as caught:
            board.write_stream("releases", data, timeout=0.2)
        self.assertEqual(caught.exception.written, 256)
        with server.lock:
            self.assertEqual(server.board.consume("releases"), data[:256])
        consumer = self.background(server, "releases", count=512)
        board.write_stream("releases", data[256:], timeout=5)
        self.assertEqual(consumer.wait(), data[256:])
        self.assertClean(board)

    def test_faults(self):
        # Bit flips, drops and duplicates both ways: every transfer completes byte-exact or raises LinkError (a
        # board that failed is not used again: its streams hold what the failed transfer left).
        server = self.serve(lambda: make_model(Role.BOB, depths={"answers": 2048}))
        outcomes = {}
        for seed, rate in [(1, 1e-3), (2, 1e-3), (3, 1e-3), (4, 3e-3), (5, 1e-2), (6, 1e-2)]:
            outcomes[seed] = done = []
            server.reset()
            # rate is per byte: a third of it each of flips, drops and duplicates.
            link = FaultyLink(server.address, flip=rate / 3, drop=rate / 3, duplicate=rate / 3, seed=seed)
            self.addCleanup(link.close)
            try:
                board = Board.open(link.url, timeout=0.05, retries=20 if rate < 1e-2 else 4)
            except LinkError as error:
                self.assertNotIsInstance(error, BoardReset)
                done.append("open failed")
                link.close()
                continue
            rng = np.random.default_rng(seed)
            try:
                for size in (30_000, 6, 3_000):
                    data = rng.integers(0, 256, size, np.uint8).tobytes()
                    producer = Background(server, "detections", data=data)
                    try:
                        received = board.read_stream("detections", size, timeout=20)
                    finally:
                        producer.stop()
                    self.assertTrue(received == data, f"seed {seed}: wrong data read")
                    done.append("read")
                    consumer = Background(server, "answers", count=size)
                    try:
                        board.write_stream("answers", data, timeout=20)
                    finally:
                        consumed = consumer.wait()
                        self.assertTrue(data.startswith(consumed), f"seed {seed}: wrong data written")
                    self.assertEqual(len(consumed), size)
                    done.append("write")
                    board.write(delay=size, gate_width=seed)
                    self.assertEqual(board.read("delay", "gate_width"), {"delay": size, "gate_width": seed})
                    done.append("registers")
            except LinkError as error:
                self.assertNotIsInstance(error, BoardReset)
                done.append("failed")
            if rate == 1e-3:
                counters = board.counters
                self.assertGreater(counters.retries, 0, counters)
                self.assertGreater(counters.crc_errors + counters.frame_errors, 0, counters)
                for direction in ("to_board", "to_host"):
                    self.assertGreater(sum(link.faults[direction].values()), 0, link.faults)
            board.close()
            link.close()
        # At 1e-3 a byte everything is expected to get through.
        for seed in (1, 2, 3):
            self.assertEqual(outcomes[seed], ["read", "write", "registers"] * 3, outcomes)

    def test_reset_in_mid_transfer(self):
        server = self.serve(lambda: make_model(Role.BOB))

        def reset_once(threshold):
            done = []

            def after(count):
                if count >= threshold and not done:
                    done.append(count)
                    server.reset()
            return after

        # Whole beats of both streams (6 and 10 bytes).
        data = np.random.default_rng(6).integers(0, 256, 199_980, np.uint8).tobytes()
        for name in ("detections", "tags"):
            with self.subTest(stream=name):
                server.reset()
                with Board.open(server.url) as board:
                    producer = self.background(server, name, data=data, after=reset_once(50_000))
                    with self.assertRaisesRegex(BoardReset, r"the board was reset \(session reads 0x00000000"):
                        board.read_stream(name, len(data))
                    with self.assertRaisesRegex(BoardReset, r"its streams restarted; reopen the link"):
                        board.read("magic")
                    producer.stop()
        # A reset between transfers, after which the fresh board has produced past the driver's offset: no reply
        # is refused, only the session shows it.
        server.reset()
        with Board.open(server.url) as board:
            with server.lock:
                server.board.produce("detections", data[:600])
            self.assertEqual(board.read_stream("detections", 600), data[:600])
            server.reset()
            with server.lock:
                server.board.produce("detections", data[:1200])
            with self.assertRaises(BoardReset):
                board.read_stream("detections", 600)
        # Writes.
        server.reset()
        with Board.open(server.url) as board:
            self.background(server, "answers", count=len(data), after=reset_once(50_000))
            with self.assertRaises(BoardReset):
                board.write_stream("answers", data)

    def test_lost_and_repeated_replies(self):
        # Every reply twice: the second is stale.
        server = self.serve(lambda: Rewriter(make_model(Role.ALICE), lambda request, reply: [reply, reply]))
        board = self.open(server.url, timeout=0.2)
        with server.lock:
            server.board.model.produce("test", bytes(range(200)))
        self.assertEqual(board.read_stream("test", 200), bytes(range(200)))
        self.assertEqual(board.read("magic"), {"magic": MAGIC})
        self.assertEqual(board.counters.stale_replies, board.counters.received)
        self.assertEqual(board.counters.retries, 0)
        # The first reply to a READ of control is lost: sent again after the time-out, then session is read.
        lost = []

        def lose(request, reply):
            if request is not None and request.command == Command.READ and request.arguments[0] == 18 and not lost:
                lost.append(request)
                return []
            return [reply]
        server = self.serve(lambda: Rewriter(make_model(Role.ALICE), lose))
        board = self.open(server.url, timeout=0.2)
        with server.lock:
            server.board.model.registers["control"] = 5
        started = time.monotonic()
        self.assertEqual(board.read("control"), {"control": 5})
        self.assertGreaterEqual(time.monotonic() - started, 0.2)
        self.assertEqual((board.counters.timeouts, board.counters.retries), (1, 1))
        board.read("magic")                         # the session READ went out before it
        with server.lock:
            commands = [(request.command, request.arguments) for request in server.board.requests]
        session = (Command.READ, struct.pack("<HB", 17, 1))
        self.assertEqual(commands[-4:], [(Command.READ, struct.pack("<HB", 18, 1))] * 2 + [session] +
                         [(Command.READ, struct.pack("<HB", 0, 1))])
        # A damaged request: the board's CRC reply makes the driver send it again at once.
        damaged = []

        def damage(request, reply):
            if request is not None and request.command == Command.WRITE and request.arguments[0] == 18 \
                    and not damaged:
                damaged.append(request)
                return [Reply(Status.CRC, 0, 0)]
            return [reply]
        server = self.serve(lambda: Rewriter(make_model(Role.ALICE), damage))
        board = self.open(server.url, timeout=5)
        started = time.monotonic()
        board.write(control=1)
        self.assertLess(time.monotonic() - started, 1)
        self.assertEqual((board.counters.crc_errors, board.counters.retries, board.counters.timeouts), (1, 1, 0))

    def test_not_a_board(self):
        started = time.monotonic()
        with self.assertRaisesRegex(LinkError, r"loop://: the port echoes what the driver sends"):
            Board.open("loop://", timeout=0.1, retries=2)
        with self.assertRaisesRegex(LinkError, r"no qkdlink board answers: HELLO: no valid reply after 3 tries"):
            Board.open(self.serve(Silent).url, timeout=0.1, retries=2)

        def other_version(request, reply):
            if request is not None and request.command == Command.HELLO:
                return [Reply(reply.status, reply.command, reply.tag, reply.payload[:4] + b"\x00\x02" +
                              reply.payload[6:])]
            return [reply]
        with self.assertRaisesRegex(LinkError, r"the board speaks protocol version 2.0; this host speaks 1.x"):
            Board.open(self.serve(lambda: Rewriter(make_model(Role.BOB), other_version)).url, timeout=0.1)

        def other_magic(request, reply):
            return [Reply(reply.status, reply.command, reply.tag, b"QKDM" + reply.payload[4:])]
        with self.assertRaisesRegex(LinkError, r"not a qkdlink board: HELLO gave magic 0x4d444b51"):
            Board.open(self.serve(lambda: Rewriter(make_model(Role.BOB), other_magic)).url, timeout=0.1)
        with self.assertRaisesRegex(LinkError, r"cannot open 'socket://127.0.0.1:1'"):
            Board.open("socket://127.0.0.1:1")
        self.assertLess(time.monotonic() - started, 5)

    def test_silent_board_bounded(self):
        server = self.serve(lambda: make_model(Role.BOB))
        board = self.open(server.url, timeout=0.1, retries=2)
        with server.lock:
            server.board = Silent()
        started = time.monotonic()
        with self.assertRaisesRegex(LinkError, r"READ of 'magic': no valid reply after 3 tries of 0.1 s .*"
                                               r"the board does not answer at all"):
            board.read("magic")
        # Three tries of the READ, the session READ (sent after the first time-out) three tries too.
        self.assertLess(time.monotonic() - started, 0.4 + 0.3)
        self.assertGreaterEqual(board.counters.timeouts, 5)

    def test_trace_log(self):
        server = self.serve(lambda: make_model(Role.BOB))
        board = self.open(server.url)
        with self.assertLogs("qkdlink.host.board", TRACE) as logs:
            board.read("magic")
        self.assertTrue(any("tx " in line for line in logs.output) and any("rx " in line for line in logs.output))


class BeatTestCase(unittest.TestCase):
    def test_against_integers(self):
        rng = random.Random(8)
        for role in Role:
            for stream in stream_map(role, frame_bits=FRAME_BITS, phases=PHASES):
                with self.subTest(role=role.name, stream=stream.name):
                    count = 50
                    fields = {field.name: [rng.choice([0, (1 << field.bits) - 1, rng.getrandbits(field.bits)])
                                           for _ in range(count)] for field in stream.fields}
                    expected = bytearray()
                    for index in range(count):
                        beat, shift = 0, 0
                        for field in stream.fields:
                            beat |= fields[field.name][index] << shift
                            shift += field.bits
                        expected += beat.to_bytes(stream.beat_bytes, "little")
                    arrays = {name: np.array(values, np.uint64) for name, values in fields.items()}
                    self.assertEqual(pack_beats(stream, **arrays), bytes(expected))
                    unpacked = unpack_beats(stream, bytes(expected))
                    self.assertEqual(list(unpacked), [field.name for field in stream.fields])
                    for field in stream.fields:
                        self.assertEqual(unpacked[field.name].tolist(), fields[field.name])
                        bits = {8: np.uint8, 16: np.uint16, 32: np.uint32, 64: np.uint64}
                        self.assertEqual(unpacked[field.name].dtype,
                                         next(np.dtype(dtype) for size, dtype in bits.items() if field.bits <= size))

    def test_wide_fields(self):
        tags = stream_map(Role.BOB, frame_bits=FRAME_BITS, phases=PHASES)[0]
        self.assertEqual(tags.fields[0].bits, 62)
        cycle = np.array([(1 << 62) - 1, 1 << 61, 12345], np.uint64)
        zeros = np.zeros(3, np.uint8)
        data = pack_beats(tags, cycle=cycle, hits=zeros, fine0=zeros, fine1=zeros, fine2=zeros, fine3=zeros,
                          fine4=zeros)
        self.assertEqual(data[:10], b"\xff" * 7 + b"\x3f\x00\x00")
        self.assertEqual(unpack_beats(tags, data)["cycle"].tolist(), cycle.tolist())

    def test_errors(self):
        matches = stream_map(Role.ALICE, frame_bits=FRAME_BITS, phases=PHASES)[1]
        with self.assertRaisesRegex(TypeError, r"stream 'matches' has fields match, intensity, not match"):
            pack_beats(matches, match=[1])
        with self.assertRaisesRegex(ValueError, r"field 'intensity' holds 2 bits, not 4"):
            pack_beats(matches, match=[1], intensity=[4])
        with self.assertRaisesRegex(ValueError, r"field 'match' holds 1 bits, not -1"):
            pack_beats(matches, match=[-1], intensity=[0])
        with self.assertRaisesRegex(ValueError, r"fields of different lengths \[1, 2\]"):
            pack_beats(matches, match=[1, 0], intensity=[0])
        with self.assertRaisesRegex(TypeError, r"one-dimensional array of integers"):
            pack_beats(matches, match=[0.5], intensity=[0])
        hash_blocks = stream_map(Role.ALICE, frame_bits=FRAME_BITS, phases=PHASES)[7]
        with self.assertRaisesRegex(ValueError, r"13 bytes are not whole 8-byte beats"):
            unpack_beats(hash_blocks, bytes(13))
        self.assertEqual(pack_beats(matches, match=[], intensity=[]), b"")
