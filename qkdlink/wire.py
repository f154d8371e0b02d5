"""The host-board wire protocol's shared definitions: commands, status codes, register maps and stream maps.

The gateware's host link (:mod:`qkdlink.gateware.hostlink`), the host's driver (:mod:`qkdlink.host.board`) and the
simulated boards all read the protocol from here, so that they cannot disagree. ``docs/protocol.md`` describes it
for people; this module is its single definition.

A frame on the wire is the COBS encoding of a *body* followed by one zero byte. A body is a header, a payload and
the CRC-32 (ISO-HDLC, as :func:`zlib.crc32`) of header and payload, little-endian. Every number in a body is
little-endian.

- Request (host to board): ``command`` u8, ``tag`` u8, arguments.
- Reply (board to host): ``status`` u8, ``command`` u8, ``tag`` u8, payload. ``command`` and ``tag`` echo the
  request's; a reply to a frame that could not be read (:data:`Status.CRC`, :data:`Status.FRAME`) has both zero.
"""

import enum
from dataclasses import dataclass
from functools import cached_property


__all__ = [
    "MAGIC", "VERSION", "MAX_DATA", "MAX_REGISTERS", "MAX_BODY", "CRC_BYTES",
    "Command", "Status", "Role", "BOARD_IDS", "Control",
    "Register", "Stream", "Field", "RegisterMap", "register_map", "stream_map",
]


#: First register and first word of the HELLO reply: "QKDL" in ASCII, little-endian.
MAGIC = 0x4C444B51

#: Protocol version (major << 8 | minor). A host talks to a board of the same major version only.
VERSION = 0x0100

#: Most data bytes in one READ_STREAM reply or WRITE_STREAM request.
MAX_DATA = 512

#: Most registers in one READ or WRITE.
MAX_REGISTERS = 64

#: CRC bytes at the end of every body.
CRC_BYTES = 4

#: Longest body either side sends or accepts (a WRITE_STREAM of MAX_DATA bytes, or a READ_STREAM reply of them).
MAX_BODY = 3 + 8 + MAX_DATA + CRC_BYTES


class Command(enum.IntEnum):
    """Request commands (the first byte of a request body)."""
    #: No arguments. Reply: ``MAGIC`` u32, ``VERSION`` u16, role u8, board u8, phases u8, frame_bits u8, then one
    #: u8 per stream of the role's :func:`stream_map`: log2 of the stream's buffer depth in bytes.
    HELLO        = 0x01
    #: ``address`` u16, ``count`` u8 (1 to MAX_REGISTERS). Reply: ``count`` u32 values.
    READ         = 0x02
    #: ``address`` u16, then 1 to MAX_REGISTERS u32 values for consecutive registers. Reply: no payload.
    WRITE        = 0x03
    #: ``stream`` u8, ``ack`` u32, ``offset`` u32, ``length`` u16 (an out stream). Frees the bytes before ``ack``
    #: and reads up to ``length`` bytes (at most MAX_DATA) from ``offset``.
    #: Reply: ``low`` u32, ``high`` u32, then the bytes.
    READ_STREAM  = 0x04
    #: ``stream`` u8, ``offset`` u32, then 0 to MAX_DATA bytes (an in stream), written at ``offset``.
    #: Reply: ``low`` u32, ``high`` u32.
    WRITE_STREAM = 0x05


class Status(enum.IntEnum):
    """Reply status (the first byte of a reply body)."""
    OK             = 0x00
    #: The frame's CRC did not match (command and tag are zero in the reply).
    CRC            = 0x01
    #: The frame was not a frame: bad COBS code, too short for header and CRC, or longer than MAX_BODY.
    FRAME          = 0x02
    #: The command byte is not a :class:`Command`.
    UNKNOWN        = 0x03
    #: The arguments have the wrong length or a count out of range.
    ARGUMENT       = 0x04
    #: A register address is not in the map, or a WRITE names a read-only register. Nothing was written.
    ADDRESS        = 0x05
    #: The stream number is not in the role's map, or names a stream of the other direction.
    STREAM         = 0x06
    #: The ack or offset lies outside the stream's buffer. Payload: ``low`` u32, ``high`` u32.
    OFFSET         = 0x07
    #: A WRITE_STREAM that does not fit the free space. Nothing was written. Payload: ``low`` u32, ``high`` u32.
    FULL           = 0x08


class Role(enum.IntEnum):
    ALICE = 0
    BOB   = 1


#: Board numbers in the HELLO reply and the ``ident`` register.
BOARD_IDS = {"sim": 0, "icebreaker": 1, "ulx3s-85f": 2, "orangecrab-25f": 3}


class Control(enum.IntFlag):
    """Bits of the ``control`` register."""
    #: Alice: the slot sequencer emits. Bob: time-tagger events go to slot assignment.
    RUN  = 1
    #: Bob: time-tagger events also go to the ``tags`` stream (for calibration).
    TAGS = 2


@dataclass(frozen=True)
class Register:
    """A 32-bit register: its ``name``, ``address``, whether the host may write it, and what it holds.

    Registers narrower than 32 bits in the gateware read as zero-extended values; writes keep the low bits.
    """
    name: str
    address: int
    writable: bool
    width: int
    doc: str


@dataclass(frozen=True)
class Field:
    """A field of a stream beat: ``name`` and ``bits``; fields are packed least significant first."""
    name: str
    bits: int


@dataclass(frozen=True)
class Stream:
    """A byte stream between host and board.

    ``out`` streams go from board to host (READ_STREAM), the others from host to board (WRITE_STREAM). A beat is
    its ``fields`` packed least significant first into ``beat_bytes`` bytes, little-endian, with zero padding.
    """
    name: str
    number: int
    out: bool
    fields: tuple
    doc: str

    @cached_property
    def beat_bits(self):
        return sum(field.bits for field in self.fields)

    @cached_property
    def beat_bytes(self):
        return (self.beat_bits + 7) // 8


# (name, width, doc). Read-only registers first, then the writable ones, each group without gaps: a READ must lie
# within the map and a WRITE within its writable part, which the gateware checks with two comparisons.
_COMMON_READ_ONLY = [
    ("magic",        32, "MAGIC"),
    ("version",      16, "VERSION"),
    ("ident",        32, "role (bits 0-7), board (8-15), time-tagger phases (16-23), frame_bits (24-31)"),
    ("clock_hz",     32, "the sync clock frequency in Hz"),
    ("baud",         32, "the UART's baud rate (0 on a board served without a UART)"),
    ("key_bits",     32, "size of the key memory in bits"),
    ("frames_ok",    32, "requests received intact"),
    ("crc_errors",   32, "frames with a bad CRC"),
    ("frame_errors", 32, "frames with a bad COBS code, too short, or too long"),
    ("uart_errors",  32, "bytes with a bad stop bit"),
    ("rx_overflows", 32, "received bytes dropped because the receive buffer was full"),
    ("bad_requests", 32, "intact requests answered with an error status"),
    ("key_count",    32, "bits in the key memory"),
    ("bad_flips",    32, "flips of a bit beyond the key memory's count, ignored"),
]

_COMMON_WRITABLE = [
    ("session", 32, "written by the host when it opens the link; zero after a board reset"),
    ("control", 32, "Control bits"),
]

_ROLE_READ_ONLY = {
    Role.ALICE: [
        ("starved",     32, "slots not sent for lack of a random word"),
        ("bad_lookups", 32, "lookups of a frame not held, answered as not sent"),
        ("bad_releases", 32, "releases that did not name the oldest held frame"),
    ],
    Role.BOB: [
        ("edges",              32, "rising edges seen on all channels"),
        ("suppressed",         32, "edges dropped in a channel's dead time"),
        ("tag_overflows",      32, "time-tagger events lost because the tags stream was full"),
        ("frames",             32, "sync pulses (frames) seen by the slot assigner"),
        ("gated",              32, "detections inside a slot's gate"),
        ("outside",            32, "clicks outside every gate"),
        ("overrun",            32, "slots lost because the slot grid ran past the next sync"),
        ("detection_overflows", 32, "detections lost because the detection queue was full"),
    ],
}

_ROLE_WRITABLE = {
    Role.ALICE: [
        ("period",     16, "slot period in clock cycles"),
        ("p_z",        17, "basis threshold: a slot is in Z when its 16-bit random word is below it"),
        ("threshold0", 17, "intensity 0 when the 16-bit random word is below it"),
        ("threshold1", 17, "else intensity 1 when below it, else intensity 2"),
    ],
    Role.BOB: [
        ("dead_cycles",  16, "each channel's dead time in clock cycles"),
        ("delay",        32, "bins from a sync to slot 0's start"),
        ("period_low",   32, "slot period in bins, fixed point with 24 fraction bits: low 32 bits"),
        ("period_high",  8,  "the period's high 8 bits"),
        ("gate_start",   16, "bins from a slot's start to its gate"),
        ("gate_width",   16, "the gate's width in bins"),
    ],
}


class RegisterMap:
    """The registers of one role, by name (``map["delay"]``) and in address order (``map.registers``).

    Attributes
    ----------
    writable_base : int
        Address of the first writable register; every register from it to the end is writable.
    """

    def __init__(self, role):
        role = Role(role)
        read_only = _COMMON_READ_ONLY + _ROLE_READ_ONLY[role]
        writable = _COMMON_WRITABLE + _ROLE_WRITABLE[role]
        self.role = role
        self.writable_base = len(read_only)
        self.registers = tuple(
            Register(name, address, address >= self.writable_base, width, doc)
            for address, (name, width, doc) in enumerate(read_only + writable))
        self._by_name = {register.name: register for register in self.registers}

    def __getitem__(self, name):
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no register {name!r} on {self.role.name.lower()}; registers: "
                           f"{', '.join(self._by_name)}") from None

    def __contains__(self, name):
        return name in self._by_name

    def __iter__(self):
        return iter(self.registers)

    def __len__(self):
        return len(self.registers)


def register_map(role):
    """The :class:`RegisterMap` of ``role``."""
    return RegisterMap(role)


def stream_map(role, *, frame_bits, phases, channels=5):
    """The streams of ``role`` (a tuple of :class:`Stream`, stream ``i`` at index ``i``).

    ``frame_bits`` (slots per frame, as a power of two) and ``phases`` (time-tagger bins per clock cycle) set the
    width of the slot and time fields; the host reads both from the HELLO reply.
    """
    role = Role(role)
    fine_bits = (phases - 1).bit_length()
    common = [
        ("key_commands", False, [Field("op", 2), Field("passes", 16)],
         "key memory commands: op 0 clear, 1 read out on key_words, 2 feed the Toeplitz core `passes` times"),
        ("flips",        False, [Field("index", 32)],
         "flip one bit of the key memory (Cascade's corrections)"),
        ("key_words",    True,  [Field("data", 16), Field("last", 1)],
         "the key memory read out, 16 bits a beat, first bit in bit 0; last marks the block's final word"),
        ("hash_blocks",  False, [Field("n", 32), Field("m", 32)],
         "one beat per Toeplitz block: key length n and hash length m"),
        ("seed",         False, [Field("bits", 8)],
         "Toeplitz seed bits in the core's pass order, 8 a beat"),
        ("hash",         True,  [Field("data", 8), Field("last", 1)],
         "the Toeplitz hash, up to 8 bits a beat (the core's width), last marking a block's final beat"),
    ]
    slot = [Field("frame", 32), Field("slot", frame_bits), Field("basis", 1)]
    if role is Role.ALICE:
        specific = [
            ("lookups",  False, slot, "Bob's detections (frame, slot, Bob's basis) to sift"),
            ("matches",  True,  [Field("match", 1), Field("intensity", 2)],
             "one beat per lookup: the bases matched and the slot was sent; Alice's intensity"),
            ("test",     True,  [Field("bit", 1), Field("intensity", 2)],
             "Alice's bit and intensity of each matched X-basis lookup"),
            ("releases", False, [Field("frame", 32)], "frames sifted, oldest first: their choices are freed"),
        ]
    else:
        specific = [
            ("tags",       True, [Field("cycle", 64 - fine_bits), Field("hits", channels),
                                  *(Field(f"fine{c}", fine_bits) for c in range(channels))],
             "raw time-tagger events: the edges of one clock cycle (Control.TAGS)"),
            ("detections", True, slot, "squashed detections: frame, slot and Bob's basis; the bit stays on the board"),
            ("answers",    False, [Field("alice_basis", 1), Field("intensity", 2)],
             "Alice's answer to each detection, in order"),
            ("test",       True, [Field("bit", 1), Field("intensity", 2)],
             "Bob's bit and Alice's intensity of each matched X-basis detection"),
        ]
    return tuple(Stream(name, number, out, tuple(fields), doc)
                 for number, (name, out, fields, doc) in enumerate(specific + common))
