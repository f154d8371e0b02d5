"""The system clock: a PLL from the board's oscillator to the frequency the gateware is built for; on ECP5 also
the edge clock of the time-tagger's input gearboxes (:func:`add_gearbox_domains`)."""

from amaranth import *
from amaranth.lib import io
from amaranth.lib.cdc import ResetSynchronizer


__all__ = ["add_sync_domain", "add_gearbox_domains", "ice40_pll_settings", "ecp5_pll_settings"]


# How far from the wanted frequency a PLL output may be.
_TOLERANCE = 0.01

# Oscillator cycles per phase of the gearbox start-up (stop, reset, release, start): LiteDRAM's ECP5 PHY waits 8
# cycles of its ~25 MHz init clock between the same steps.
_GEARBOX_STEP = 8


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
        output, _ = _ecp5_pll(m, platform, reference, frequency, cd_sync.clk, locked)
    else:
        raise ValueError(f"no PLL for the {platform.family} family")
    m.submodules.reset_sync = ResetSynchronizer(~locked, domain="sync")
    return output


def add_gearbox_domains(m, platform, frequency, *, eclk_domain="eclk"):
    """Create the ``sync`` domain at ``frequency`` (Hz) and ``eclk_domain`` at twice it, for ECP5 input gearboxes.

    This is the clocking that :class:`qkdlink.gateware.sampler.ECP5GearboxSampler` needs (``IDDRX2F``, TN1265
    "ECP5 and ECP5-5G High-Speed I/O Interface", GDDRX2 receive): the PLL makes the edge clock, ``ECLKSYNCB``
    drives it onto the edge clock network of the bank whose gearboxes use it (nextpnr places it there), and
    ``CLKDIVF`` (``DIV="2.0"``) divides it into ``sync``, so that ``SCLK`` and ``ECLK`` keep a fixed phase.

    The gearboxes' word boundary and ``CLKDIVF``'s output must start from the same edge. After the PLL locks, a
    small sequencer clocked by the board's oscillator stops the edge clock (``ECLKSYNCB.STOP``), releases the
    reset of ``CLKDIVF`` and of ``eclk_domain`` (which the gearboxes take as their ``RST``) while it is stopped,
    starts it again and then lets ``sync`` out of reset: the order LiteDRAM's ``ECP5DDRPHYInit`` uses for the
    same primitives. ``sync`` is in reset until then, and again whenever the PLL loses lock.

    Returns the ``sync`` frequency reached (half the PLL's); like :func:`add_sync_domain`, nextpnr derives the
    clock constraints from the PLL, ``ECLKSYNCB`` and ``CLKDIVF``.
    """
    if platform.family != "ecp5":
        raise ValueError(f"no input gearboxes on the {platform.family} family")
    m.domains.sync = cd_sync = ClockDomain("sync", local=True)
    cd_eclk = ClockDomain(eclk_domain, local=True)
    m.domains += cd_eclk
    # The oscillator keeps running while the edge clock, and so sync, are stopped.
    m.domains.gearbox_init = cd_init = ClockDomain("gearbox_init", local=True)

    pll_clock = Signal()
    locked = Signal()
    edge_frequency, oscillator = _ecp5_pll(m, platform, platform.default_clk_frequency, 2 * frequency,
                                           pll_clock, locked)
    m.d.comb += cd_init.clk.eq(oscillator)
    stop = Signal()
    reset = Signal(init=1)
    m.submodules.eclksync = Instance("ECLKSYNCB", i_ECLKI=pll_clock, i_STOP=stop, o_ECLKO=cd_eclk.clk)
    m.submodules.clkdiv = Instance("CLKDIVF",
        p_DIV="2.0",
        i_CLKI=cd_eclk.clk, i_RST=reset, i_ALIGNWD=0,
        o_CDIVX=cd_sync.clk)
    m.d.comb += cd_eclk.rst.eq(reset)

    # Registered (glitch-free) controls; each phase lasts _GEARBOX_STEP oscillator cycles.
    step = Signal(range(5 * _GEARBOX_STEP + 1))
    ready = Signal()
    with m.If(step != 5 * _GEARBOX_STEP):
        m.d.gearbox_init += step.eq(step + 1)
    m.d.gearbox_init += [
        stop.eq((step >= _GEARBOX_STEP) & (step < 4 * _GEARBOX_STEP)),
        reset.eq(step < 3 * _GEARBOX_STEP),
        ready.eq(step == 5 * _GEARBOX_STEP),
    ]
    m.submodules.gearbox_init_sync = ResetSynchronizer(~locked, domain="gearbox_init")
    m.submodules.reset_sync = ResetSynchronizer(~ready, domain="sync")
    return edge_frequency / 2


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
    return output, clock.i
