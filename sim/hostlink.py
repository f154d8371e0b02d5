"""The board's end of the wire protocol, in Python: the reference model of :mod:`qkdlink.gateware.hostlink`.

:class:`HostLinkModel` takes the bytes a host sends and returns the bytes a board answers, executing each request
on its registers and stream buffers exactly as the gateware does (``docs/protocol.md``). What sits behind the
registers and streams (the capture cores, or a test's loopback) is the caller's: it reads writable registers and
sets read-only ones through :attr:`HostLinkModel.registers`, produces into out streams with :meth:`produce` and
consumes from in streams with :meth:`consume`.
"""

import struct

from ..host.wire import (HELLO_HEADER, READ_ARGUMENTS, READ_STREAM_ARGUMENTS, STREAM_REPLY_HEADER,
                         WRITE_STREAM_HEADER, FrameSplitter, decode_request, encode_reply, frame, Reply)
from ..wire import (MAGIC, MAX_DATA, MAX_REGISTERS, VERSION, BOARD_IDS, Command, Status, register_map,
                    stream_map)


__all__ = ["StreamBuffer", "HostLinkModel"]


_WRAP = 1 << 32


def _distance(a, b):
    """``a - b`` modulo 2^32."""
    return (a - b) % _WRAP


class StreamBuffer:
    """One stream's ring buffer of ``depth`` bytes, with its ``low`` and ``high`` offsets (``docs/protocol.md``)."""

    def __init__(self, stream, depth):
        if depth < 1 or depth & (depth - 1) or depth < stream.beat_bytes:
            raise ValueError(f"stream {stream.name!r}: depth must be a power of two of at least one beat, "
                             f"not {depth!r}")
        self.stream = stream
        self.depth = depth
        self.data = bytearray(depth)
        self.low = 0
        self.high = 0

    @property
    def level(self):
        return _distance(self.high, self.low)

    @property
    def free(self):
        return self.depth - self.level

    def _write(self, offset, data):
        for index, byte in enumerate(data):
            self.data[(offset + index) % self.depth] = byte

    def _read(self, offset, count):
        return bytes(self.data[(offset + index) % self.depth] for index in range(count))


class HostLinkModel:
    """The board side of the link for ``role`` on board ``board`` (a name of :data:`qkdlink.wire.BOARD_IDS`).

    Parameters
    ----------
    role : qkdlink.wire.Role
    board : str
    phases, frame_bits : int
        The time-tagger's bins per cycle and the slots per frame (log2), as the board reports them.
    depths : dict of str to int
        Each stream's buffer in bytes (a power of two).
    constants : dict of str to int
        Initial values of read-only registers (``clock_hz``, ``baud``, ``key_bits``, ...); ``magic``,
        ``version`` and ``ident`` are filled in.

    Attributes
    ----------
    registers : dict of str to int
        Every register's value; the caller updates the read-only ones (counters) and reads the writable ones.
    streams : dict of str to StreamBuffer
    """

    def __init__(self, role, *, board, phases, frame_bits, depths, constants=None):
        self.map = register_map(role)
        self.stream_list = stream_map(role, frame_bits=frame_bits, phases=phases)
        self.streams = {stream.name: StreamBuffer(stream, depths[stream.name]) for stream in self.stream_list}
        self.registers = {register.name: 0 for register in self.map}
        self.registers.update(constants or {})
        self.registers.update(magic=MAGIC, version=VERSION,
                              ident=int(role) | BOARD_IDS[board] << 8 | phases << 16 | frame_bits << 24)
        self._hello = HELLO_HEADER.pack(MAGIC, VERSION, int(role), BOARD_IDS[board], phases, frame_bits) + bytes(
            (self.streams[stream.name].depth.bit_length() - 1) for stream in self.stream_list)
        self._splitter = FrameSplitter(header=2)

    # The caller's side of the streams.

    def produce(self, name, data):
        """Append ``data`` to out stream ``name`` if it fits; returns whether it did (all or nothing)."""
        buffer = self.streams[name]
        assert buffer.stream.out
        if len(data) > buffer.free:
            return False
        buffer._write(buffer.high, data)
        buffer.high = (buffer.high + len(data)) % _WRAP
        return True

    def consume(self, name, count=None):
        """Take up to ``count`` bytes (all by default) from in stream ``name``."""
        buffer = self.streams[name]
        assert not buffer.stream.out
        count = buffer.level if count is None else min(count, buffer.level)
        data = buffer._read(buffer.low, count)
        buffer.low = (buffer.low + count) % _WRAP
        return data

    # The host's side.

    def receive(self, data, *, after=None):
        """Feed bytes from the host; returns the bytes the board sends back. ``after()``, if given, is called after
        each request (so that what stands behind the streams can take and give data between requests)."""
        out = bytearray()
        for body in self._splitter.feed(data):
            out += frame(encode_reply(self.execute(body)))
            if after is not None:
                after()
        return bytes(out)

    def execute(self, body):
        """The :class:`~qkdlink.host.wire.Reply` to one frame: a request body, or the :class:`Status` of a frame
        that could not be read."""
        if isinstance(body, Status):
            self._count("crc_errors" if body is Status.CRC else "frame_errors")
            return Reply(body, 0, 0)
        self._count("frames_ok")
        request = decode_request(body)
        status, payload = self._dispatch(request.command, request.arguments)
        if status is not Status.OK:
            self._count("bad_requests")
        return Reply(status, request.command, request.tag, payload)

    def _count(self, name):
        self.registers[name] = (self.registers[name] + 1) % _WRAP

    def _dispatch(self, command, arguments):
        match command:
            case Command.HELLO:
                if arguments:
                    return Status.ARGUMENT, b""
                return Status.OK, self._hello
            case Command.READ:
                return self._read(arguments)
            case Command.WRITE:
                return self._write(arguments)
            case Command.READ_STREAM:
                return self._read_stream(arguments)
            case Command.WRITE_STREAM:
                return self._write_stream(arguments)
        return Status.UNKNOWN, b""

    def _read(self, arguments):
        if len(arguments) != READ_ARGUMENTS.size:
            return Status.ARGUMENT, b""
        address, count = READ_ARGUMENTS.unpack(arguments)
        if not 1 <= count <= MAX_REGISTERS:
            return Status.ARGUMENT, b""
        if address + count > len(self.map):
            return Status.ADDRESS, b""
        registers = self.map.registers[address:address + count]
        return Status.OK, b"".join(struct.pack("<I", self.registers[register.name] % (1 << register.width))
                                   for register in registers)

    def _write(self, arguments):
        count, extra = divmod(len(arguments) - 2, 4)
        if len(arguments) < 6 or extra or count > MAX_REGISTERS:
            return Status.ARGUMENT, b""
        (address,) = struct.unpack_from("<H", arguments)
        if address < self.map.writable_base or address + count > len(self.map):
            return Status.ADDRESS, b""
        for index, register in enumerate(self.map.registers[address:address + count]):
            (value,) = struct.unpack_from("<I", arguments, 2 + 4 * index)
            self.registers[register.name] = value % (1 << register.width)
        return Status.OK, b""

    def _stream(self, number, out):
        if number >= len(self.stream_list) or self.stream_list[number].out != out:
            return None
        return self.streams[self.stream_list[number].name]

    def _read_stream(self, arguments):
        if len(arguments) != READ_STREAM_ARGUMENTS.size:
            return Status.ARGUMENT, b""
        number, ack, offset, length = READ_STREAM_ARGUMENTS.unpack(arguments)
        buffer = self._stream(number, out=True)
        if buffer is None:
            return Status.STREAM, b""
        offsets = STREAM_REPLY_HEADER.pack(buffer.low, buffer.high)
        level = buffer.level
        low = buffer.low
        if _distance(ack, buffer.low) <= level:
            low = ack
        elif _distance(buffer.low, ack) >= 1 << 31:     # neither within the buffer nor older than it
            return Status.OFFSET, offsets
        if _distance(offset, low) > _distance(buffer.high, low):
            return Status.OFFSET, offsets
        buffer.low = low
        count = min(length, MAX_DATA, _distance(buffer.high, offset))
        return Status.OK, STREAM_REPLY_HEADER.pack(buffer.low, buffer.high) + buffer._read(offset, count)

    def _write_stream(self, arguments):
        if not WRITE_STREAM_HEADER.size <= len(arguments) <= WRITE_STREAM_HEADER.size + MAX_DATA:
            return Status.ARGUMENT, b""
        number, offset = WRITE_STREAM_HEADER.unpack_from(arguments)
        data = arguments[WRITE_STREAM_HEADER.size:]
        buffer = self._stream(number, out=False)
        if buffer is None:
            return Status.STREAM, b""
        offsets = STREAM_REPLY_HEADER.pack(buffer.low, buffer.high)
        behind = _distance(buffer.high, offset)
        if behind == 0 and data:
            if len(data) > buffer.free:
                return Status.FULL, offsets
            buffer._write(buffer.high, data)
            buffer.high = (buffer.high + len(data)) % _WRAP
        elif not (len(data) <= behind < 1 << 31):
            return Status.OFFSET, offsets
        return Status.OK, STREAM_REPLY_HEADER.pack(buffer.low, buffer.high)
