"""The boards qkdlink runs on: amaranth-boards platforms with our build settings.

Each board names its device's clock target and the gateware parameters that fit it; ``docs/toeplitz.md`` has the
resources and Fmax they reach.

Every platform has a ``detectors`` resource: the time-tagger's five inputs, bit ``c`` being channel ``c``
(:data:`DETECTOR_CHANNELS`: 0 = Z0, 1 = Z1, 2 = X0, 3 = X1, 4 = sync), 3.3 V inputs on a Pmod. Request it with
``platform.request("detectors", 0, dir="-")`` and give it to a sampler of :mod:`qkdlink.gateware.sampler`.

=========  ====================================  ==========================================
channel    iCEBreaker: PMOD1A pin (iCE40 pin)    ULX3S: J1 signal (ECP5 ball, bank 7 site)
=========  ====================================  ==========================================
Z0         1 (4)                                 GP9  (A2, PIOA)
Z1         2 (2)                                 GP10 (C4, PIOA)
X0         3 (47)                                GP11 (F4, PIOA)
X1         4 (45)                                GP12 (G3, PIOA)
sync       7 (3)                                 GP8  (A4, PIOA)
=========  ====================================  ==========================================

Every platform also has a ``modulators`` resource: Alice's six outputs to her source and modulators, bit ``i`` being
:data:`MODULATOR_OUTPUTS` ``[i]`` (:class:`qkdlink.gateware.sequencer.SlotSequencer`'s ``basis``, ``bit``,
``intensity`` and the ``emit`` and ``sync`` strobes), 3.3 V outputs: on the iCEBreaker PMOD1B pins 1-4, 7, 8
(iCE40 pins 43, 38, 34, 31, 42, 36), on the ULX3S J1's GP0..GP5 (ECP5 balls B11, A10, A9, B9, A7, C8).

On the iCEBreaker the five pins sit on PMOD1A (its pins 1-4 and 7). On the ULX3S the detectors take the GP row
of the Pmod position GP9..GP12 / GN9..GN12 of J1 and the sync the GP pin beside it, because the ``IDDRX2F``
gearboxes constrain the choice: they exist only in the left and right banks, one sampler's pins share one bank's
edge clock, and nextpnr routes the gearbox's ``ALIGNWD`` input only to the A (or C) pin of a pair, the GP pins.
Bank 7 (GP8..GP13) is the only bank with five such pins on the headers: J2's GP14..GP17 are in bank 3 and
GP18..GP21 in bank 2. GP11..GP13 are wired to the ESP32 too (PCB v2 and later): its firmware must leave them
as inputs.
"""

from dataclasses import dataclass

from amaranth.build import Attrs, Pins, Resource
from amaranth_boards.icebreaker import ICEBreakerPlatform
from amaranth_boards.ulx3s import ULX3S_85F_Platform

from ..numbering import CHANNELS


__all__ = ["Board", "BOARDS", "DETECTOR_CHANNELS", "MODULATOR_OUTPUTS", "board", "detector_resource"]


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


class _ICEBreakerPlatform(ICEBreakerPlatform):
    resources = [
        *ICEBreakerPlatform.resources,
        detector_resource("1 2 3 4 7", conn=("pmod", 0), attrs=Attrs(IO_STANDARD="SB_LVCMOS")),
        Resource("modulators", 0, Pins("1 2 3 4 7 8", dir="o", conn=("pmod", 1)),
                 Attrs(IO_STANDARD="SB_LVCMOS")),
    ]


class _ULX3S85FPlatform(ULX3S_85F_Platform):
    resources = [
        *ULX3S_85F_Platform.resources,
        detector_resource("9+ 10+ 11+ 12+ 8+", conn=("gpio", 0), attrs=Attrs(IO_TYPE="LVCMOS33")),
        Resource("modulators", 0, Pins("0+ 1+ 2+ 3+ 4+ 5+", dir="o", conn=("gpio", 0)),
                 Attrs(IO_TYPE="LVCMOS33")),
    ]

    @property
    def required_tools(self):
        # amaranth-boards asks for openFPGALoader to build, but only programming uses it; `qkd flash` says so
        # when it is missing.
        return [tool for tool in super().required_tools if tool != "openFPGALoader"]


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
        Target ``sync`` clock in Hz; nextpnr must meet it.
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

    @property
    def device(self):
        return self.platform.device


BOARDS = {
    board.name: board for board in [
        # iCE40UP5K: 5280 logic cells. 1024 accumulator cells at 2 bits a cycle leave room for the capture path.
        # Its four 256 kbit SPRAMs (16k words each) hold Alice's choices (6 frames of 2^15 slots, 4 bits a slot:
        # three SPRAMs) and the key block (a quarter of the fourth); the queues and Bob's detection memory take 13
        # of the 30 4-kbit block RAMs.
        Board("icebreaker", _ICEBreakerPlatform, 48e6,
              toeplitz_width=2, toeplitz_accumulator=1024, max_block=1 << 16,
              frame_bits=15, choice_frames=6, key_bits=1 << 16, event_depth=256, detection_depth=1 << 9),
        # ECP5-85F: 84k LUTs, 208 18-kbit block RAMs (DP16KD). Alice's choices (4 frames of 2^15 slots) take 32,
        # the key block 16, Bob's queues and detection memory 10. Deeper memories take several blocks per bit,
        # whose output multiplexer does not meet 100 MHz unregistered: 8 frames of choices reach 86 MHz, and a
        # detection memory of 2^16 entries 97 MHz (bench/capture_build.py).
        Board("ulx3s-85f", _ULX3S85FPlatform, 100e6,
              toeplitz_width=4, toeplitz_accumulator=4096, max_block=1 << 18,
              frame_bits=15, choice_frames=4, key_bits=1 << 18, event_depth=1024, detection_depth=1 << 14),
    ]
}


def board(name):
    """The :class:`Board` called ``name``; raises :class:`ValueError` listing the known ones."""
    try:
        return BOARDS[name]
    except KeyError:
        raise ValueError(f"unknown board {name!r}; known boards: {', '.join(BOARDS)}") from None
