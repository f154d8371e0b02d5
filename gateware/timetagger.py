"""Time-tagger: edges on detector and sync inputs, time-stamped in bins finer than one clock cycle.

(Module being written: the event layout below is the contract with the slot assigner.)
"""

from amaranth import *
from amaranth.lib import data


__all__ = ["event_layout"]


def event_layout(channels, phases, *, time_width=64):
    """The layout of one time-tagger event: every edge of one clock cycle.

    A bin is 1/``phases`` of a clock cycle. ``cycle`` counts clock cycles since reset; channel ``c`` has an edge
    in this cycle if ``hits[c]`` is set, at bin ``fine[c]`` of the cycle, so its ``time_width``-bit timestamp in
    bins is ``cycle * phases + fine[c]``.
    """
    fine_width = (phases - 1).bit_length()
    if phases < 1 or phases & (phases - 1):
        raise TypeError(f"Phases must be a positive power of two, not {phases!r}")
    return data.StructLayout({
        "cycle": unsigned(time_width - fine_width),
        "hits":  unsigned(channels),
        "fine":  data.ArrayLayout(unsigned(fine_width), channels),
    })
