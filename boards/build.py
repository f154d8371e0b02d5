"""Bitstream builds with the open toolchain, and what nextpnr says about them."""

import json
import logging
from dataclasses import dataclass

from .. import toolchain


__all__ = ["BuildReport", "TimingError", "build"]


logger = logging.getLogger(__name__)


class TimingError(Exception):
    """The design does not run at the clock frequency it is built for."""


@dataclass(frozen=True)
class BuildReport:
    """What nextpnr reports for a placed and routed design.

    Attributes
    ----------
    board : str
    device : str
    fmax : dict of str to (float, float)
        Per clock net: (achieved, constrained) frequency in MHz.
    utilization : dict of str to (int, int)
        Per resource type (nextpnr's names, e.g. ``ICESTORM_LC``, ``TRELLIS_COMB``): (used, available).
    bitstream : bytes or None
    """
    board: str
    device: str
    fmax: dict
    utilization: dict
    bitstream: bytes

    def check_timing(self):
        """Raise :class:`TimingError` unless every clock meets its constraint."""
        for clock, (achieved, constraint) in self.fmax.items():
            if achieved < constraint:
                raise TimingError(f"{self.board}: clock {clock} reaches {achieved:.2f} MHz, "
                                  f"below its {constraint:.2f} MHz target")

    @property
    def sync_fmax(self):
        """Achieved frequency of the slowest clock, in MHz."""
        return min(achieved for achieved, _ in self.fmax.values())


def build(board, top, *, build_dir, name="top"):
    """Synthesise, place, route and pack ``top`` for ``board`` (a :class:`qkdlink.boards.platforms.Board`).

    Returns a :class:`BuildReport`; does not check timing (call :meth:`BuildReport.check_timing`).
    """
    toolchain.setup()
    platform = board.platform()
    products = platform.build(top, name=name, build_dir=str(build_dir),
                              # Keep going when timing fails so the report says by how much.
                              nextpnr_opts="--report report.json --timing-allow-fail")
    report = json.loads(products.get("report.json", "t"))
    fmax = {clock: (float(figures["achieved"]), float(figures["constraint"]))
            for clock, figures in report["fmax"].items()}
    utilization = {kind: (int(figures["used"]), int(figures["available"]))
                   for kind, figures in report["utilization"].items()}
    bitstream_name = f"{name}.bin" if platform.family == "iCE40" else f"{name}.bit"
    return BuildReport(board=board.name, device=board.device, fmax=fmax, utilization=utilization,
                       bitstream=products.get(bitstream_name))
