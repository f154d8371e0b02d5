"""The system clock: a PLL from the board's oscillator to the frequency the gateware is built for."""

from amaranth import *
from amaranth.lib import io
from amaranth.lib.cdc import ResetSynchronizer


__all__ = ["add_sync_domain", "ice40_pll_settings", "ecp5_pll_settings"]


# How far from the wanted frequency a PLL output may be.
_TOLERANCE = 0.01


def add_sync_domain(m, platform, frequency):
    """Create the ``sync`` domain of top-level module ``m`` at ``frequency`` (Hz) from the board's clock.

    The PLL dividers are searched here rather than copied from ``icepll``/``ecppll``, so any reachable frequency
    works; the nearest one is used and returned. nextpnr derives the domain's timing constraint from the PLL
    settings and the oscillator's own constraint (a constraint on the domain's clock net would name a net that
    no longer exists after Yosys flattens the design). The domain stays in reset until the PLL locks.
    """
    m.domains.sync = cd_sync = ClockDomain("sync", local=True)
    locked = Signal()
    reference = platform.default_clk_frequency
    if platform.family == "iCE40":
        output = _ice40_pll(m, platform, reference, frequency, cd_sync.clk, locked)
    elif platform.family == "ecp5":
        output = _ecp5_pll(m, platform, reference, frequency, cd_sync.clk, locked)
    else:
        raise ValueError(f"no PLL for the {platform.family} family")
    m.submodules.reset_sync = ResetSynchronizer(~locked, domain="sync")
    return output


def ice40_pll_settings(reference, frequency):
    """``(DIVR, DIVF, DIVQ, output frequency)`` closest to ``frequency`` within the PLL's limits
    (iCE40 sysCLOCK PLL guide: PFD 10..133 MHz, VCO 533..1066 MHz, output 16..275 MHz)."""
    best = None
    for divr in range(16):
        pfd = reference / (divr + 1)
        if not 10e6 <= pfd <= 133e6:
            continue
        for divf in range(128):
            vco = pfd * (divf + 1)
            if not 533e6 <= vco <= 1066e6:
                continue
            for divq in range(1, 7):
                output = vco / (1 << divq)
                if 16e6 <= output <= 275e6 and (best is None or abs(output - frequency) <
                                                 abs(best[3] - frequency)):
                    best = (divr, divf, divq, output)
    if best is None or abs(best[3] - frequency) > _TOLERANCE * frequency:
        raise ValueError(f"an iCE40 PLL cannot make {frequency / 1e6:.3f} MHz from "
                         f"{reference / 1e6:.3f} MHz")
    return best


def _ice40_pll(m, platform, reference, frequency, clk, locked):
    clock = platform.request(platform.default_clk, dir="-")
    divr, divf, divq, output = ice40_pll_settings(reference, frequency)
    pfd = reference / (divr + 1)
    # FILTER_RANGE by PFD frequency, from the iCE40 PLL guide's table (as icepll picks it).
    filter_range = next(index for index, limit in enumerate(
        (17e6, 26e6, 44e6, 66e6, 101e6, 133e6), start=1) if pfd < limit)
    m.submodules.pll = Instance("SB_PLL40_PAD",
        p_FEEDBACK_PATH="SIMPLE",
        p_DIVR=divr, p_DIVF=divf, p_DIVQ=divq, p_FILTER_RANGE=filter_range,
        io_PACKAGEPIN=clock.io,
        i_RESETB=1, i_BYPASS=0,
        o_PLLOUTGLOBAL=clk,
        o_LOCK=locked)
    return output


def ecp5_pll_settings(reference, frequency):
    """``(CLKI_DIV, CLKFB_DIV, CLKOP_DIV, output frequency)`` closest to ``frequency``
    (ECP5 sysCLOCK guide: PFD 3.125..400 MHz, VCO 400..800 MHz, output 3.125..400 MHz)."""
    best = best_key = None
    for clki_div in range(1, 129):
        pfd = reference / clki_div
        if not 3.125e6 <= pfd <= 400e6:
            continue
        for clkfb_div in range(1, 81):
            output = pfd * clkfb_div
            if not 3.125e6 <= output <= 400e6:
                continue
            for clkop_div in range(1, 129):
                vco = output * clkop_div
                if 400e6 <= vco <= 800e6:
                    # The closest frequency first; then, as ecppll, the VCO nearest the middle of its range.
                    key = (abs(output - frequency), abs(vco - 600e6))
                    if best is None or key < best_key:
                        best, best_key = (clki_div, clkfb_div, clkop_div, output), key
    if best is None or abs(best[3] - frequency) > _TOLERANCE * frequency:
        raise ValueError(f"an ECP5 PLL cannot make {frequency / 1e6:.3f} MHz from "
                         f"{reference / 1e6:.3f} MHz")
    return best


def _ecp5_pll(m, platform, reference, frequency, clk, locked):
    m.submodules.clock_buffer = clock = io.Buffer("i", platform.request(platform.default_clk, dir="-"))
    clki_div, clkfb_div, clkop_div, output = ecp5_pll_settings(reference, frequency)
    m.submodules.pll = Instance("EHXPLLL",
        a_FREQUENCY_PIN_CLKI=str(reference / 1e6),
        a_FREQUENCY_PIN_CLKOP=str(output / 1e6),
        p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
        p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA",
        p_CLKI_DIV=clki_div, p_CLKFB_DIV=clkfb_div,
        p_CLKOP_ENABLE="ENABLED", p_CLKOP_DIV=clkop_div,
        p_CLKOP_CPHASE=(clkop_div - 1) // 2, p_CLKOP_FPHASE=0,
        p_FEEDBK_PATH="CLKOP",
        i_RST=0, i_STDBY=0, i_CLKI=clock.i, i_CLKFB=clk,
        i_PHASESEL0=0, i_PHASESEL1=0, i_PHASEDIR=1, i_PHASESTEP=1, i_PHASELOADREG=1,
        i_PLLWAKESYNC=0, i_ENCLKOP=0,
        o_CLKOP=clk,
        o_LOCK=locked)
    return output
