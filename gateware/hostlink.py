"""The board's end of the host-board wire protocol: requests in, replies out, registers and stream rings.

:class:`HostLink` sits between a :class:`~qkdlink.gateware.cobs.CobsDecoder` and a
:class:`~qkdlink.gateware.cobs.CobsEncoder`. It checks each decoded frame (its length and CRC-32), executes the
request on the role's registers and stream rings, and sends the reply body with its CRC, byte for byte as
:class:`qkdlink.sim.hostlink.HostLinkModel` does. ``docs/protocol.md`` describes the protocol and
:mod:`qkdlink.wire` defines it.
"""

import struct

from amaranth import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.crc import catalog
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..wire import (BOARD_IDS, MAGIC, MAX_BODY, MAX_DATA, MAX_REGISTERS, VERSION, Command, Role, Status,
                    register_map, stream_map)
from .cobs import FrameByte, ReplyByte


__all__ = ["stream_layout", "HostLink"]


# Registers the link keeps itself. The constants are the scratch memory's initial contents, the frame counters are
# incremented in the scratch memory, and the counters of the UART's pulses are flip-flops (a pulse may come while
# the engine is busy).
_CONSTANTS = ("magic", "version", "ident", "clock_hz", "baud", "key_bits")
_FRAME_COUNTERS = ("frames_ok", "crc_errors", "frame_errors", "bad_requests")
_PULSE_COUNTERS = {"uart_errors": "rx_error", "rx_overflows": "rx_overflow"}
_LINK_REGISTERS = _CONSTANTS + _FRAME_COUNTERS + tuple(_PULSE_COUNTERS)

# Bytes of received frames that wait for the engine. The receiver keeps taking frames while a reply goes out (the
# driver sends requests ahead), so this holds a longest frame and the requests behind it.
_RX_DEPTH = 1024

# Largest stream ring: the servicer's offsets (one bit more than a ring's index) and the engine's copy of their low
# bytes are 16 bits wide.
_MAX_DEPTH = 1 << 15

# Reply payloads.
_NONE, _HELLO, _REGISTERS, _STREAM = range(4)


def stream_layout(stream):
    """The payload layout of ``stream`` (a :class:`qkdlink.wire.Stream`): its fields, least significant first,
    padded with a field named ``padding`` to ``8 * stream.beat_bytes`` bits, so that the payload's bits are the
    beat's bytes, little-endian."""
    fields = {field.name: field.bits for field in stream.fields}
    if "padding" in fields:
        raise ValueError(f"stream {stream.name!r} has a field named 'padding', which the layout needs")
    padding = 8 * stream.beat_bytes - stream.beat_bits
    if padding:
        fields["padding"] = padding
    return data.StructLayout(fields)


class HostLink(wiring.Component):
    """The board side of the host link for ``role``: executes requests exactly as
    :class:`qkdlink.sim.hostlink.HostLinkModel` does, with the same reply bytes and the same stream contents.

    A frame is taken whole into a receive queue and its CRC checked before anything of it is executed, so that a
    damaged request changes nothing; the frames behind it keep coming into the queue while its reply goes out.
    Replies leave in the order of the requests.

    Registers: the writable ones are ports driven by the link (reset to 0; a write keeps the register's low bits);
    the read-only ones that the link does not keep itself are ports it reads (zero-extended), each 32-bit value in
    one cycle. ``frames_ok`` counts the request being executed, ``bad_requests`` does not.

    Streams: each has a ring of ``depths[name]`` bytes and 32-bit ``low``/``high`` offsets as in
    ``docs/protocol.md``. A servicer moves beats between the rings and the stream ports, visiting the streams in
    turn (a few cycles each) and serving each until it has nothing to do:

    - An out stream (board to host): when the producer offers a beat and the ring has room for all its bytes, the
      servicer writes them one a cycle straight from the payload and then takes the beat; ``high`` moves by
      whole beats. READ_STREAM sees the beats taken before it started.
    - An in stream (host to board): once a whole beat lies between ``low`` and ``high``, the servicer reads it
      into a register and offers it on ``o_<name>``. ``low`` moves past it at the servicer's next visit after the
      consumer took it (within a round of the streams). WRITE_STREAM reports the ``low`` of the moment it
      started.

    Timing: one received byte every 9 cycles at most (the CRC is computed a bit a cycle) and one reply byte every
    10 cycles at most, far above a UART's rate; a request takes a few dozen cycles to execute besides its reply
    (a WRITE_STREAM a cycle more per byte).

    Size: the engine works a byte at a time. The 32-bit offsets, the frame counters, the writable registers'
    read-back values, the constants and the HELLO payload live in a scratch memory of 256 bytes; the offsets the
    servicer needs, modulo twice the ring's depth, in a table memory. Block RAM: the receive queue (1024 bytes),
    the scratch memory, the table and the rings.

    Parameters
    ----------
    role : qkdlink.wire.Role
    board : str
        A name of :data:`qkdlink.wire.BOARD_IDS`.
    phases, frame_bits : int
        Time-tagger bins per cycle (1 to 255) and slots per frame as a power of two (1 to 32): they set the
        streams' layouts and are reported in HELLO and ``ident``.
    depths : dict of str to int
        Each stream's ring in bytes: a power of two, at least one beat, at most 2**15.
    constants : dict of str to int
        The values of ``clock_hz``, ``baud`` and ``key_bits`` (each in 32 bits).
    initial_offset : int
        Where every stream's offsets start after a reset instead of 0, for tests of the wrap-around at 2**32.

    Members
    -------
    i_frames : In(stream.Signature(FrameByte))
        Decoded frames from a :class:`~qkdlink.gateware.cobs.CobsDecoder`: the body with its CRC, then an end beat.
    o_frames : Out(stream.Signature(ReplyByte))
        Reply bodies with their CRC, each followed by an end beat, for a
        :class:`~qkdlink.gateware.cobs.CobsEncoder`.
    rx_error, rx_overflow : In(1)
        Pulses from the UART receiver, counted in ``uart_errors`` and ``rx_overflows``.
    <register> : Out(width) or In(width)
        Each writable register (driven by the link) and each read-only register the link does not keep (read by
        it), named as in :func:`qkdlink.wire.register_map`.
    i_<stream> : In(stream.Signature(stream_layout(stream)))
        Each out stream's beats.
    o_<stream> : Out(stream.Signature(stream_layout(stream)))
        Each in stream's beats.
    """

    def __init__(self, role, *, board, phases, frame_bits, depths, constants, initial_offset=0):
        try:
            role = Role(role)
        except ValueError:
            raise ValueError(f"Role must be a qkdlink.wire.Role, not {role!r}") from None
        if board not in BOARD_IDS:
            raise ValueError(f"Board must be one of {', '.join(BOARD_IDS)}, not {board!r}")
        if not isinstance(phases, int) or not 1 <= phases <= 255:
            raise ValueError(f"Phases must be an integer from 1 to 255, not {phases!r}")
        if not isinstance(frame_bits, int) or not 1 <= frame_bits <= 32:
            raise ValueError(f"Frame bits must be an integer from 1 to 32, not {frame_bits!r}")
        registers = register_map(role)
        streams = stream_map(role, frame_bits=frame_bits, phases=phases)
        names = [s.name for s in streams]
        if not isinstance(depths, dict) or sorted(depths) != sorted(names):
            raise ValueError(f"Depths must be a dict with the streams {', '.join(names)}, not {depths!r}")
        for s in streams:
            depth = depths[s.name]
            if (not isinstance(depth, int) or depth < s.beat_bytes or depth & (depth - 1)
                    or depth > _MAX_DEPTH):
                raise ValueError(f"Depth of stream {s.name!r} must be a power of two from {s.beat_bytes} "
                                 f"(a beat) to {_MAX_DEPTH}, not {depth!r}")
        wanted = ("clock_hz", "baud", "key_bits")
        if not isinstance(constants, dict) or sorted(constants) != sorted(wanted):
            raise ValueError(f"Constants must be a dict with {', '.join(wanted)}, not {constants!r}")
        for name, value in constants.items():
            if not isinstance(value, int) or value not in range(1 << 32):
                raise ValueError(f"Constant {name!r} must be an integer in 32 bits, not {value!r}")
        if not isinstance(initial_offset, int) or initial_offset not in range(1 << 32):
            raise ValueError(f"Initial offset must be an integer in 32 bits, not {initial_offset!r}")
        assert all(registers[name].address < len(_CONSTANTS) for name in _CONSTANTS)

        self._role = role
        self._board = board
        self._phases = phases
        self._frame_bits = frame_bits
        self._depths = dict(depths)
        self._constants = dict(constants)
        self._initial_offset = initial_offset
        self._registers = registers
        self._streams = streams

        members = {
            "i_frames":    In(stream.Signature(FrameByte)),
            "o_frames":    Out(stream.Signature(ReplyByte)),
            "rx_error":    In(1),
            "rx_overflow": In(1),
        }
        for register in registers:
            if register.writable:
                members[register.name] = Out(register.width)
            elif register.name not in _LINK_REGISTERS:
                members[register.name] = In(register.width)
        for s in streams:
            name = f"i_{s.name}" if s.out else f"o_{s.name}"
            if name in members:
                raise ValueError(f"stream port {name!r} clashes with another port")
            members[name] = (In if s.out else Out)(stream.Signature(stream_layout(s)))
        super().__init__(members)

    @property
    def role(self):
        return self._role

    @property
    def board(self):
        return self._board

    @property
    def phases(self):
        return self._phases

    @property
    def frame_bits(self):
        return self._frame_bits

    @property
    def depths(self):
        return dict(self._depths)

    @property
    def constants(self):
        return dict(self._constants)

    @property
    def initial_offset(self):
        return self._initial_offset

    @property
    def registers(self):
        """The role's :class:`qkdlink.wire.RegisterMap`."""
        return self._registers

    @property
    def streams(self):
        """The role's streams (:func:`qkdlink.wire.stream_map`)."""
        return self._streams

    def elaborate(self, platform):
        m = Module()

        registers, streams = self._registers, self._streams
        index_bits = [self._depths[s.name].bit_length() - 1 for s in streams]
        # Narrow offsets: offsets modulo 2**narrow. Stream i computes with them modulo 2**(index_bits[i] + 1)
        # (`mask`): a ring never holds more than its depth, so such differences are exact.
        narrow = max(index_bits) + 1
        beat_bytes = max(s.beat_bytes for s in streams)

        # The scratch memory: 4 bytes per register (at 4 * address), then each stream's low and high offsets, then
        # the HELLO payload.
        stream_base = 4 * len(registers)
        hello_base = stream_base + 8 * len(streams)
        hello = struct.pack("<IHBBBB", MAGIC, VERSION, self._role, BOARD_IDS[self._board], self._phases,
                            self._frame_bits) + bytes(index_bits)
        scratch_depth = 1 << (hello_base + len(hello) - 1).bit_length()
        values = {
            "magic": MAGIC,
            "version": VERSION,
            "ident": self._role | BOARD_IDS[self._board] << 8 | self._phases << 16 | self._frame_bits << 24,
            **self._constants,
        }
        offset_bytes = self._initial_offset.to_bytes(4, "little")
        init = bytearray(scratch_depth)
        for name in _CONSTANTS:
            address = 4 * registers[name].address
            init[address:address + 4] = values[name].to_bytes(4, "little")
        init[stream_base:hello_base] = offset_bytes * (2 * len(streams))
        init[hello_base:hello_base + len(hello)] = hello
        clear_start = 4 * len(_CONSTANTS)     # a reset clears everything from here up to the HELLO payload

        # ---- Receiver: frames into the receive queue, each as a 2-byte header (body length, status) and, if the
        # frame is intact, its body with the CRC. Positions count modulo twice the queue, to tell full from empty.
        m.submodules.rx_queue = rx_queue = Memory(shape=8, depth=_RX_DEPTH, init=[])
        rx_write = rx_queue.write_port()
        rx_read = rx_queue.read_port()
        position_bits = _RX_DEPTH.bit_length()
        frame_start = Signal(position_bits)                 # header of the frame being received
        write_at = Signal(position_bits, init=2)            # its next body byte
        committed = Signal(position_bits)                   # end of the last whole entry
        entry = Signal(position_bits)                       # the engine's entry (the oldest not freed)
        frame_bytes = Signal(range(MAX_BODY + 2))           # saturates past MAX_BODY
        frame_error = Signal()
        rx_bits = Signal(range(9))                          # bits of the last byte still to go into the CRC
        rx_shift = Signal(8)

        m.submodules.rx_crc = rx_crc = catalog.CRC32_ISO_HDLC(1).create()
        m.d.comb += [rx_crc.valid.eq(rx_bits != 0), rx_crc.data.eq(rx_shift[0])]
        with m.If(rx_bits != 0):
            m.d.sync += [rx_shift.eq(rx_shift[1:]), rx_bits.eq(rx_bits - 1)]

        used = Signal(position_bits)
        frame_status = Signal(2)
        m.d.comb += [
            used.eq(write_at - entry),
            frame_status.eq(Mux(frame_error | (frame_bytes < 2 + 4) | (frame_bytes > MAX_BODY), Status.FRAME,
                                Mux(rx_crc.match_detected, Status.OK, Status.CRC))),
        ]
        i_frame = self.i_frames.payload
        with m.FSM(name="receive"):
            with m.State("BODY"):
                # A byte is taken only with room for it, which also keeps room for the header reserved before it.
                m.d.comb += [
                    self.i_frames.ready.eq((rx_bits == 0) & (used < _RX_DEPTH)),
                    rx_write.addr.eq(write_at),
                    rx_write.data.eq(i_frame.data),
                ]
                with m.If(self.i_frames.valid & self.i_frames.ready):
                    with m.If(i_frame.end):
                        m.d.sync += frame_error.eq(i_frame.error)
                        m.next = "HEADER_LOW"
                    with m.Else():
                        with m.If(frame_bytes < MAX_BODY):
                            m.d.comb += rx_write.en.eq(1)
                            m.d.sync += write_at.eq(write_at + 1)
                        with m.If(frame_bytes <= MAX_BODY):
                            m.d.sync += frame_bytes.eq(frame_bytes + 1)
                        m.d.sync += [rx_shift.eq(i_frame.data), rx_bits.eq(8)]
            with m.State("HEADER_LOW"):
                m.d.comb += [rx_write.addr.eq(frame_start), rx_write.data.eq(frame_bytes[:8]), rx_write.en.eq(1)]
                m.next = "HEADER_HIGH"
            with m.State("HEADER_HIGH"):
                m.d.comb += [
                    rx_write.addr.eq(frame_start + 1),
                    rx_write.data.eq(Cat(frame_bytes[8:], C(0, 2), frame_status)),
                    rx_write.en.eq(1),
                    rx_crc.start.eq(1),
                ]
                # A damaged frame keeps only its header.
                end = Mux(frame_status == Status.OK, write_at, frame_start + 2)
                m.d.sync += [
                    committed.eq(end),
                    frame_start.eq(end),
                    write_at.eq(end + 2),
                    frame_bytes.eq(0),
                ]
                m.next = "BODY"

        # ---- Memories of the engine: the entries (read in order from `at`), the scratch memory (at `sa`), the
        # narrow offsets (`table`: low of stream i at 2 * i, high at 2 * i + 1).
        # Both memories' read data go through a register before the engine uses them, so that no logic follows the
        # block RAM's slow output (5.8 ns of a 10 ns cycle on the ECP5-85F): a byte comes two cycles after its
        # address.
        at = Signal(range(MAX_BODY + 3))                    # position in the entry: header 0-1, body from 2
        m.d.comb += rx_read.addr.eq(entry + at)
        rx_data = Signal(8)
        m.d.sync += rx_data.eq(rx_read.data)

        m.submodules.scratch = scratch = Memory(shape=8, depth=scratch_depth, init=init)
        scratch_read = scratch.read_port()
        scratch_write = scratch.write_port()
        sa = Signal(range(scratch_depth), init=clear_start)
        m.d.comb += [scratch_read.addr.eq(sa), scratch_write.addr.eq(sa)]
        scratch_data = Signal(8)
        m.d.sync += scratch_data.eq(scratch_read.data)

        start_narrow = self._initial_offset % (1 << narrow)
        # Small enough that synthesis would build it of flip-flops unless told otherwise.
        m.submodules.table = table = Memory(shape=narrow, depth=2 * len(streams),
                                            init=[start_narrow] * (2 * len(streams)), attrs={"ram_style": "block"})
        table_read = table.read_port()
        table_write = table.write_port()

        # ---- Engine registers.
        x = Signal(32)              # bytes shift in at the top: arguments, differences, register values
        e_low = Signal(16)          # the low bytes of a scratch word loaded with x
        borrow = Signal()
        length = Signal(range(MAX_BODY + 1))                # body length with the CRC
        intact = Signal()
        command = Signal(8)
        tag = Signal(8)
        status = Signal(4)
        payload = Signal(2)
        number = Signal(range(len(streams)))
        snapshot = Signal(narrow)   # the stream's offset kept by the servicer (high out, low in), narrow
        moved = Signal(narrow)      # how far READ_STREAM moves low
        pointer = Signal(narrow)    # ring position of the next byte the engine reads or writes
        count = Signal(range(MAX_DATA + 1))
        reg_address = Signal(range(len(registers) + 1))
        reg_left = Signal(range(MAX_REGISTERS + 1))
        k = Signal(range(max(len(hello), 8)))
        addend = Signal(16)
        carry = Signal()
        park = Signal(init=1)       # the engine holds the servicer while it works on a stream's offsets

        # Registered, as is the check of the arguments' length against the command: `length` and `command` are set
        # in FRAME, a dozen cycles before DISPATCH.
        arguments = Signal(range(MAX_BODY + 1))
        data_length = Signal(range(MAX_BODY + 1))
        arguments_fit = Signal()
        m.d.sync += [arguments.eq(length - 6), data_length.eq(length - 6 - 5)]
        with m.Switch(command):
            for code, fit in [
                    (Command.HELLO, arguments == 0),
                    (Command.READ, arguments == 3),
                    (Command.WRITE, (arguments >= 6) & (arguments[:2] == 2) & (arguments <= 2 + 4 * MAX_REGISTERS)),
                    (Command.READ_STREAM, arguments == 11),
                    (Command.WRITE_STREAM, (arguments >= 5) & (arguments <= 5 + MAX_DATA))]:
                with m.Case(code):
                    m.d.sync += arguments_fit.eq(fit)

        mask = Signal(narrow)
        depth = Signal(narrow)
        with m.Switch(number):
            for i, s in enumerate(streams):
                with m.Case(i):
                    m.d.comb += [mask.eq((1 << index_bits[i] + 1) - 1), depth.eq(self._depths[s.name])]
        reading = Signal()          # READ_STREAM (else WRITE_STREAM)
        base = Signal(range(scratch_depth))
        m.d.comb += [
            reading.eq(command == Command.READ_STREAM),
            base.eq(stream_base + (number << 3)),
        ]

        # These differences are registered, so each is up to date one cycle after its operands (the states that
        # use them wait for that): two carry chains in a row already fill a cycle of a full UP5K.
        e_narrow = e_low[:narrow]
        level = Signal(narrow)      # out stream: high - low; during a sync: the advance since the last one
        remaining = Signal(narrow + 1)  # level - x[:narrow]; its top bit is set when x[:narrow] > level
        free = Signal(narrow + 1)   # in stream: depth - (high - low)
        m.d.sync += [
            level.eq((snapshot - e_narrow) & mask),
            remaining.eq(((snapshot - e_narrow) & mask) - x[:narrow]),
            free.eq(depth - ((e_narrow - snapshot) & mask)),
        ]

        # Datapath controls, set by the engine's states.
        shift_x = Signal()          # x <- x >> 8 | in_byte << 24
        from_scratch = Signal()     # in_byte is the scratch byte (else the entry's byte)
        subtract = Signal()         # in_byte is the entry's byte minus the scratch byte (with borrow)
        capture = Signal()          # e_low <- e_low >> 8 | scratch byte << 8
        load_live = Signal()
        scratch_clear = Signal()
        scratch_shadow = Signal()
        scratch_add = Signal()
        register_write = Signal()
        ring_write = Signal()
        tx_load = Signal()
        tx_load_end = Signal()
        tx_byte = Signal(8)

        difference = Signal(9)
        m.d.comb += difference.eq(Mux(from_scratch, scratch_data, rx_data) - Mux(subtract, scratch_data, 0)
                                  - (subtract & borrow))
        live = Signal(32)
        is_live = Signal()
        with m.If(shift_x):
            m.d.sync += [x.eq(Cat(x[8:], difference[:8])), borrow.eq(difference[8])]
        with m.Elif(load_live):
            m.d.sync += x.eq(live)
        with m.If(capture):
            m.d.sync += e_low.eq(Cat(e_low[8:], scratch_data))

        counters = {}
        for register_name, pulse in _PULSE_COUNTERS.items():
            counters[register_name] = counter = Signal(32, name=register_name)
            with m.If(getattr(self, pulse)):
                m.d.sync += counter.eq(counter + 1)
        with m.Switch(reg_address):
            for register in registers:
                if register.name in counters:
                    value = counters[register.name]
                elif not register.writable and register.name not in _LINK_REGISTERS:
                    value = getattr(self, register.name)
                else:
                    continue
                with m.Case(register.address):
                    m.d.comb += [live.eq(value), is_live.eq(1)]

        # Writes keep a register's low bits: the read-back copy in the scratch memory is masked byte by byte.
        write_mask = Signal(8)
        m.d.comb += write_mask.eq(0xff)
        with m.Switch(sa):
            for register in registers:
                if register.writable and register.width < 32:
                    for byte in range(4):
                        with m.Case(4 * register.address + byte):
                            m.d.comb += write_mask.eq(((1 << register.width) - 1) >> 8 * byte & 0xff)
        with m.If(register_write):
            with m.Switch(reg_address):
                for register in registers:
                    if register.writable:
                        with m.Case(register.address):
                            m.d.sync += getattr(self, register.name).eq(x)

        # Byte-serial addition of `addend` to a 32-bit word in the scratch memory (one byte per write).
        total = Signal(9)
        m.d.comb += total.eq(scratch_data + addend[:8] + carry)
        with m.If(scratch_clear):
            m.d.comb += [
                scratch_write.data.eq(Mux(sa >= stream_base, Array(offset_bytes)[sa[:2]], 0)),
                scratch_write.en.eq(1),
            ]
        with m.Elif(scratch_shadow):
            m.d.comb += [scratch_write.data.eq(rx_data & write_mask), scratch_write.en.eq(1)]
        with m.Elif(scratch_add):
            m.d.comb += [scratch_write.data.eq(total[:8]), scratch_write.en.eq(1)]
            m.d.sync += [carry.eq(total[8]), addend.eq(addend[8:])]

        # ---- Stream rings and the servicer, which moves beats between the rings and the stream ports: one stream
        # at a time, in turn, serving each until it has nothing to do. Its offset of a stream (high of an out
        # stream, low of an in stream) moves only while it serves the stream; the engine's (the other) only while
        # the servicer is parked.
        cur = Signal(range(len(streams)))
        mine = Signal(narrow)
        other = Signal(narrow)
        byte = Signal(range(beat_bytes + 1))
        cur_out = Signal()
        cur_beat = Signal(range(beat_bytes + 1))
        cur_mask = Signal(narrow)
        cur_room = Signal(narrow)   # most bytes an out ring may hold and still take a beat
        with m.Switch(cur):
            for i, s in enumerate(streams):
                with m.Case(i):
                    m.d.comb += [
                        cur_out.eq(s.out),
                        cur_beat.eq(s.beat_bytes),
                        cur_mask.eq((1 << index_bits[i] + 1) - 1),
                        cur_room.eq(self._depths[s.name] - s.beat_bytes),
                    ]
        held = Signal(narrow)       # bytes in the ring of `cur`
        ring_address = Signal(narrow)
        last = Signal()
        m.d.comb += [
            held.eq(Mux(cur_out, mine - other, other - mine) & cur_mask),
            ring_address.eq(mine + byte),
            last.eq(byte == cur_beat - 1),
        ]

        parked = Signal()
        writing = Signal()          # byte `byte` of the beat offered on out stream `cur` goes into its ring
        # The last byte goes in this cycle: a register, set a cycle ahead, so that the producer's logic behind its
        # `ready` (a queue's read enable, the Toeplitz core's accumulator) starts from a flip-flop.
        taking = Signal()
        filling = Signal()          # the ring's byte at `byte - 1` goes into the beat of in stream `cur`
        filled = Signal()
        advance = Signal()          # in stream `cur`: forget the taken beat
        cur_valid = Signal()        # out: the producer offers a beat; in: the beat assembled is offered
        cur_taken = Signal()
        out_byte = Signal(8)
        ring_data = Signal(8)       # the engine's read of out stream `number`
        for i, s in enumerate(streams):
            m.submodules[f"ring_{s.name}"] = ring = Memory(shape=8, depth=self._depths[s.name], init=[])
            write = ring.write_port()
            read = ring.read_port()
            if s.out:
                port = getattr(self, f"i_{s.name}")
                m.d.comb += [
                    write.addr.eq(ring_address),
                    write.data.eq(out_byte),
                    write.en.eq(writing & (cur == i)),
                    read.addr.eq(pointer),
                    # The producer holds its payload until the beat is taken: its bytes go into the ring from it.
                    port.ready.eq(taking & (cur == i)),
                ]
                beat = port.payload.as_value()
                with m.If(cur == i):
                    m.d.comb += [cur_valid.eq(port.valid),
                                 out_byte.eq(beat.word_select(byte, 8) if s.beat_bytes > 1 else beat)]
                # Registered before the streams' multiplexer, like the engine's other memories.
                ring_byte = Signal(8, name=f"{s.name}_byte")
                m.d.sync += ring_byte.eq(read.data)
                with m.If(number == i):
                    m.d.comb += ring_data.eq(ring_byte)
            else:
                port = getattr(self, f"o_{s.name}")
                taken = Signal(name=f"{s.name}_taken")
                assembled = Signal(8 * s.beat_bytes, name=f"{s.name}_beat")
                m.d.comb += [
                    write.addr.eq(pointer),
                    write.data.eq(rx_data),
                    write.en.eq(ring_write & (number == i)),
                    read.addr.eq(ring_address),
                    port.payload.eq(assembled),
                ]
                with m.If(port.valid & port.ready):
                    m.d.sync += [port.valid.eq(0), taken.eq(1)]
                with m.If(cur == i):
                    m.d.comb += [cur_valid.eq(port.valid), cur_taken.eq(taken)]
                    with m.If(filling):
                        m.d.sync += assembled.eq(Cat(assembled[8:], read.data))
                    with m.If(filled):
                        m.d.sync += port.valid.eq(1)
                    with m.If(advance):
                        m.d.sync += taken.eq(0)

        with m.FSM(name="servicer"):
            with m.State("START"):
                with m.If(park):
                    m.d.comb += parked.eq(1)
                with m.Else():
                    m.d.comb += table_read.addr.eq(Cat(cur_out, cur))
                    m.next = "MINE"
            with m.State("MINE"):
                m.d.comb += table_read.addr.eq(Cat(~cur_out, cur))
                m.d.sync += mine.eq(table_read.data)
                m.next = "OTHER"
            with m.State("OTHER"):
                m.d.sync += other.eq(table_read.data)
                m.next = "DECIDE"
            with m.State("DECIDE"):
                m.d.sync += byte.eq(0)
                with m.If(cur_out):
                    with m.If(cur_valid & (held <= cur_room)):
                        m.d.sync += taking.eq(cur_beat == 1)
                        m.next = "OUT"
                    with m.Else():
                        m.next = "NEXT"
                with m.Elif(cur_taken):
                    m.d.comb += advance.eq(1)
                    m.d.sync += mine.eq(mine + cur_beat)
                    m.next = "STORE"
                with m.Elif(~cur_valid & (held >= cur_beat)):
                    m.next = "IN"
                with m.Else():
                    m.next = "NEXT"
            with m.State("OUT"):
                m.d.comb += writing.eq(1)
                m.d.sync += [byte.eq(byte + 1), taking.eq(byte + 2 == cur_beat)]
                with m.If(last):
                    m.d.sync += mine.eq(mine + cur_beat)
                    m.next = "STORE"
            with m.State("IN"):
                # The read of byte `byte` is on its way; the one of `byte - 1` has arrived.
                m.d.comb += filling.eq(byte != 0)
                m.d.sync += byte.eq(byte + 1)
                with m.If(byte == cur_beat):
                    m.d.comb += filled.eq(1)
                    m.next = "NEXT"
            with m.State("STORE"):
                m.d.comb += [table_write.addr.eq(Cat(cur_out, cur)), table_write.data.eq(mine),
                             table_write.en.eq(1)]
                m.next = "DECIDE"
            with m.State("NEXT"):
                m.d.sync += cur.eq(Mux(cur == len(streams) - 1, 0, cur + 1))
                m.next = "START"

        # ---- Transmitter: one reply byte at a time into o_frames, then into the CRC a bit a cycle.
        m.submodules.tx_crc = tx_crc = catalog.CRC32_ISO_HDLC(1).create()
        tx_data = Signal(8)
        tx_end = Signal()
        tx_raw = Signal()           # a CRC byte: not fed back into the CRC
        tx_load_raw = Signal()
        tx_bits = Signal(range(9))
        tx_shift = Signal(8)
        busy = Signal()
        m.d.comb += [
            self.o_frames.payload.data.eq(tx_data),
            self.o_frames.payload.end.eq(tx_end),
            busy.eq(self.o_frames.valid | (tx_bits != 0)),
            tx_crc.valid.eq(tx_bits != 0),
            tx_crc.data.eq(tx_shift[0]),
        ]
        with m.If(tx_load | tx_load_raw):
            m.d.sync += [tx_data.eq(tx_byte), tx_end.eq(0), tx_raw.eq(tx_load_raw), self.o_frames.valid.eq(1)]
        with m.Elif(tx_load_end):
            m.d.sync += [tx_end.eq(1), self.o_frames.valid.eq(1)]
        with m.Elif(self.o_frames.valid & self.o_frames.ready):
            m.d.sync += self.o_frames.valid.eq(0)
            with m.If(~tx_end & ~tx_raw):
                m.d.sync += [tx_shift.eq(tx_data), tx_bits.eq(8)]
        with m.If(tx_bits != 0):
            m.d.sync += [tx_shift.eq(tx_shift[1:]), tx_bits.eq(tx_bits - 1)]

        # ---- The engine's states.
        ok_out = Signal()           # x[24:] names an out stream
        ok_in = Signal()
        with m.Switch(x[24:]):
            for i, s in enumerate(streams):
                with m.Case(i):
                    m.d.comb += (ok_out if s.out else ok_in).eq(1)
        address_bits = len(registers).bit_length()

        def out_of_map(address, count):
            return (address[address_bits:] != 0) | (address[:address_bits] + count > len(registers))

        def load(name, then, *, rx=True, scratch=False, minus=False, keep_low=False, shadow=False):
            """x <- x >> 8 | byte << 24, k + 1 times: bytes of the entry from `at`, of the scratch memory from
            `sa`, or the first minus the second (`minus`); each pointer ends on the byte after the last. With
            `keep_low` the first two scratch bytes also go into e_low; with `shadow` each entry byte is also
            written, masked, into the scratch memory at `sa`.

            The pointers run two bytes ahead of the byte being used (the reads' latency) and stop on the byte
            after the last."""
            def step(more):
                with m.If(more):
                    if rx:
                        m.d.sync += at.eq(at + 1)
                    if scratch:
                        m.d.sync += sa.eq(sa + 1)

            with m.State(f"{name}_PRIME"):
                m.d.sync += borrow.eq(0)
                step(True)
                m.next = f"{name}_WAIT"
            with m.State(f"{name}_WAIT"):
                step(k != 0)
                m.next = name
            with m.State(name):
                m.d.comb += [shift_x.eq(1), from_scratch.eq(not rx), subtract.eq(minus),
                             capture.eq(keep_low & k[1]), scratch_shadow.eq(shadow)]
                if shadow:
                    m.d.sync += sa.eq(sa + 1)
                step(k > 1)
                with m.If(k == 0):
                    m.next = then
                with m.Else():
                    m.d.sync += k.eq(k - 1)

        def add_word(name, then):
            """The 32-bit word of the scratch memory at `sa` += `addend` (with `carry` 0 and `k` 3 set before)."""
            with m.State(f"{name}_READ"):
                m.next = f"{name}_WAIT"
            with m.State(f"{name}_WAIT"):
                m.next = f"{name}_WRITE"
            with m.State(f"{name}_WRITE"):
                m.d.comb += scratch_add.eq(1)
                m.d.sync += sa.eq(sa + 1)
                with m.If(k == 0):
                    m.next = then
                with m.Else():
                    m.d.sync += k.eq(k - 1)
                    m.next = f"{name}_READ"

        def count_up(register_name):
            return [sa.eq(4 * registers[register_name].address), addend.eq(1), carry.eq(0), k.eq(3)]

        def reply(code):
            m.d.sync += status.eq(code)
            m.next = "REPLY"

        own_word = base + Mux(reading, 0, 4)            # low of an out stream, high of an in stream
        their_word = base + Mux(reading, 4, 0)

        with m.FSM(name="engine") as engine:
            with m.State("CLEAR"):
                table_index = sa - clear_start
                m.d.comb += [
                    scratch_clear.eq(1),
                    table_write.addr.eq(table_index),
                    table_write.data.eq(start_narrow),
                    table_write.en.eq(table_index < 2 * len(streams)),
                ]
                m.d.sync += sa.eq(sa + 1)
                with m.If(sa == hello_base - 1):
                    m.d.sync += park.eq(0)
                    m.next = "IDLE"

            with m.State("IDLE"):
                m.d.sync += [at.eq(0), k.eq(3)]
                with m.If(entry != committed):
                    m.next = "HEADER_PRIME"

            load("HEADER", then="FRAME")    # x = length (10 bits), status (bits 12-13), command, tag
            with m.State("FRAME"):
                frame_ok = x[12:14] == Status.OK
                m.d.sync += [
                    length.eq(x[:10]),
                    intact.eq(frame_ok),
                    command.eq(Mux(frame_ok, x[16:24], 0)),
                    tag.eq(Mux(frame_ok, x[24:32], 0)),
                    status.eq(x[12:14]),
                    payload.eq(_NONE),
                    count.eq(0),
                    *count_up("frames_ok"),
                ]
                with m.If(x[12:14] == Status.CRC):
                    m.d.sync += count_up("crc_errors")
                with m.Elif(x[12:14] == Status.FRAME):
                    m.d.sync += count_up("frame_errors")
                m.next = "COUNT_READ"
            add_word("COUNT", then="DISPATCH")

            # The arguments are read in order, from `at` = 4 on.
            with m.State("DISPATCH"):
                with m.If(~intact):
                    m.next = "REPLY"
                with m.Else():
                    m.d.sync += status.eq(Status.OK)
                    with m.Switch(command):
                        with m.Case(Command.HELLO):
                            with m.If(arguments_fit):
                                m.d.sync += payload.eq(_HELLO)
                                m.next = "REPLY"
                            with m.Else():
                                reply(Status.ARGUMENT)
                        with m.Case(Command.READ):
                            with m.If(arguments_fit):
                                m.d.sync += k.eq(2)
                                m.next = "ARGUMENTS_PRIME"
                            with m.Else():
                                reply(Status.ARGUMENT)
                        with m.Case(Command.WRITE):
                            with m.If(arguments_fit):
                                m.d.sync += k.eq(1)
                                m.next = "ARGUMENTS_PRIME"
                            with m.Else():
                                reply(Status.ARGUMENT)
                        with m.Case(Command.READ_STREAM):
                            with m.If(arguments_fit):
                                m.d.sync += k.eq(0)
                                m.next = "ARGUMENTS_PRIME"
                            with m.Else():
                                reply(Status.ARGUMENT)
                        with m.Case(Command.WRITE_STREAM):
                            with m.If(arguments_fit):
                                m.d.sync += k.eq(0)
                                m.next = "ARGUMENTS_PRIME"
                            with m.Else():
                                reply(Status.ARGUMENT)
                        with m.Default():
                            reply(Status.UNKNOWN)

            # READ: x[8:24] = address, x[24:] = count. WRITE: x[16:] = address. Streams: x[24:] = stream.
            load("ARGUMENTS", then="ARGUMENTS_CHECK")
            with m.State("ARGUMENTS_CHECK"):
                with m.Switch(command):
                    with m.Case(Command.READ):
                        address, asked = x[8:24], x[24:]
                        with m.If((asked == 0) | (asked > MAX_REGISTERS)):
                            reply(Status.ARGUMENT)
                        with m.Elif(out_of_map(address, asked)):
                            reply(Status.ADDRESS)
                        with m.Else():
                            m.d.sync += [reg_address.eq(address), reg_left.eq(asked), payload.eq(_REGISTERS)]
                            m.next = "REPLY"
                    with m.Case(Command.WRITE):
                        address, given = x[16:], arguments[2:]
                        with m.If((address < registers.writable_base) | out_of_map(address, given)):
                            reply(Status.ADDRESS)
                        with m.Else():
                            m.d.sync += [reg_address.eq(address), reg_left.eq(given), sa.eq(address << 2),
                                         k.eq(3)]
                            m.next = "VALUE_PRIME"
                    with m.Default():
                        with m.If(Mux(reading, ok_out, ok_in)):
                            m.d.sync += [number.eq(x[24:]), payload.eq(_STREAM), park.eq(1)]
                            m.next = "PARK"
                        with m.Else():
                            reply(Status.STREAM)

            # WRITE: each value goes into its register and, masked, into the register's read-back copy.
            load("VALUE", then="WRITE_REGISTER", shadow=True)
            with m.State("WRITE_REGISTER"):
                m.d.comb += register_write.eq(1)
                m.d.sync += [reg_address.eq(reg_address + 1), reg_left.eq(reg_left - 1), k.eq(3)]
                with m.If(reg_left == 1):
                    m.next = "REPLY"
                with m.Else():
                    m.next = "VALUE_PRIME"

            # READ_STREAM and WRITE_STREAM. First the servicer's offset is brought up to date in the scratch
            # memory: it has moved by less than the ring's depth since it was last written there, so its narrow
            # value tells how far.
            with m.State("PARK"):
                with m.If(parked):
                    m.d.comb += table_read.addr.eq(Cat(reading, number))
                    m.next = "SNAPSHOT"
            with m.State("SNAPSHOT"):
                m.d.sync += [snapshot.eq(table_read.data), sa.eq(their_word), k.eq(3)]
                m.next = "THEIRS_PRIME"
            load("THEIRS", then="SYNC", rx=False, scratch=True, keep_low=True)
            with m.State("SYNC"):
                m.d.sync += [addend.eq(level), carry.eq(0), k.eq(3), sa.eq(their_word)]
                m.next = "ADVANCE_READ"
            add_word("ADVANCE", then="OWN")
            with m.State("OWN"):
                m.d.sync += [sa.eq(own_word), k.eq(3)]
                m.next = "FIRST_PRIME"
            # x = ack - low (READ_STREAM) or offset - high (WRITE_STREAM); e_low = low or high.
            load("FIRST", then="FIRST_SETTLE", scratch=True, minus=True, keep_low=True)
            with m.State("FIRST_SETTLE"):
                m.next = "FIRST_CHECK"
            with m.State("FIRST_CHECK"):
                with m.If(reading):
                    m.d.sync += [sa.eq(own_word), k.eq(3)]
                    with m.If((x[narrow:] == 0) & ~remaining[narrow]):
                        m.d.sync += moved.eq(x[:narrow])
                        m.next = "SECOND_PRIME"
                    with m.Elif(~x[31] | (x[:31] == 0)):
                        reply(Status.OFFSET)        # ack beyond high
                    with m.Else():
                        m.d.sync += moved.eq(0)     # an older ack
                        m.next = "SECOND_PRIME"
                with m.Else():
                    with m.If(x == 0):
                        with m.If(data_length == 0):
                            m.next = "REPLY"
                        with m.Elif(data_length > free):
                            reply(Status.FULL)
                        with m.Else():
                            m.d.sync += [pointer.eq(e_narrow), count.eq(data_length)]
                            m.next = "COPY_PRIME"
                    # A retry: offset behind high by less than 2**31 and by at least the data. The distance behind
                    # is 2**32 - x, which exceeds any data unless x[10:] is all ones.
                    with m.Elif(x[31] & (x[:31] != 0) &
                                ((x[10:] != (1 << 22) - 1) | (data_length + x[:10] <= 1024))):
                        m.next = "REPLY"
                    with m.Else():
                        reply(Status.OFFSET)

            # READ_STREAM: x = offset - old low. The offset must lie between the new low and high.
            load("SECOND", then="SECOND_SETTLE", scratch=True, minus=True)
            with m.State("SECOND_SETTLE"):
                m.next = "SECOND_CHECK"
            with m.State("SECOND_CHECK"):
                with m.If((x[narrow:] != 0) | (x[:narrow] < moved) | remaining[narrow]):
                    reply(Status.OFFSET)
                with m.Else():
                    m.d.sync += [
                        pointer.eq(e_narrow + x[:narrow]),
                        count.eq(Mux(remaining[:narrow] > MAX_DATA, MAX_DATA, remaining[:narrow])),
                        k.eq(1),
                    ]
                    m.next = "THIRD_PRIME"
            load("THIRD", then="THIRD_CHECK")        # x[16:] = length
            with m.State("THIRD_CHECK"):
                with m.If((x[26:] == 0) & (x[16:26] < count)):
                    m.d.sync += count.eq(x[16:26])
                m.d.comb += [table_write.addr.eq(Cat(0, number)), table_write.data.eq(e_narrow + moved),
                             table_write.en.eq(1)]
                m.d.sync += [addend.eq(moved), carry.eq(0), k.eq(3), sa.eq(own_word)]
                m.next = "COMMIT_READ"

            # WRITE_STREAM: the data go into the ring at high.
            with m.State("COPY_PRIME"):
                m.d.sync += at.eq(at + 1)
                m.next = "COPY_WAIT"
            with m.State("COPY_WAIT"):
                with m.If(count != 1):
                    m.d.sync += at.eq(at + 1)
                m.next = "COPY"
            with m.State("COPY"):
                m.d.comb += ring_write.eq(1)
                m.d.sync += [pointer.eq(pointer + 1), count.eq(count - 1)]
                with m.If(count > 2):
                    m.d.sync += at.eq(at + 1)
                with m.If(count == 1):
                    m.next = "COPY_DONE"
            with m.State("COPY_DONE"):
                m.d.comb += [table_write.addr.eq(Cat(1, number)), table_write.data.eq(pointer),
                             table_write.en.eq(1)]
                m.d.sync += [addend.eq(data_length), carry.eq(0), k.eq(3), sa.eq(own_word)]
                m.next = "COMMIT_READ"
            add_word("COMMIT", then="REPLY")

            # The entry is not needed any more: free it, count an error, send the reply.
            with m.State("REPLY"):
                m.d.sync += [entry.eq(entry + 2 + Mux(intact, length, 0)), park.eq(0)]
                with m.If(intact & (status != Status.OK)):
                    m.d.sync += count_up("bad_requests")
                    m.next = "BAD_READ"
                with m.Else():
                    m.next = "TX_START"
            add_word("BAD", then="TX_START")

            # Memory reads below are used only once the previous reply byte has gone through the CRC, at least
            # nine cycles after their address was set (their data come two cycles after it).
            with m.State("TX_START"):
                m.d.comb += tx_crc.start.eq(1)
                m.d.sync += k.eq(0)
                m.next = "TX_HEADER"
            with m.State("TX_HEADER"):
                m.d.comb += tx_byte.eq(Mux(k == 0, status, Mux(k == 1, command, tag)))
                with m.If(~busy):
                    m.d.comb += tx_load.eq(1)
                    m.d.sync += k.eq(k + 1)
                    with m.If(k == 2):
                        m.next = "TX_PAYLOAD"
            with m.State("TX_PAYLOAD"):
                m.d.sync += k.eq(3)
                with m.Switch(payload):
                    with m.Case(_NONE):
                        m.next = "TX_CRC"
                    with m.Case(_HELLO):
                        m.d.sync += [sa.eq(hello_base), k.eq(len(hello) - 1)]
                        m.next = "TX_SCRATCH"
                    with m.Case(_STREAM):
                        m.d.sync += [sa.eq(base), k.eq(7)]
                        m.next = "TX_SCRATCH"
                    with m.Case(_REGISTERS):
                        m.next = "TX_REGISTER"
            with m.State("TX_SCRATCH"):
                m.d.comb += tx_byte.eq(scratch_data)
                with m.If(~busy):
                    m.d.comb += tx_load.eq(1)
                    m.d.sync += [sa.eq(sa + 1), k.eq(k - 1)]
                    with m.If(k == 0):
                        m.d.sync += k.eq(3)
                        m.next = "TX_RING"
            with m.State("TX_RING"):
                m.d.comb += tx_byte.eq(ring_data)
                with m.If(count == 0):
                    m.next = "TX_CRC"
                with m.Elif(~busy):
                    m.d.comb += tx_load.eq(1)
                    m.d.sync += [pointer.eq(pointer + 1), count.eq(count - 1)]
            with m.State("TX_REGISTER"):
                m.d.sync += k.eq(3)
                with m.If(is_live):
                    m.d.comb += load_live.eq(1)
                    m.next = "TX_VALUE"
                with m.Else():
                    m.d.sync += sa.eq(reg_address << 2)
                    m.next = "STORED_PRIME"
            load("STORED", then="TX_STORED", rx=False, scratch=True)
            with m.State("TX_STORED"):
                m.d.sync += k.eq(3)
                m.next = "TX_VALUE"
            with m.State("TX_VALUE"):
                m.d.comb += tx_byte.eq(x[:8])
                with m.If(~busy):
                    m.d.comb += [tx_load.eq(1), shift_x.eq(1)]
                    m.d.sync += k.eq(k - 1)
                    with m.If(k == 0):
                        m.d.sync += [reg_address.eq(reg_address + 1), reg_left.eq(reg_left - 1), k.eq(3)]
                        with m.If(reg_left == 1):
                            m.next = "TX_CRC"
                        with m.Else():
                            m.next = "TX_REGISTER"
            with m.State("TX_CRC"):
                # Bytes of the CRC, from the low one; they do not go into the CRC, which stays as it is.
                m.d.comb += tx_byte.eq(tx_crc.crc.word_select(~k[:2], 8))
                with m.If(~busy):
                    m.d.comb += tx_load_raw.eq(1)
                    m.d.sync += k.eq(k - 1)
                    with m.If(k == 0):
                        m.next = "TX_END"
            with m.State("TX_END"):
                with m.If(~busy):
                    m.d.comb += tx_load_end.eq(1)
                    m.next = "TX_DONE"
            with m.State("TX_DONE"):
                with m.If(~busy):
                    m.next = "IDLE"
        # Yosys does not find Amaranth's state machines by itself; one-hot states make the engine's many decodes
        # single flip-flops (about 130 LUTs fewer on the iCE40).
        engine.state.attrs["fsm_encoding"] = "one-hot"

        return m
