"""A top-level that runs the Toeplitz core at full rate on a board, for synthesis, timing and resource figures.

The key and seed streams come from on-chip pseudo-random generators and the hash is folded into one LED, so
nothing is optimised away and the core is timed exactly as it is instantiated; the host link that feeds real keys
comes with the board tops of the protocol stack.
"""

from amaranth import *
from amaranth.lib import io

from ..gateware.toeplitz import ToeplitzHash
from .clocks import add_sync_domain


__all__ = ["ToeplitzBenchTop", "PRBS"]


class PRBS(Elaboratable):
    """``width`` bits a cycle of the PRBS31 sequence (x^31 + x^28 + 1), advanced while ``enable`` is high.

    The output comes straight from flip-flops, as it would from a FIFO, so that the generator's feedback logic
    does not merge into the logic it drives.
    """

    def __init__(self, width):
        self.width = width
        self.enable = Signal()
        self.o = Signal(width)

    def elaborate(self, platform):
        m = Module()
        state = Signal(31, init=1)
        bits = list(state)                      # bits[0] is the newest
        for _ in range(self.width):
            bits = [bits[30] ^ bits[27]] + bits[:30]
        m.d.comb += self.o.eq(state[:self.width])
        with m.If(self.enable):
            m.d.sync += state.eq(Cat(bits))
        return m


class ToeplitzBenchTop(Elaboratable):
    """The Toeplitz core of ``board`` hashing ``n``-bit blocks to ``m`` bits, back to back, forever."""

    def __init__(self, board, *, n, m):
        if not 1 <= m <= n <= board.max_block:
            raise ValueError(f"blocks of {n} bits hashed to {m} bits do not fit {board.name} "
                             f"(1 <= m <= n <= {board.max_block})")
        self.board = board
        self.n = n
        self.m = m

    def elaborate(self, platform):
        m = Module()
        add_sync_domain(m, platform, self.board.frequency)
        m.submodules.core = core = ToeplitzHash(width=self.board.toeplitz_width,
                                                accumulator=self.board.toeplitz_accumulator,
                                                max_n=self.board.max_block)
        m.submodules.keys = keys = PRBS(core.width)
        m.submodules.seeds = seeds = PRBS(core.width)
        m.d.comb += [
            core.i_block.valid.eq(1),
            core.i_block.p.n.eq(self.n),
            core.i_block.p.m.eq(self.m),
            core.i_key.valid.eq(1),
            core.i_key.payload.eq(keys.o),
            keys.enable.eq(core.i_key.ready),
            core.i_seed.valid.eq(1),
            core.i_seed.payload.eq(seeds.o),
            seeds.enable.eq(core.i_seed.ready),
            core.o_hash.ready.eq(1),
        ]
        folded = Signal()
        with m.If(core.o_hash.valid):
            m.d.sync += folded.eq(folded ^ core.o_hash.p.data.xor())
        m.submodules.led = led = io.Buffer("o", platform.request("led", 0, dir="-"))
        m.d.comb += led.o.eq(folded)
        return m
