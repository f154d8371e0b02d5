"""The boards qkdlink runs on: amaranth-boards platforms with our build settings.

Each board names its device's clock target and the gateware parameters that fit it; ``docs/toeplitz.md`` has the
resources and Fmax they reach.
"""

from dataclasses import dataclass

from amaranth_boards.icebreaker import ICEBreakerPlatform
from amaranth_boards.ulx3s import ULX3S_85F_Platform


__all__ = ["Board", "BOARDS", "board"]


class _ICEBreakerPlatform(ICEBreakerPlatform):
    pass


class _ULX3S85FPlatform(ULX3S_85F_Platform):
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
