"""The host's driver for a board, real or simulated: registers and pipelined stream transfers over the wire protocol.

:meth:`Board.open` takes any pyserial URL (``/dev/ttyUSB1``, ``socket://localhost:7001``); the protocol is the same
on all of them (``docs/protocol.md``). The driver never returns wrong data: every reply is checked (COBS, CRC-32,
tag and command), every request is idempotent and is sent again when its reply does not come, and every stream
transfer ends with a read of the ``session`` register that the board executes after all of the transfer's
requests, so that a board reset in the middle of a transfer raises :class:`BoardReset` instead of passing off a
restarted stream's bytes as the old one's.

Recovery relies on the board executing requests in the order they arrive and answering each in turn: when the
reply to a request comes, every request last sent before that one was first sent has lost its request or its reply,
and is sent again at once; a damaged frame (either way) sends the oldest outstanding request again; a time-out is
the last resort.
"""

import logging
import os
import struct
import time
from dataclasses import dataclass

import numpy as np
import serial

from ..wire import BOARD_IDS, MAGIC, MAX_DATA, MAX_REGISTERS, VERSION, Command, Role, Status, register_map, \
    stream_map
from .wire import (HELLO_HEADER, READ_ARGUMENTS, READ_STREAM_ARGUMENTS, STREAM_REPLY_HEADER, WRITE_STREAM_HEADER,
                   FrameSplitter, Request, decode_reply, encode_request, frame)


__all__ = ["Board", "BoardInfo", "LinkCounters", "LinkError", "BoardReset", "BoardError", "StreamTimeout",
           "pack_beats", "unpack_beats", "unwrap", "COUNT_WRAP", "TRACE"]


logger = logging.getLogger(__name__)

#: Log level of the wire dumps (every frame sent and every byte received), below DEBUG.
TRACE = 5
logging.addLevelName(TRACE, "TRACE")


class LinkError(Exception):
    """The link failed: a request got no valid reply after every retry, the port failed, or the board broke the
    protocol."""


class BoardReset(LinkError):
    """The board was reset while the link was open: its streams restarted, so the transfer cannot go on."""


class BoardError(Exception):
    """The board answered a request with an error ``status`` (a :class:`~qkdlink.wire.Status`)."""

    def __init__(self, status, command, message):
        super().__init__(message)
        self.status = Status(status)
        self.command = command


class StreamTimeout(TimeoutError):
    """A :meth:`Board.write_stream` that did not finish in time; ``written`` bytes of it are on the board."""

    def __init__(self, message, *, written):
        super().__init__(message)
        self.written = written


@dataclass
class LinkCounters:
    """What happened on the host's side of the link since it was opened."""
    #: Request frames sent, the resent ones included.
    sent: int = 0
    #: Intact replies to an outstanding request.
    received: int = 0
    #: Requests sent again (after a time-out, a damaged frame, or a reply that showed a request lost).
    retries: int = 0
    #: Requests whose reply did not come within the time-out.
    timeouts: int = 0
    #: Frames with a bad CRC: requests (the board's CRC replies) and replies (checked here).
    crc_errors: int = 0
    #: Frames that were not frames (bad COBS, too short or too long), either way.
    frame_errors: int = 0
    #: Intact replies to no outstanding request (a late reply to a request that was sent again), dropped.
    stale_replies: int = 0


@dataclass(frozen=True)
class BoardInfo:
    """The HELLO reply."""
    magic: int
    version: int
    role: Role
    #: A name of :data:`qkdlink.wire.BOARD_IDS`, or the number of a board this host does not know.
    board: object
    phases: int
    frame_bits: int
    #: log2 of each stream's buffer in bytes, in stream order.
    depth_bits: tuple


#: The board counts stream bytes and frames modulo 2^32; the host's counts do not wrap (:func:`unwrap`).
COUNT_WRAP = 1 << 32
# Tags come round every 256 requests. A late duplicate reply arrives before the reply to any request sent after
# its own transmission, so it could meet a new request with its tag only if some 255 requests were outstanding at
# once; a transfer keeps at most a window of them (plus a session read and an ack).
_MAX_WINDOW = 64
# How long to wait before asking again when a stream had no data, or no room.
_POLL = 0.002
_ECHO_RECORD = 4096

_MEANINGS = {
    Status.UNKNOWN:  "the board does not know this command",
    Status.ARGUMENT: "the board rejected the arguments (wrong length, or a count out of range)",
    Status.ADDRESS:  "a register outside the map, or a write to a read-only register; nothing was written",
    Status.STREAM:   "no such stream, or a stream of the other direction",
    Status.OFFSET:   "ack or offset outside the stream's buffer",
    Status.FULL:     "the data do not fit the stream's free space; nothing was written",
}


def unwrap(value, near):
    """The integer congruent to ``value`` modulo 2^32 that is nearest to ``near``: a board's count as the host
    counts, right while the two lie within 2^31 of each other. ``value`` may be an array of counts."""
    if not isinstance(value, int):
        value = np.asarray(value, np.int64)         # unsigned fields would wrap in the subtraction
    return near + (value - near + COUNT_WRAP // 2) % COUNT_WRAP - COUNT_WRAP // 2


class _Hex:
    """A lazily formatted, truncated hex dump for log messages."""

    def __init__(self, data, limit=64):
        self.data = data
        self.limit = limit

    def __str__(self):
        text = bytes(self.data[:self.limit]).hex()
        return text + (f"... ({len(self.data)} bytes)" if len(self.data) > self.limit else "")


class _Pending:
    """A request sent and not yet answered."""

    def __init__(self, tag, command, wire, what):
        self.tag = tag
        self.command = command
        self.wire = wire
        self.what = what
        self.first_seq = None   # when it was first sent (transmissions are numbered in order)
        self.sent_seq = None    # when it was last sent
        self.deadline = None
        self.tries = 0
        # An optional request is never sent again: its reply is dropped when it comes, and it is forgotten when a
        # later reply shows it lost. Requests a caller abandoned become optional.
        self.optional = False


class _StreamState:
    """The driver's offsets of one stream, as integers that do not wrap (the wire carries them modulo 2^32)."""

    def __init__(self, position, low, high):
        self.position = position    # out streams: the first byte not yet received (in streams write at high)
        self.low = low              # the board's low and high as last seen
        self.high = high
        self.acked = position       # out streams: the highest ack sent


class Board:
    """A board on the other end of an open pyserial ``port``; :meth:`open` is the usual way to get one.

    The constructor says HELLO, checks ``MAGIC`` and the major version, learns the board's role, streams and
    their depths, and writes a random non-zero ``session`` that it reads back to detect a board reset. A board is
    driven from one thread at a time.

    Parameters
    ----------
    port : serial.SerialBase
    timeout : float
        Seconds to wait for a reply before sending the request again.
    retries : int
        How many times one request is sent again (for any reason) before :class:`LinkError`.
    window : int
        Requests in flight at once in pipelined transfers (1 is stop-and-wait).
    url : str, optional
        Named in error messages.

    Attributes
    ----------
    counters : LinkCounters
    info : BoardInfo
    session : int

    Raises
    ------
    LinkError
        If nothing answers HELLO as a board of this protocol's major version.
    """

    @classmethod
    def open(cls, url, *, timeout=1.0, retries=5, window=4, baudrate=3_000_000):
        """Open pyserial ``url`` and the link to the board on it; see :class:`Board`."""
        try:
            port = serial.serial_for_url(url, baudrate=baudrate, timeout=0, write_timeout=timeout)
        except (serial.SerialException, ValueError) as error:
            raise LinkError(f"cannot open {url!r}: {error}") from None
        return cls(port, timeout=timeout, retries=retries, window=window, url=url)

    def __init__(self, port, *, timeout=1.0, retries=5, window=4, url=None):
        if not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        if not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be a non-negative integer, not {retries!r}")
        if not isinstance(window, int) or not 1 <= window <= _MAX_WINDOW:
            raise ValueError(f"window must be an integer from 1 to {_MAX_WINDOW}, not {window!r}")
        self._port = port
        self.url = url if url is not None else getattr(port, "name", repr(port))
        self.timeout = float(timeout)
        self.retries = retries
        self.window = window
        self.counters = LinkCounters()
        self.session = None
        self._splitter = FrameSplitter(header=3)
        self._pending = {}          # tag -> _Pending
        self._done = {}             # tag -> (_Pending, Reply), for the caller that waits for it
        self._next_tag = 0
        self._seq = 0
        self._port_timeout = 0
        self._checks = set()        # tags of session reads in flight
        self._verified_seq = -1     # every request sent up to here was executed before a board reset, if any
        self._reset_message = None
        self._probing = False
        self._echo = bytearray()    # the first bytes received, to recognise a port that echoes
        self._states = {}
        try:
            self._handshake()
        except BaseException:
            port.close()
            raise

    def _handshake(self):
        self._transmit_raw(b"\0")       # ends whatever half frame the board holds
        try:
            info = self.hello()
        except LinkError as error:
            # The first request is HELLO with tag 0.
            if frame(encode_request(Request(Command.HELLO, 0))) in self._echo:
                raise LinkError(f"{self.url}: the port echoes what the driver sends (a loopback such as loop://), "
                                f"it is not a board") from None
            raise LinkError(f"{self.url}: no qkdlink board answers: "
                            f"{str(error).removeprefix(self.url + ': ')}") from None
        finally:
            self._echo = None
        if info.magic != MAGIC:
            raise LinkError(f"{self.url}: not a qkdlink board: HELLO gave magic 0x{info.magic:08x}, "
                            f"not 0x{MAGIC:08x}")
        if info.version >> 8 != VERSION >> 8:
            raise LinkError(f"{self.url}: the board speaks protocol version {info.version >> 8}."
                            f"{info.version & 0xff}; this host speaks {VERSION >> 8}.x")
        self.info = info
        self._map = register_map(info.role)
        self._stream_list = stream_map(info.role, frame_bits=info.frame_bits, phases=info.phases)
        if len(info.depth_bits) != len(self._stream_list):
            raise LinkError(f"{self.url}: HELLO gave {len(info.depth_bits)} stream depths for "
                            f"{len(self._stream_list)} streams of {info.role.name.lower()}")
        self._streams = {stream.name: stream for stream in self._stream_list}
        session = 0
        while session == 0:
            session = int.from_bytes(os.urandom(4), "little")
        self.write(session=session)
        self._session_address = self._map["session"].address
        self.session = session
        self._verified_seq = self._seq
        logger.debug("%s: %s board %s, %d phases, 2^%d slots a frame, session 0x%08x", self.url,
                     info.role.name.lower(), info.board, info.phases, info.frame_bits, session)

    # What the board is.

    @property
    def role(self):
        return self.info.role

    @property
    def board(self):
        return self.info.board

    @property
    def phases(self):
        return self.info.phases

    @property
    def frame_bits(self):
        return self.info.frame_bits

    @property
    def streams(self):
        """The role's streams by name (a dict of :class:`~qkdlink.wire.Stream`)."""
        return dict(self._streams)

    @property
    def registers(self):
        """The role's :class:`~qkdlink.wire.RegisterMap`."""
        return self._map

    def depth(self, name):
        """The board's buffer of stream ``name``, in bytes."""
        stream = self._stream(name)
        return 1 << self.info.depth_bits[stream.number]

    def close(self):
        self._port.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    # Commands.

    def hello(self):
        """The board's :class:`BoardInfo` (the HELLO reply)."""
        [payload] = self._calls([(Command.HELLO, b"", "HELLO")])
        if len(payload) < HELLO_HEADER.size:
            raise LinkError(f"{self.url}: HELLO reply of {len(payload)} bytes, shorter than {HELLO_HEADER.size}")
        magic, version, role, board, phases, frame_bits = HELLO_HEADER.unpack_from(payload)
        if magic != MAGIC:
            return BoardInfo(magic, version, None, board, phases, frame_bits, ())
        try:
            role = Role(role)
        except ValueError:
            raise LinkError(f"{self.url}: HELLO gave role {role}, neither Alice (0) nor Bob (1)") from None
        names = {number: name for name, number in BOARD_IDS.items()}
        return BoardInfo(magic, version, role, names.get(board, board), phases, frame_bits,
                         tuple(payload[HELLO_HEADER.size:]))

    def request(self, command, arguments=b""):
        """Send one raw request; the reply's payload. :class:`BoardError` if its status is not OK."""
        self._check_usable()
        [payload] = self._calls([(int(command), bytes(arguments), f"request 0x{int(command):02x}")])
        return payload

    def read(self, *names):
        """The values of registers ``names`` (a dict), read with one READ per run of consecutive addresses."""
        self._check_usable()
        registers = [self._register(name) for name in names]
        runs = self._runs(sorted({register.address for register in registers}))
        requests = [(Command.READ, READ_ARGUMENTS.pack(start, count),
                     f"READ of {', '.join(repr(self._map.registers[a].name) for a in range(start, start + count))}")
                    for start, count in runs]
        values = {}
        for (start, count), payload in zip(runs, self._calls(requests)):
            if len(payload) != 4 * count:
                raise LinkError(f"{self.url}: READ of {count} registers answered with {len(payload)} bytes")
            for index, value in enumerate(struct.unpack(f"<{count}I", payload)):
                values[start + index] = value
        return {register.name: values[register.address] for register in registers}

    def read_all(self):
        """Every register of the role, by name, in address order."""
        return self.read(*(register.name for register in self._map))

    def write(self, **values):
        """Write registers by name, with one WRITE per run of consecutive addresses.

        Raises
        ------
        ValueError
            For an unknown or read-only register, or a value that does not fit its width; nothing is written.
        """
        self._check_usable()
        by_address = {}
        for name, value in values.items():
            register = self._register(name)
            if not register.writable:
                raise ValueError(f"register {name!r} is read-only")
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                raise TypeError(f"register {name!r}: the value must be an integer, not {value!r}")
            if not 0 <= value < 1 << register.width:
                raise ValueError(f"register {name!r} holds {register.width} bits, not {value!r}")
            by_address[register.address] = int(value)
        runs = self._runs(sorted(by_address))
        self._calls([(Command.WRITE,
                      struct.pack(f"<H{count}I", start, *(by_address[a] for a in range(start, start + count))),
                      f"WRITE of {', '.join(repr(self._map.registers[a].name) for a in range(start, start + count))}")
                     for start, count in runs])

    def read_stream(self, name, count=None, *, timeout=None):
        """Whole beats of out stream ``name``: ``count`` bytes, or (``count`` None) all the board has now.

        Keeps up to ``window`` READ_STREAMs of ``MAX_DATA`` bytes in flight, each acknowledging the bytes received in
        order before it was sent, and asks for at most half the board's buffer beyond the bytes received (the rest
        fills while the acknowledgements travel). With ``count``, fewer bytes come back only if ``timeout`` seconds
        pass first (as in pyserial; None waits as long as it takes). The bytes are returned once a read of
        ``session`` that the board executed after every request of the transfer showed no reset.
        """
        self._check_usable()
        stream = self._stream(name, out=True)
        beat = stream.beat_bytes
        if count is not None:
            if not isinstance(count, (int, np.integer)) or count < 0 or count % beat:
                raise ValueError(f"stream {name!r}: count must be a whole number of {beat}-byte beats, "
                                 f"not {count!r}")
            count = int(count)
        deadline = None if timeout is None else time.monotonic() + timeout
        state = self._sync(stream)
        last_seq = self._seq
        chunk = MAX_DATA - MAX_DATA % beat
        # Bytes stay in the ring until the ack of a later request: asking for more than half of it ahead of the
        # bytes received leaves no room to produce into while the acks travel, and the transfer stalls.
        ahead = max(self.depth(name) // 2, chunk)
        target = None if count is None else state.position + count
        out = bytearray()
        arrived = {}                # offset -> data received ahead of a gap
        waiting = {}                # tag -> (offset, length, tail)
        issued = state.position     # offset after the last request issued
        issued_seq = last_seq       # when the last request was issued
        tail = False                # a poll (a request for bytes not known to be there) is in flight
        caught_up = False           # (count None) the board had no more
        idle_until = 0.0
        try:
            while True:
                now = time.monotonic()
                expired = deadline is not None and now >= deadline
                while not (tail or caught_up or expired) and len(waiting) < self.window:
                    if target is not None and issued >= target:
                        break
                    want = chunk if target is None else min(chunk, target - issued)
                    if waiting and issued + want - state.position > ahead:
                        break
                    there = state.high - issued
                    # Less than a whole request's bytes is asked for only when nothing is in flight: the replies
                    # that come tell of more.
                    full = there >= want or (there >= beat and not waiting)
                    if full:
                        want = min(want, there - there % beat)
                    elif waiting or now < idle_until:
                        # A poll only when nothing else is in flight: nothing can be issued after it.
                        break
                    p = self._send(Command.READ_STREAM,
                                   READ_STREAM_ARGUMENTS.pack(stream.number, state.position % COUNT_WRAP,
                                                              issued % COUNT_WRAP, want),
                                   f"READ_STREAM of {want} bytes of stream {name!r} at offset {issued % COUNT_WRAP}")
                    state.acked = max(state.acked, state.position)
                    issued_seq = p.sent_seq
                    waiting[p.tag] = (issued, want, not full)
                    if full:
                        issued += want
                    else:
                        tail = True
                if waiting and (tail or (target is not None and issued >= target)):
                    self._want_check(issued_seq)    # in flight with the last data, so that it costs no wait
                if not waiting:
                    if caught_up or state.position == target or expired:
                        break
                    until = idle_until if deadline is None else min(idle_until, deadline)
                else:
                    until = None
                for p, reply in self._collect(waiting, until):
                    offset, length, is_tail = waiting.pop(p.tag)
                    last_seq = max(last_seq, p.sent_seq)
                    high, data = self._stream_reply(p, reply, state)
                    if is_tail:
                        data = data[:len(data) - len(data) % beat]
                        tail = False
                        issued = offset + len(data)
                        if len(data) < length:
                            if target is None:
                                caught_up = True
                            elif not data:
                                idle_until = time.monotonic() + _POLL
                    elif len(data) != length or high < offset + length:
                        self._surprise(f"{p.what} came back with {len(data)} bytes and high {high % COUNT_WRAP}")
                    if data:
                        arrived[offset] = data
                    while state.position in arrived:
                        data = arrived.pop(state.position)
                        out += data
                        state.position += len(data)
        finally:
            self._abandon(waiting)
        self._ensure_verified(last_seq)
        if state.position > state.acked:
            # Frees the ring now rather than at the next transfer; its reply is not waited for.
            p = self._send(Command.READ_STREAM,
                           READ_STREAM_ARGUMENTS.pack(stream.number, state.position % COUNT_WRAP,
                                                      state.position % COUNT_WRAP, 0),
                           f"ack of stream {name!r} up to {state.position % COUNT_WRAP}")
            p.optional = True
            state.acked = state.position
        return bytes(out)

    def write_stream(self, name, data, *, timeout=None):
        """Append ``data`` (whole beats) to in stream ``name``.

        Keeps up to ``window`` WRITE_STREAMs of ``MAX_DATA`` bytes in flight, as far as the ring's free space (known
        from the replies) allows, and waits for space when the board has not consumed enough. Returns once a read of
        ``session`` executed after every request showed no reset.

        Raises
        ------
        StreamTimeout
            If ``timeout`` seconds (None: no limit) pass before everything was written.
        """
        self._check_usable()
        stream = self._stream(name, out=False)
        data = bytes(data)
        beat = stream.beat_bytes
        if len(data) % beat:
            raise ValueError(f"stream {name!r}: data must be whole {beat}-byte beats, not {len(data)} bytes")
        deadline = None if timeout is None else time.monotonic() + timeout
        depth = self.depth(name)
        state = self._sync(stream)
        last_seq = self._seq
        chunk = MAX_DATA - MAX_DATA % beat
        start = state.high
        end = start + len(data)
        issued = start              # the next offset to send (it goes back when a write was refused)
        waiting = {}                # tag -> (offset, length)
        issued_seq = last_seq
        idle_until = 0.0
        try:
            while True:
                now = time.monotonic()
                expired = deadline is not None and now >= deadline
                while not expired and issued < end and len(waiting) < self.window and now >= idle_until:
                    length = min(chunk, end - issued)
                    room = depth - (issued - state.low)
                    if room < length:
                        # Wait for the replies in flight to tell of more room before sending a smaller write.
                        if waiting or room < beat:
                            break
                        length = room - room % beat
                    p = self._send(Command.WRITE_STREAM,
                                   WRITE_STREAM_HEADER.pack(stream.number, issued % COUNT_WRAP) +
                                   data[issued - start:issued - start + length],
                                   f"WRITE_STREAM of {length} bytes to stream {name!r} at offset {issued % COUNT_WRAP}")
                    waiting[p.tag] = (issued, length)
                    issued_seq = p.sent_seq
                    issued += length
                if not waiting:
                    if state.high >= end:
                        break
                    if expired:
                        raise StreamTimeout(f"stream {name!r}: the board took {state.high - start} of {len(data)} "
                                            f"bytes in {timeout} s", written=state.high - start)
                    if now >= idle_until:
                        # No room as far as we know: ask how much the board has consumed.
                        p = self._send(Command.WRITE_STREAM,
                                       WRITE_STREAM_HEADER.pack(stream.number, state.high % COUNT_WRAP),
                                       f"WRITE_STREAM poll of stream {name!r} at offset {state.high % COUNT_WRAP}")
                        waiting[p.tag] = (state.high, 0)
                until = None if waiting else idle_until if deadline is None else min(idle_until, deadline)
                if waiting and issued >= end:
                    self._want_check(issued_seq)
                for p, reply in self._collect(waiting, until):
                    offset, length = waiting.pop(p.tag)
                    last_seq = max(last_seq, p.sent_seq)
                    low = state.low
                    high, _ = self._stream_reply(p, reply, state)
                    if reply.status is Status.OK:
                        if high < offset + length:
                            self._surprise(f"{p.what} was answered OK with high {high % COUNT_WRAP}")
                        if length == 0 and state.low == low:
                            idle_until = time.monotonic() + _POLL
                    elif reply.status is Status.FULL:
                        issued = min(issued, offset)
                        idle_until = time.monotonic() + _POLL
                    elif high < offset:
                        # An earlier write was lost and is being sent again; this one follows it.
                        issued = min(issued, offset)
                        self._want_check(p.sent_seq)
                    else:
                        self._surprise(f"{p.what} was refused (OFFSET) with high {high % COUNT_WRAP}")
                    issued = max(issued, state.high)
        finally:
            self._abandon(waiting)
        self._ensure_verified(last_seq)

    # Streams.

    def stream_offsets(self, name):
        """``(low, high)``: stream ``name``'s byte offsets as the driver knows them (the first time, learned from
        the board with a request that changes nothing; after that, from each transfer). An out stream holds the
        bytes from ``low`` to ``high`` for the host; an in stream has taken every byte before ``high``. The
        board counts modulo 2^32; these are the driver's integers, which do not wrap within a session."""
        self._check_usable()
        state = self._sync(self._stream(name))
        return state.low, state.high

    def _stream(self, name, out=None):
        try:
            stream = self._streams[name]
        except KeyError:
            raise ValueError(f"no stream {name!r} on {self.role.name.lower()}; streams: "
                             f"{', '.join(self._streams)}") from None
        if out is not None and stream.out != out:
            direction, method = ("out (board to host)", "read_stream") if stream.out else \
                                ("in (host to board)", "write_stream")
            raise ValueError(f"stream {name!r} is an {direction} stream: use {method}")
        return stream

    def _sync(self, stream):
        """The stream's state; the first time, asked from the board with a request that changes nothing (unless
        the board's offsets wrapped through zero since its reset)."""
        state = self._states.get(stream.name)
        if state is not None:
            return state
        if stream.out:
            arguments = READ_STREAM_ARGUMENTS.pack(stream.number, 0, 0, 0)
            command = Command.READ_STREAM
        else:
            arguments = WRITE_STREAM_HEADER.pack(stream.number, 0)
            command = Command.WRITE_STREAM
        waiting = {self._send(command, arguments, f"offsets of stream {stream.name!r}").tag: None}
        [(p, reply)] = self._collect(waiting)
        if reply.status not in (Status.OK, Status.OFFSET) or len(reply.payload) < STREAM_REPLY_HEADER.size:
            raise self._error(p, reply)
        low, high = STREAM_REPLY_HEADER.unpack_from(reply.payload)
        high = unwrap(high, low)
        state = _StreamState(low if stream.out else high, low, high)
        self._states[stream.name] = state
        return state

    def _stream_reply(self, p, reply, state):
        """Update ``state`` from a stream reply's low and high; the reply's high and the data after them."""
        if reply.status not in (Status.OK, Status.OFFSET, Status.FULL):
            raise self._error(p, reply)
        if len(reply.payload) < STREAM_REPLY_HEADER.size:
            raise LinkError(f"{self.url}: {p.what}: reply of {len(reply.payload)} bytes has no low and high")
        low, high = STREAM_REPLY_HEADER.unpack_from(reply.payload)
        if reply.status is Status.OFFSET and p.command == Command.READ_STREAM:
            self._surprise(f"{p.what} was refused (OFFSET): the board holds {low} to {high}")
        high = unwrap(high, state.high)
        state.low = max(state.low, unwrap(low, state.low))
        state.high = max(state.high, high)
        return high, reply.payload[STREAM_REPLY_HEADER.size:]

    def _surprise(self, what):
        """A reply the protocol does not allow from the board this driver opened: a reset, or a broken board."""
        self._check_session()
        raise LinkError(f"{self.url}: {what}; the session is unchanged, so the board was not reset")

    # Registers.

    def _register(self, name):
        try:
            return self._map[name]
        except KeyError as error:
            raise ValueError(error.args[0]) from None

    @staticmethod
    def _runs(addresses):
        """(start, count) of runs of consecutive ``addresses`` (sorted), each at most MAX_REGISTERS long."""
        runs = []
        for address in addresses:
            if runs and runs[-1][0] + runs[-1][1] == address and runs[-1][1] < MAX_REGISTERS:
                runs[-1][1] += 1
            else:
                runs.append([address, 1])
        return [tuple(run) for run in runs]

    # Requests.

    def _check_usable(self):
        if self._reset_message is not None:
            raise BoardReset(self._reset_message)

    def _calls(self, requests):
        """Send ``requests`` ((command, arguments, what) each) with up to ``window`` in flight; their reply
        payloads in order. :class:`BoardError` for an error status."""
        payloads = [None] * len(requests)
        waiting = {}
        index = 0
        try:
            while index < len(requests) or waiting:
                while index < len(requests) and len(waiting) < self.window:
                    waiting[self._send(*requests[index]).tag] = index
                    index += 1
                for p, reply in self._collect(waiting):
                    if reply.status is not Status.OK:
                        raise self._error(p, reply)
                    payloads[waiting.pop(p.tag)] = reply.payload
        finally:
            self._abandon(waiting)
        return payloads

    def _error(self, p, reply):
        message = f"{self.url}: {p.what}: {_MEANINGS.get(reply.status, 'failed')} ({reply.status.name})"
        if reply.status in (Status.OFFSET, Status.FULL) and len(reply.payload) >= STREAM_REPLY_HEADER.size:
            low, high = STREAM_REPLY_HEADER.unpack_from(reply.payload)
            message += f"; the board holds offsets {low} to {high}"
        return BoardError(reply.status, p.command, message)

    def _send(self, command, arguments, what):
        for _ in range(256):
            tag = self._next_tag
            self._next_tag = (tag + 1) % 256
            if tag not in self._pending and tag not in self._done:
                break
        else:
            raise LinkError(f"{self.url}: all 256 tags are in use")
        p = _Pending(tag, int(command), frame(encode_request(Request(int(command), tag, arguments))), what)
        self._pending[tag] = p
        self._transmit(p)
        p.first_seq = p.sent_seq
        return p

    def _transmit(self, p, *, again=False):
        self._seq += 1
        p.sent_seq = self._seq
        p.deadline = time.monotonic() + self.timeout
        p.tries += 1
        if again:
            self.counters.retries += 1
            # The zero ends a half frame the board may hold, so that this frame arrives whole.
            self._transmit_raw(b"\0" + p.wire)
        else:
            self._transmit_raw(p.wire)
        self.counters.sent += 1

    def _transmit_raw(self, data):
        if logger.isEnabledFor(TRACE):
            logger.log(TRACE, "%s: tx %s", self.url, _Hex(data))
        try:
            self._port.write(data)
        except serial.SerialException as error:
            raise LinkError(f"{self.url}: cannot send: {error}") from None

    def _receive(self, wait):
        """The bytes that arrive within ``wait`` seconds: all that are there once one is."""
        try:
            data = self._read(0, 1 << 16)
            if not data and wait > 0:
                data = self._read(wait, 1)
                if data:
                    data += self._read(0, 1 << 16)
        except serial.SerialException as error:
            raise LinkError(f"{self.url}: cannot receive: {error}") from None
        if data:
            if logger.isEnabledFor(TRACE):
                logger.log(TRACE, "%s: rx %s", self.url, _Hex(data))
            if self._echo is not None and len(self._echo) < _ECHO_RECORD:
                self._echo += data
        return data

    def _read(self, timeout, size):
        if self._port_timeout != timeout:
            self._port.timeout = self._port_timeout = timeout
        return self._port.read(size)

    def _abandon(self, waiting):
        """Stop waiting for the requests ``waiting`` (their replies, when they come, are dropped)."""
        for tag in waiting:
            if tag in self._pending:
                self._pending[tag].optional = True
            self._done.pop(tag, None)

    def _collect(self, waiting, until=None):
        """The (request, reply) pairs of ``waiting`` that have come: at least one, or none once ``until`` (a
        :func:`time.monotonic` time) passes. The requests' own time-outs bound the wait."""
        while True:
            ready = [self._done.pop(tag) for tag in list(self._done) if tag in waiting]    # in arrival order
            if ready or (until is not None and time.monotonic() >= until):
                return ready
            self._pump(until if until is not None else time.monotonic() + self.timeout)

    def _pump(self, until):
        """Handle the frames that come before ``until`` (or before the first request's time-out), then
        time-outs."""
        deadline = min((p.deadline for p in self._pending.values() if not p.optional), default=until)
        data = self._receive(max(0.0, min(until, deadline) - time.monotonic()))
        if data:
            for item in self._splitter.feed(data):
                self._frame(item)
        self._expire()

    def _frame(self, item):
        if isinstance(item, Status):
            self._bad_frame(item, "reply")
            return
        try:
            reply = decode_reply(item)
        except ValueError as error:
            self._bad_frame(Status.FRAME, f"reply ({error})")
            return
        if reply.status in (Status.CRC, Status.FRAME):
            self._bad_frame(reply.status, "request")
            return
        p = self._pending.get(reply.tag)
        if p is None or p.command != reply.command:
            self.counters.stale_replies += 1
            logger.debug("%s: dropped a stale reply (command 0x%02x, tag %d)", self.url, reply.command, reply.tag)
            return
        self.counters.received += 1
        del self._pending[reply.tag]
        # The board answers in order: a request last sent before this one was first sent got no reply, and never
        # will.
        for other in list(self._pending.values()):
            if other.sent_seq < p.first_seq:
                if other.optional:
                    del self._pending[other.tag]
                elif other.tries <= self.retries:
                    logger.debug("%s: %s: lost, sent again", self.url, other.what)
                    self._transmit(other, again=True)
        if p.optional:
            return
        if p.tag in self._checks:
            self._checked(p, reply)
        else:
            self._done[p.tag] = (p, reply)

    def _bad_frame(self, status, which):
        if status is Status.CRC:
            self.counters.crc_errors += 1
        else:
            self.counters.frame_errors += 1
        logger.debug("%s: a damaged %s (%s)", self.url, which, status.name)
        # In order, it stands for the oldest request not answered yet.
        candidates = [p for p in self._pending.values() if not p.optional and p.tries <= self.retries]
        if candidates:
            self._transmit(min(candidates, key=lambda p: p.sent_seq), again=True)

    def _expire(self):
        now = time.monotonic()
        for p in list(self._pending.values()):
            if p.optional or p.deadline > now or self._pending.get(p.tag) is not p:
                continue
            if p.tries > self.retries and self._probing and p.tag not in self._checks:
                p.deadline = now + self.timeout         # given up on once the session is read
                continue
            self.counters.timeouts += 1
            if p.tries > self.retries:
                self._exhausted(p)
            logger.info("%s: %s: no reply within %g s, sending it again", self.url, p.what, self.timeout)
            self._transmit(p, again=True)
            if self.session is not None and not self._probing:
                self._want_check(self._seq)

    def _exhausted(self, p):
        message = (f"{self.url}: {p.what}: no valid reply after {p.tries} tries of {self.timeout:g} s "
                   f"({self._summary()})")
        if self.session is not None and p.tag not in self._checks and not self._probing:
            try:
                self._check_session()
            except BoardReset:
                raise
            except LinkError:
                raise LinkError(message + "; the board does not answer at all") from None
        raise LinkError(message)

    def _summary(self):
        c = self.counters
        return (f"{c.sent} sent, {c.received} answered, {c.retries} retries, {c.timeouts} time-outs, "
                f"{c.crc_errors} CRC and {c.frame_errors} framing errors, {c.stale_replies} stale replies")

    # Board resets.

    def _want_check(self, seq):
        """Make sure a read of ``session`` sent after transmission ``seq`` is in flight or done."""
        if self.session is None or self._verified_seq > seq:
            return
        if any(self._pending[tag].first_seq > seq for tag in self._checks):
            return
        p = self._send(Command.READ, READ_ARGUMENTS.pack(self._session_address, 1), "READ of 'session'")
        self._checks.add(p.tag)

    def _ensure_verified(self, seq):
        """Wait until a read of ``session`` sent after transmission ``seq`` has come back unchanged."""
        while self.session is not None and self._verified_seq <= seq:
            self._want_check(seq)
            self._pump(time.monotonic() + self.timeout)

    def _check_session(self):
        """Read ``session`` now; :class:`BoardReset` if it changed."""
        if self._probing:
            return
        self._probing = True
        try:
            self._ensure_verified(self._seq)
        finally:
            self._probing = False

    def _checked(self, p, reply):
        self._checks.discard(p.tag)
        if reply.status is not Status.OK or len(reply.payload) != 4:
            raise self._error(p, reply)
        (value,) = struct.unpack("<I", reply.payload)
        if value != self.session:
            self._reset_message = (f"{self.url}: the board was reset (session reads 0x{value:08x}, not "
                                   f"0x{self.session:08x}): its streams restarted; reopen the link")
            logger.error("%s", self._reset_message)
            raise BoardReset(self._reset_message)
        self._verified_seq = max(self._verified_seq, p.first_seq)


# Beats.

def _field_offsets(stream):
    offset = 0
    for field in stream.fields:
        yield field, offset
        offset += field.bits


def _dtype(bits):
    for dtype in (np.uint8, np.uint16, np.uint32):
        if bits <= 8 * np.dtype(dtype).itemsize:
            return dtype
    return np.uint64


def pack_beats(stream, **fields):
    """The bytes of beats of ``stream`` (a :class:`~qkdlink.wire.Stream`), one array (or sequence) per field.

    Fields are packed least significant first into ``stream.beat_bytes`` bytes, little-endian, zero padded.
    """
    names = [field.name for field in stream.fields]
    if sorted(fields) != sorted(names):
        raise TypeError(f"stream {stream.name!r} has fields {', '.join(names)}, not {', '.join(fields)}")
    arrays = {}
    for field in stream.fields:
        values = np.asarray(fields[field.name])
        if values.ndim != 1 or not (np.issubdtype(values.dtype, np.integer) or values.size == 0):
            raise TypeError(f"stream {stream.name!r}: field {field.name!r} must be a one-dimensional array of "
                            f"integers, not {values!r}")
        if values.size and (values.min() < 0 or int(values.max()) >> field.bits):
            raise ValueError(f"stream {stream.name!r}: field {field.name!r} holds {field.bits} bits, not "
                             f"{int(values.max()) if values.min() >= 0 else int(values.min())}")
        arrays[field.name] = values.astype(np.uint64)
    counts = {len(values) for values in arrays.values()}
    if len(counts) > 1:
        raise ValueError(f"stream {stream.name!r}: fields of different lengths {sorted(counts)}")
    count = counts.pop()
    out = np.zeros((count, stream.beat_bytes), np.uint8)
    for field, offset in _field_offsets(stream):
        values = arrays[field.name]
        for index in range(offset // 8, (offset + field.bits - 1) // 8 + 1):
            shift = 8 * index - offset
            part = values >> np.uint64(shift) if shift >= 0 else values << np.uint64(-shift)
            out[:, index] |= (part & np.uint64(0xff)).astype(np.uint8)
    return out.tobytes()


def unpack_beats(stream, data):
    """The fields of the beats in ``data`` (whole beats of ``stream``): a dict of arrays, each of the smallest
    unsigned type that holds the field (``uint64`` for the widest)."""
    if len(data) % stream.beat_bytes:
        raise ValueError(f"stream {stream.name!r}: {len(data)} bytes are not whole {stream.beat_bytes}-byte beats")
    beats = np.frombuffer(bytes(data), np.uint8).reshape(-1, stream.beat_bytes).astype(np.uint64)
    fields = {}
    for field, offset in _field_offsets(stream):
        values = np.zeros(len(beats), np.uint64)
        for index in range(offset // 8, (offset + field.bits - 1) // 8 + 1):
            shift = 8 * index - offset
            values |= beats[:, index] << np.uint64(shift) if shift >= 0 else beats[:, index] >> np.uint64(-shift)
        if field.bits < 64:
            values &= np.uint64((1 << field.bits) - 1)
        fields[field.name] = values.astype(_dtype(field.bits))
    return fields
