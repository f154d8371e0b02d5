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


__all__ = ["Board", "BOARDS", "DETECTOR_CHANNELS", "board", "detector_resource"]


#: Names of the time-tagger channels, in the order of the ``detectors`` resource's bits.
DETECTOR_CHANNELS = ("z0", "z1", "x0", "x1", "sync")


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
    ]


class _ULX3S85FPlatform(ULX3S_85F_Platform):
    resources = [
        *ULX3S_85F_Platform.resources,
        detector_resource("9+ 10+ 11+ 12+ 8+", conn=("gpio", 0), attrs=Attrs(IO_TYPE="LVCMOS33")),
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
    """
    name: str
    platform: type
    frequency: float
    toeplitz_width: int
    toeplitz_accumulator: int
    max_block: int

    @property
    def device(self):
        return self.platform.device


BOARDS = {
    board.name: board for board in [
        # iCE40UP5K: 5280 logic cells. 1024 accumulator cells at 2 bits a cycle leave room for the capture path.
        Board("icebreaker", _ICEBreakerPlatform, 48e6,
              toeplitz_width=2, toeplitz_accumulator=1024, max_block=1 << 16),
        # ECP5-85F: 84k LUTs.
        Board("ulx3s-85f", _ULX3S85FPlatform, 100e6,
              toeplitz_width=4, toeplitz_accumulator=4096, max_block=1 << 18),
    ]
}


def board(name):
    """The :class:`Board` called ``name``; raises :class:`ValueError` listing the known ones."""
    try:
        return BOARDS[name]
    except KeyError:
        raise ValueError(f"unknown board {name!r}; known boards: {', '.join(BOARDS)}") from None
