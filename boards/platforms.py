"""The boards qkdlink runs on: amaranth-boards platforms with our pins and build settings.

Each board names its device's clock target and the gateware parameters that fit it; ``docs/toeplitz.md`` has the
resources and Fmax they reach, ``docs/boards.md`` the pin maps and how to wire each board.

Every platform has these resources, all 3.3 V:

- ``detectors``: the time-tagger's five inputs, bit ``c`` being channel ``c`` (:data:`DETECTOR_CHANNELS`: 0 = Z0,
  1 = Z1, 2 = X0, 3 = X1, 4 = sync). Request it with ``platform.request("detectors", 0, dir="-")`` and give it to
  a sampler of :mod:`qkdlink.gateware.sampler` (:attr:`Board.phases` says which).
- ``modulators``: Alice's six outputs to her source and modulators, bit ``i`` being :data:`MODULATOR_OUTPUTS`
  ``[i]`` (:class:`qkdlink.gateware.sequencer.SlotSequencer`'s ``basis``, ``bit``, ``intensity`` and the ``emit``
  and ``sync`` strobes).
- ``uart``: ``rx`` and ``tx`` of the host link, from the board's point of view: the USB-UART bridge of the
  iCEBreaker and the ULX3S; two Feather pins on the OrangeCrab, which has none, for an external 3.3 V USB-UART
  adapter.
- ``qrng``: ``clock`` and ``data`` inputs from an external QRNG (:class:`qkdlink.gateware.qrng.QRNGInput`).

=========  ====================================  ==========================================  ====================
signal     iCEBreaker: Pmod pin (iCE40 pin)      ULX3S: J1 signal (ECP5 ball, bank 7 site)   OrangeCrab: pin (ball)
=========  ====================================  ==========================================  ====================
Z0         PMOD1A 1 (4)                          GP9  (A2, PIOA)                             A0 (L4)
Z1         PMOD1A 2 (2)                          GP10 (C4, PIOA)                             A1 (N3)
X0         PMOD1A 3 (47)                         GP11 (F4, PIOA)                             A2 (N4)
X1         PMOD1A 4 (45)                         GP12 (G3, PIOA)                             A3 (H4)
sync       PMOD1A 7 (3)                          GP8  (A4, PIOA)                             A4 (G4)
basis      PMOD1B 1 (43)                         GP0  (B11)                                  5 (B10)
bit        PMOD1B 2 (38)                         GP1  (A10)                                  6 (B9)
intensity0 PMOD1B 3 (34)                         GP2  (A9)                                   9 (C8)
intensity1 PMOD1B 4 (31)                         GP3  (B9)                                   10 (B8)
emit       PMOD1B 7 (42)                         GP4  (A7)                                   11 (A8)
sync out   PMOD1B 8 (36)                         GP5  (C8)                                   12 (H2)
uart rx    FTDI channel B (6)                    FTDI (M1)                                   0 (N17)
uart tx    FTDI channel B (9)                    FTDI (L4)                                   1 (M18)
qrng data  PMOD1A 9 (46)                         GP6  (C6)                                   MI (N15)
qrng clock PMOD1A 10 (44)                        GP7  (A6)                                   SCK (R17)
=========  ====================================  ==========================================  ====================

On the ULX3S the detectors take the GP row of the Pmod position GP9..GP12 / GN9..GN12 of J1 and the sync the GP
pin beside it, because the ``IDDRX2F`` gearboxes constrain the choice: they exist only in the left and right banks,
one sampler's pins share one bank's edge clock, and nextpnr routes the gearbox's ``ALIGNWD`` input only to the A
(or C) pin of a pair, the GP pins. Bank 7 (GP8..GP13) is the only bank with five such pins on the headers: J2's
GP14..GP17 are in bank 3 and GP18..GP21 in bank 2. GP11..GP13 are wired to the ESP32 too (PCB v2 and later): its
firmware must leave them as inputs. The QRNG takes GP6 and GP7, in bank 0, away from bank 7's edge clock.

On the OrangeCrab the Feather pins of the right I/O banks (12, 13, A0..A4) hold only three A or C pins of their
PIO pairs (13, A2, A3): the gearbox cannot take five channels, so the detectors go through ``IDDRX1F`` registers
(:class:`qkdlink.gateware.sampler.DDRSampler`, two samples a cycle). The UART takes the Feather's serial pins,
0 (RX, into the board) and 1 (TX), and the QRNG the SPI pins MI and SCK.

On the iCEBreaker the snap-off Pmod (PMOD2) holds the buttons and LEDs, so everything goes on PMOD1A and PMOD1B.
"""

from dataclasses import dataclass, field

from amaranth.build import Attrs, Pins, Resource, Subsignal
from amaranth_boards.icebreaker import ICEBreakerPlatform
from amaranth_boards.orangecrab_r0_2 import OrangeCrabR0_2_25FPlatform
from amaranth_boards.resources import UARTResource
from amaranth_boards.ulx3s import ULX3S_85F_Platform

from ..numbering import CHANNELS
from ..wire import stream_map


__all__ = ["Board", "BOARDS", "DETECTOR_CHANNELS", "MODULATOR_OUTPUTS", "BLOCK_RAMS", "SPRAM_WORDS", "board",
           "detector_resource", "qrng_resource"]


#: Names of the time-tagger channels, in the order of the ``detectors`` resource's bits.
DETECTOR_CHANNELS = CHANNELS

#: Names of Alice's modulator outputs, in the order of the ``modulators`` resource's bits.
MODULATOR_OUTPUTS = ("basis", "bit", "intensity0", "intensity1", "emit", "sync")


def detector_resource(pins, *, conn, attrs):
    """The ``detectors`` resource: ``pins`` (one per channel of :data:`DETECTOR_CHANNELS`, in that order) of
    connector ``conn``, inputs with I/O attributes ``attrs``."""
    if len(pins.split()) != len(DETECTOR_CHANNELS):
        raise ValueError(f"the detectors resource needs {len(DETECTOR_CHANNELS)} pins, not {pins!r}")
    return Resource("detectors", 0, Pins(pins, dir="i", conn=conn), attrs)


def qrng_resource(*, clock, data, conn, attrs):
    """The ``qrng`` resource: the QRNG's ``clock`` and ``data`` pins of connector ``conn``, inputs with I/O
    attributes ``attrs``."""
    return Resource("qrng", 0,
                    Subsignal("clock", Pins(clock, dir="i", conn=conn, assert_width=1)),
                    Subsignal("data", Pins(data, dir="i", conn=conn, assert_width=1)),
                    attrs)


class _ICEBreakerPlatform(ICEBreakerPlatform):
    resources = [
        *ICEBreakerPlatform.resources,
        detector_resource("1 2 3 4 7", conn=("pmod", 0), attrs=Attrs(IO_STANDARD="SB_LVCMOS")),
        Resource("modulators", 0, Pins("1 2 3 4 7 8", dir="o", conn=("pmod", 1)),
                 Attrs(IO_STANDARD="SB_LVCMOS")),
        qrng_resource(clock="10", data="9", conn=("pmod", 0), attrs=Attrs(IO_STANDARD="SB_LVCMOS")),
    ]


class _ULX3S85FPlatform(ULX3S_85F_Platform):
    resources = [
        *ULX3S_85F_Platform.resources,
        detector_resource("9+ 10+ 11+ 12+ 8+", conn=("gpio", 0), attrs=Attrs(IO_TYPE="LVCMOS33")),
        Resource("modulators", 0, Pins("0+ 1+ 2+ 3+ 4+ 5+", dir="o", conn=("gpio", 0)),
                 Attrs(IO_TYPE="LVCMOS33")),
        qrng_resource(clock="7+", data="6+", conn=("gpio", 0), attrs=Attrs(IO_TYPE="LVCMOS33")),
    ]

    @property
    def required_tools(self):
        # amaranth-boards asks for openFPGALoader to build, but only programming uses it; `qkd flash` says so
        # when it is missing.
        return [tool for tool in super().required_tools if tool != "openFPGALoader"]


class _OrangeCrab25FPlatform(OrangeCrabR0_2_25FPlatform):
    resources = [
        *OrangeCrabR0_2_25FPlatform.resources,
        detector_resource("a0 a1 a2 a3 a4", conn=("io", 0), attrs=Attrs(IO_TYPE="LVCMOS33")),
        Resource("modulators", 0, Pins("5 6 9 10 11 12", dir="o", conn=("io", 0)), Attrs(IO_TYPE="LVCMOS33")),
        # An adapter left unplugged reads as an idle line, not as a stream of breaks.
        UARTResource(0, rx="0", tx="1", conn=("io", 0), attrs=Attrs(IO_TYPE="LVCMOS33", PULLMODE="UP")),
        qrng_resource(clock="sck", data="cipo", conn=("io", 0), attrs=Attrs(IO_TYPE="LVCMOS33")),
    ]

    # amaranth-boards appends the DFU suffix with dfu-suffix after the build; qkdlink.boards.flash adds it when it
    # flashes, so that a build needs no tool beyond the YoWASP ones.
    @property
    def required_tools(self):
        return [tool for tool in super().required_tools if tool != "dfu-suffix"]

    @property
    def command_templates(self):
        return [template for template in super().command_templates if "dfu-suffix" not in template]


@dataclass(frozen=True)
class Board:
    """A board and how qkdlink builds for it.

    Attributes
    ----------
    name : str
        The name the CLI takes.
    platform : type
        The Amaranth platform class.
    frequency : float
        Target ``sync`` clock in Hz of the cores alone on the device (the capture path of ``boards/capture_top.py``,
        the Toeplitz core of ``boards/toeplitz_top.py``); nextpnr must meet it.
    node_frequency : float
        Target ``sync`` clock in Hz of the whole node (:class:`qkdlink.boards.top.BoardTop`): lower where the node
        fills the device or its slowest speed grade (``None``: ``frequency``).
    toeplitz_width, toeplitz_accumulator : int
        :class:`qkdlink.gateware.toeplitz.ToeplitzHash` parameters that fit the device.
    max_block : int
        Largest key block, in bits, that the device's memory holds.
    frame_bits : int
        Slots per frame of the capture path, as a power of two. The two boards of a link must agree on it.
    choice_frames : int
        Frames Alice's :class:`qkdlink.gateware.choices.ChoiceMemory` holds (sent, not yet sifted).
    key_bits : int
        Size of the :class:`qkdlink.gateware.keymemory.KeyMemory` block, in sifted bits: the block that privacy
        amplification hashes, so at most ``max_block``.
    event_depth : int
        Depth of the time-tagger's event queue and of the slot assigner's detection queue
        (:class:`qkdlink.gateware.queue.EventQueue`), in beats.
    detection_depth : int
        Depth of Bob's detection memory, the FIFO of (basis, bit) of the detections Alice has not answered yet.
        On the UP5K it is 512: Amaranth's ``SyncFIFOBuffered`` compares its whole level for its flags every cycle,
        and at 8192 entries that path runs at 44 MHz; a FIFO with registered flags would allow more.
    phases : int
        Time-tagger bins per clock cycle: 2 where the detectors go through the I/O cells' DDR registers
        (:class:`qkdlink.gateware.sampler.DDRSampler`), 4 through the ECP5's ``IDDRX2F`` gearboxes
        (:class:`qkdlink.gateware.sampler.ECP5GearboxSampler`).
    baud : int
        The host link's UART rate, 8N1.
    depths : dict of str to int
        Ring buffer of each host link stream (:func:`qkdlink.wire.stream_map`, both roles' names), in bytes: a
        power of two. :meth:`stream_depths` picks one role's.
    node_toeplitz_accumulator : int
        The Toeplitz core's accumulator in the board top (:class:`qkdlink.boards.top.BoardTop`), which shares the
        device with the capture path and the host link; ``toeplitz_accumulator`` is the core's size alone on the
        device (``boards/toeplitz_top.py``).
    unsupported : dict of str to str
        The roles (``"alice"``, ``"bob"``) the device cannot hold, each with the reason (the build error says it).
    """
    name: str
    platform: type
    frequency: float
    toeplitz_width: int
    toeplitz_accumulator: int
    max_block: int
    frame_bits: int
    choice_frames: int
    key_bits: int
    event_depth: int
    detection_depth: int
    phases: int
    node_toeplitz_accumulator: int
    depths: dict = field(default_factory=dict)
    baud: int = 3_000_000
    unsupported: dict = field(default_factory=dict)
    node_frequency: float = None

    def __post_init__(self):
        if self.node_frequency is None:
            object.__setattr__(self, "node_frequency", self.frequency)

    @property
    def device(self):
        return self.platform.device

    @property
    def family(self):
        return self.platform().family

    def stream_depths(self, role):
        """``{stream name: ring bytes}`` for the streams of ``role`` (a :class:`qkdlink.wire.Role`)."""
        depths = {}
        for stream in stream_map(role, frame_bits=self.frame_bits, phases=self.phases):
            if stream.name not in self.depths:
                raise ValueError(f"{self.name}: no ring depth for stream {stream.name!r}")
            depths[stream.name] = self.depths[stream.name]
        return depths


#: Block RAMs of each device: (count, bits each). The UP5K also has four 256-kbit SPRAMs (16384 x 16).
BLOCK_RAMS = {
    "iCE40UP5K": (30, 4096),
    "LFE5U-25F": (56, 18432),
    "LFE5U-85F": (208, 18432),
}

#: SPRAMs of the iCE40UP5K, in 16-bit words each.
SPRAM_WORDS = 1 << 14


def _depths(default, **larger):
    names = ("tags", "detections", "answers", "test", "lookups", "matches", "releases",
             "key_commands", "flips", "key_words", "hash_blocks", "seed", "hash")
    return {name: larger.get(name, default) for name in names}


BOARDS = {
    board.name: board for board in [
        # iCE40UP5K: 5280 logic cells. 1024 accumulator cells at 2 bits a cycle leave room for the capture path.
        # Its four 256 kbit SPRAMs (16k words each) hold Alice's choices (6 frames of 2^15 slots, 4 bits a slot:
        # three SPRAMs) and the key block (a quarter of the fourth); the queues and Bob's detection memory take 13
        # of the 30 4-kbit block RAMs.
        Board("icebreaker", _ICEBreakerPlatform, 48e6,
              toeplitz_width=2, toeplitz_accumulator=1024, max_block=1 << 16,
              frame_bits=15, choice_frames=6, key_bits=1 << 16, event_depth=256, detection_depth=1 << 9,
              # The node's Toeplitz core is the smallest that works: the full node fills 96 % of the UP5K with it.
              # Its seed comes over the UART (n + A bits a pass, m / A passes), so any accumulator the UP5K could
              # hold leaves it far slower than the host's hash; it serves tests and small blocks.
              phases=2, node_toeplitz_accumulator=16,
              # The node fills 96 % of the UP5K, where routing alone takes 2-3 ns a LUT level: it reached 27-28 MHz
              # at a 48 MHz target. 24 MHz is twice the oscillator and 8 cycles a bit of 3 Mbaud.
              node_frequency=24e6,
              # One 4-kbit block RAM (512 bytes) per ring, two for the busiest.
              depths=_depths(512, detections=1024, lookups=1024, key_words=1024),
              # Synthesis puts Bob's node at 5217 LUTs and 1848 carries, about 7200 logic cells when placed (the
              # time-tagger, slot assigner and their queues alone take 78 % of the device).
              unsupported={"bob": "Bob's node needs about 7200 logic cells and the UP5K has 5280; run Bob on an "
                                  "ECP5 board (ulx3s-85f, orangecrab-25f) and Alice on this one"}),
        # ECP5-85F: 84k LUTs, 208 18-kbit block RAMs (DP16KD). Alice's choices (4 frames of 2^15 slots) take 32,
        # the key block 16, Bob's queues and detection memory 10. Deeper memories take several blocks per bit,
        # whose output multiplexer does not meet 100 MHz unregistered: 8 frames of choices reach 86 MHz, and a
        # detection memory of 2^16 entries 97 MHz (bench/capture_build.py).
        Board("ulx3s-85f", _ULX3S85FPlatform, 100e6,
              toeplitz_width=4, toeplitz_accumulator=4096, max_block=1 << 18,
              frame_bits=15, choice_frames=4, key_bits=1 << 18, event_depth=1024, detection_depth=1 << 14,
              phases=4, node_toeplitz_accumulator=4096,
              # Speed grade 6: the whole node reached 70-83 MHz at a 100 MHz target, its host link's byte engine
              # being the slowest part. 75 MHz is three times the oscillator and 25 cycles a bit of 3 Mbaud; Bob's
              # gearboxes then take 3.3 ns bins.
              node_frequency=75e6,
              depths=_depths(2048, tags=8192, detections=8192, lookups=8192, key_words=8192)),
        # ECP5-25F: 24k LUTs, 56 DP16KD, speed grade 8. Alice's choices (3 frames of 2^15 slots) take 24 DP16KD,
        # the key block 8, each ring of 2048 bytes one (two for 4096): 46 in all; Bob's take 29. The Toeplitz core
        # gets half the accumulator of the 85F's. 96 MHz, twice the oscillator, is an exact multiple of 3 Mbaud
        # (32 cycles a bit); both tops reached 102-108 MHz in nextpnr.
        Board("orangecrab-25f", _OrangeCrab25FPlatform, 96e6,
              toeplitz_width=4, toeplitz_accumulator=2048, max_block=1 << 17,
              frame_bits=15, choice_frames=3, key_bits=1 << 17, event_depth=512, detection_depth=1 << 13,
              phases=2, node_toeplitz_accumulator=2048,
              depths=_depths(2048, detections=4096, lookups=4096)),
    ]
}


def board(name):
    """The :class:`Board` called ``name`` (a :class:`Board` is returned as it is); raises :class:`ValueError`
    listing the known ones, :class:`TypeError` for anything but a name or a Board."""
    if isinstance(name, Board):
        return name
    if not isinstance(name, str):
        raise TypeError(f"Board must be a Board or a board name, not {name!r}")
    try:
        return BOARDS[name]
    except KeyError:
        raise ValueError(f"unknown board {name!r}; known boards: {', '.join(BOARDS)}") from None
