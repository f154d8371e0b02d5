"""Board front-ends of the time-tagger: detector and sync pins sampled several times a clock cycle.

A sampler turns a port of ``channels`` asynchronous input pins into the word that
:class:`qkdlink.gateware.timetagger.TimeTagger` takes at ``i_samples``: ``phases`` (P) samples per pin per cycle of
the ``sync`` domain, bit ``c * P + k`` being pin ``c``'s sample ``k``, ``k = 0`` the earliest. Sample ``k`` of the
word presented in cycle ``n`` was taken at time ``(n - L) * T + k * T / P`` (T the clock period), up to the input
pins' own delays; L is a constant latency of a few cycles, not always a whole number (see each class). Every
channel goes through the same path, so L shifts detector and sync timestamps alike and does not move a click
within its slot.

The samplers use the FPGA's I/O registers, so they exist only in hardware: they are checked by a synthesis smoke
test (``tests/boards/test_sampler.py``), not simulated.
"""

from amaranth import *
from amaranth.lib import io, wiring
from amaranth.lib.wiring import Out


__all__ = ["DDRSampler", "ECP5GearboxSampler"]


def _check_port(port, kind):
    if not isinstance(port, kind):
        raise TypeError(f"Port must be a {kind.__name__}, not {port!r}")


class DDRSampler(wiring.Component):
    """Two samples per clock cycle per pin, from the double data rate input registers of the I/O cells.

    Works on every platform whose :class:`amaranth.lib.io.DDRBuffer` is implemented (iCE40, ECP5, ...). Sample 0
    is taken at the rising edge that starts a cycle, sample 1 at the falling edge in its middle: Amaranth's
    ``DDRBuffer.i[0]`` is the rising-edge (earlier) sample and ``i[1]`` the falling-edge one on both families.

    - iCE40: ``SB_IO`` in ``PIN_INPUT_DDR`` mode captures ``D_IN_0`` on the rising and ``D_IN_1`` on the falling
      edge of ``INPUT_CLK`` (iCE40 Technology Library; Yosys ``ice40/cells_sim.v``), and Amaranth 0.5 re-registers
      both on the next rising edge (``vendor/_siliconblue.py``): L = 1.
    - ECP5: ``IDDRX1F`` captures on the rising (``Q0``) and falling (``Q1``) edge of ``SCLK`` and presents both at
      the next rising edge (Lattice's simulation model ``IDDRX1F.v``); Amaranth maps ``Q0`` to ``i[0]``
      (``vendor/_lattice.py``): L = 1.

    Parameters
    ----------
    port : :class:`amaranth.lib.io.PortLike`
        The input pins, one channel each (bit ``c`` is channel ``c``), as requested with
        ``platform.request(..., dir="-")``. Inverted pins (``PinsN``) are inverted back.
    domain : str
        The clock domain that samples the pins and in which ``o_samples`` is valid.

    Members
    -------
    o_samples : ``Out(len(port) * 2)``
        Bit ``c * 2 + k`` is pin ``c``'s sample ``k`` of this cycle.
    """

    PHASES = 2

    def __init__(self, port, *, domain="sync"):
        _check_port(port, io.PortLike)
        self._port = port
        self._domain = domain
        super().__init__({"o_samples": Out(len(port) * self.PHASES)})

    @property
    def channels(self):
        return len(self._port)

    @property
    def phases(self):
        return self.PHASES

    def elaborate(self, platform):
        m = Module()
        m.submodules.buffer = buffer = io.DDRBuffer("i", self._port, i_domain=self._domain)
        m.d.comb += self.o_samples.eq(Cat(Cat(buffer.i[0][c], buffer.i[1][c]) for c in range(self.channels)))
        return m


class ECP5GearboxSampler(wiring.Component):
    """Four samples per clock cycle per pin on ECP5: an ``IDDRX2F`` 1:4 input gearbox on every pin.

    ``IDDRX2F`` samples its pin on both edges of the edge clock ``ECLK`` (twice the ``sync`` frequency) and
    hands four samples a ``SCLK`` (``sync``) cycle to the fabric; at 100 MHz, 2.5 ns bins. ``Q0`` is the earliest
    sample and ``Q3`` the latest. Source: Lattice's simulation model ``IDDRX2F.v`` (ECP5 library of Diamond,
    ``cae_library/simulation/verilog/ecp5u``). There the samples taken on rising ``ECLK`` edges shift through
    ``QP -> R8 -> R6`` and those taken on falling edges through ``QN -> R9 -> R7``; with ``ALIGNWD`` low, every
    other rising edge copies ``R6, R7, R8, R9`` to the registers behind ``Q0, Q1, Q2, Q3``, which were sampled
    3, 2.5, 2 and 1.5 ``ECLK`` periods before that edge: four consecutive half-period samples, oldest in
    ``Q0``. The next ``SCLK`` edge hands the word to ``sync``. L lies between 2 and 3 cycles, in steps of half a
    cycle: it depends on where ``SCLK``'s edges fall against those copying edges, which the start-up reset fixes,
    the same for every pin.

    ``ALIGNWD`` is tied low: the word boundary is set at start-up, when the gearboxes and the ``CLKDIVF`` that
    makes ``SCLK`` leave reset together while the edge clock is stopped (see
    :func:`qkdlink.boards.clocks.add_gearbox_domains`, which makes both domains and that reset). The pins must
    suit the gearboxes: in the left or right I/O banks (nextpnr: "only supported for left and right IO"), all in
    one bank so that one edge clock reaches them, and A or C pins of their PIO group (the true pin of a pair),
    the only ones to which nextpnr routes ``ALIGNWD``.

    Parameters
    ----------
    port : :class:`amaranth.lib.io.SingleEndedPort`
        The input pins, one channel each (bit ``c`` is channel ``c``), as requested with
        ``platform.request(..., dir="-")``. Inverted pins (``PinsN``) are inverted back.
    domain : str
        The ``SCLK`` domain, in which ``o_samples`` is valid.
    eclk_domain : str
        The edge clock domain, at twice the frequency of ``domain`` and phase-aligned with it; its reset is the
        gearbox reset, released while the edge clock is stopped.

    Members
    -------
    o_samples : ``Out(len(port) * 4)``
        Bit ``c * 4 + k`` is pin ``c``'s sample ``k`` of this cycle (``IDDRX2F`` output ``Qk``).
    """

    PHASES = 4

    def __init__(self, port, *, domain="sync", eclk_domain="eclk"):
        _check_port(port, io.SingleEndedPort)
        self._port = port
        self._domain = domain
        self._eclk_domain = eclk_domain
        super().__init__({"o_samples": Out(len(port) * self.PHASES)})

    @property
    def channels(self):
        return len(self._port)

    @property
    def phases(self):
        return self.PHASES

    def elaborate(self, platform):
        if getattr(platform, "family", None) != "ecp5":
            raise NotImplementedError(f"IDDRX2F gearboxes exist only on ECP5, not on {platform!r}")
        m = Module()
        for c in range(self.channels):
            # The pin's input buffer must drive the gearbox directly (nextpnr packs both into the I/O cell), so
            # an inverted pin is inverted after the gearbox rather than by an io.Buffer in front of it.
            pin = Signal(name=f"pin{c}")
            m.submodules[f"ib{c}"] = Instance("IB", i_I=self._port.io[c], o_O=pin)
            q = Signal(self.PHASES, name=f"q{c}")
            m.submodules[f"iddr{c}"] = Instance("IDDRX2F",
                i_D=pin,
                i_SCLK=ClockSignal(self._domain),
                i_ECLK=ClockSignal(self._eclk_domain),
                i_RST=ResetSignal(self._eclk_domain),
                i_ALIGNWD=0,
                **{f"o_Q{k}": q[k] for k in range(self.PHASES)})
            samples = self.o_samples[c * self.PHASES:(c + 1) * self.PHASES]
            m.d.comb += samples.eq(~q if self._port.invert[c] else q)
        return m
