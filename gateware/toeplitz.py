"""Toeplitz hashing core: privacy amplification in gateware.

The core computes the same hash as :func:`qkdlink.host.toeplitz.toeplitz_hash` (``docs/toeplitz.md``): for an
n-bit key ``x`` and an (n + m - 1)-bit seed ``s``, ``y[i] = XOR_j x[j] & s[i - j + n - 1]``.

It holds ``accumulator`` output bits at a time, one flip-flop each, and produces them in *passes*: pass ``p``
computes ``y[p*A : p*A + A]`` (A = ``accumulator``) while the whole key streams through once, ``width`` bits a
cycle. A seed shift register of A bits slides along the seed as the key goes by, so every key bit meets the seed
bit of every accumulator cell in the same cycle. A hash longer than the accumulator takes ``ceil(m / A)`` passes,
and the key and the seed stream through once per pass; whoever feeds the core (the key memory) replays them.

Each pass reads the seed from the top down: pass bit ``q`` (``q = 0, 1, ...``) is ``s[p*A + n + A - 1 - q]``, or 0
where that index lies outside the seed, for ``A + ceil(n / W) * W`` bits. The first ``A`` bits preload the shift
register, then every key beat is paired with one seed beat. :func:`qkdlink.sim.toeplitz.pass_seed_bits` builds this
sequence. A key whose length is not a multiple of W is padded with zero bits at its end (zeros do not change the
hash).
"""

import operator
from functools import reduce

from amaranth import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out


__all__ = ["ToeplitzHash"]


class _DownCounter:
    """A counter that counts down to zero, with ``zero`` and ``one`` flags kept in registers beside it."""

    def __init__(self, maximum, *, init=0):
        self.value = Signal(range(maximum + 1), init=init)
        self.zero  = Signal(init=init == 0)
        self.one   = Signal(init=init == 1)

    def load(self, value):
        """Statements that set the counter to ``value`` (a constant or an expression)."""
        return [self.value.eq(value), self.zero.eq(value == 0), self.one.eq(value == 1)]

    def step(self):
        """Statements that count down by one; only valid while the counter is not zero."""
        return [self.value.eq(self.value - 1), self.zero.eq(self.one), self.one.eq(self.value == 2)]


class ToeplitzHash(wiring.Component):
    """Toeplitz hash of a key stream with a seed stream.

    Parameters
    ----------
    width : int
        Key, seed and hash bits per stream beat (W); a power of two.
    accumulator : int
        Output bits computed per pass over the key (A); a multiple of ``width``. Each accumulator bit costs
        two flip-flops and, at W = 2, two four-input LUTs (four at W = 4).
    max_n : int
        Largest key length, in bits, that a block may have; sets the width of the counters.

    Members
    -------
    i_block : In(stream.Signature(StructLayout({"n": ..., "m": ...})))
        One beat per block: the key length ``n`` (1 <= n <= ``max_n``) and the hash length ``m`` (1 <= m <= n).
        A beat with ``n`` or ``m`` zero is accepted and ignored.
    i_key : In(stream.Signature(width))
        Key bits, ``ceil(n / W)`` beats per pass; bit ``w`` of beat ``c`` is ``x[c*W + w]``.
    i_seed : In(stream.Signature(width))
        Seed bits in pass order (see above), ``A / W + ceil(n / W)`` beats per pass; bit ``w`` of a beat is the
        earlier of the pass bits it carries when ``w`` is smaller.
    o_hash : Out(stream.Signature(StructLayout({"data": width, "last": 1})))
        Hash bits, ``ceil(m / W)`` beats per block; bit ``w`` of beat ``b`` is ``y[b*W + w]``, bits past ``m`` are
        zero, and ``last`` marks the final beat of the block.
    """

    def __init__(self, *, width=1, accumulator=64, max_n=1 << 16):
        if not isinstance(width, int) or width < 1 or width & (width - 1):
            raise TypeError(f"Width must be a positive power of two, not {width!r}")
        if not isinstance(accumulator, int) or accumulator < width or accumulator % width:
            raise TypeError(f"Accumulator size must be a positive multiple of the width {width}, "
                            f"not {accumulator!r}")
        if not isinstance(max_n, int) or max_n < 1:
            raise TypeError(f"Maximum key length must be a positive integer, not {max_n!r}")
        self._width = width
        self._accumulator = accumulator
        self._max_n = max_n
        super().__init__({
            "i_block": In(stream.Signature(data.StructLayout({
                "n": range(max_n + 1),
                "m": range(max_n + 1),
            }))),
            "i_key":   In(stream.Signature(width)),
            "i_seed":  In(stream.Signature(width)),
            "o_hash":  Out(stream.Signature(data.StructLayout({
                "data": width,
                "last": 1,
            }))),
        })

    @property
    def width(self):
        return self._width

    @property
    def accumulator(self):
        return self._accumulator

    @property
    def max_n(self):
        return self._max_n

    def elaborate(self, platform):
        m = Module()

        W = self._width
        A = self._accumulator
        shift = (W - 1).bit_length()            # log2(W)

        key_beats = Signal(range((self._max_n + W - 1) // W + 1))   # ceil(n / W) of the current block
        m_left    = Signal(range(self._max_n + 1))                  # hash bits this and later passes produce

        # The datapath has no reset: the accumulator is cleared by draining it (zeros shift in), which also
        # happens after a reset, and the shift register is always preloaded before use. Without a reset and a
        # clear, a cell is two four-input LUTs at W = 2 (iCE40 flip-flops cannot combine an enable with an
        # unconditional reset either).
        acc       = Signal(A, reset_less=True)  # one output bit of this pass per cell
        window    = Signal(A, reset_less=True)  # seed bits above the incoming seed beat

        # Down-counters of beats, with registered flags that spare the handshakes a wide compare.
        count     = _DownCounter(max(A // W, (self._max_n + W - 1) // W))   # beats of the current phase
        shifts    = _DownCounter(A // W, init=A // W)   # drain shifts left; a reset drains garbage away
        out_beats = _DownCounter(A // W)        # of those, the beats that carry the finished pass's hash
        out_last  = Signal()                    # the draining pass is the block's last
        out_tail  = Signal(W)                   # mask of the valid bits of the pass's final beat

        # The W incoming seed bits sit below the shift register: pass bits arrive in descending seed index, and
        # bit w of a beat is the earlier, so it is the higher one.
        seed = Cat(self.i_seed.payload[::-1], window)
        # Cell i with key lane w needs seed bit s[i0 + i - (c*W + w) + n - 1], which is seed[i + W - 1 - w].
        # `keep` holds the mapper to the intended cell: one LUT4 forms the W products for two lanes, one more
        # folds them into the accumulator or shifts it (abc otherwise merges the shared control signals into
        # every cell and spends a third LUT4 per cell).
        terms = Signal(A, attrs={"keep": 1})
        # Written as W whole-vector operations rather than A*W single bits: the same logic, and a simulator
        # that evaluates it word by word.
        lanes = [self.i_key.payload[w].replicate(A) & seed[W - 1 - w:W - 1 - w + A] for w in range(W)]
        m.d.comb += terms.eq(reduce(operator.xor, lanes))

        # A finished pass drains from the accumulator itself, W bits a beat, while the next pass preloads its
        # seed; the next pass accumulates once the accumulator is empty.
        accumulate = Signal()
        drain      = Signal(attrs={"keep": 1})
        m.d.comb += [
            self.o_hash.valid.eq(~out_beats.zero),
            self.o_hash.p.data.eq(acc[:W] & Mux(out_beats.one, out_tail, (1 << W) - 1)),
            self.o_hash.p.last.eq(out_last & out_beats.one),
            drain.eq(~shifts.zero & (out_beats.zero | self.o_hash.ready)),
        ]
        with m.If(accumulate | drain):
            m.d.sync += acc.eq(Mux(drain, acc >> W, acc ^ terms))
        with m.If(drain):
            m.d.sync += shifts.step()
            with m.If(~out_beats.zero):
                m.d.sync += out_beats.step()

        # What the current pass ends with, worked out ahead of its end (m_left changes only there, and a pass
        # lasts more than a cycle) so that the end of a pass is not one long carry chain.
        pass_bits = Signal(range(A + 1))        # hash bits of the current pass
        last_pass = Signal()                    # the current pass is the block's last
        m.d.sync += [
            pass_bits.eq(Mux(m_left < A, m_left, A)),
            last_pass.eq(m_left <= A),
        ]
        tail_bits = pass_bits[:shift]           # bits in the pass's final beat, if it is not full
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.i_block.ready.eq(1)
                with m.If(self.i_block.valid & (self.i_block.p.n != 0) & (self.i_block.p.m != 0)):
                    m.d.sync += [
                        key_beats.eq((self.i_block.p.n + W - 1) >> shift),
                        m_left.eq(self.i_block.p.m),
                        count.load(A // W),
                    ]
                    m.next = "PRELOAD"

            with m.State("PRELOAD"):
                m.d.comb += self.i_seed.ready.eq(~count.zero)
                with m.If(self.i_seed.valid & ~count.zero):
                    m.d.sync += window.eq(seed[:A])
                    m.d.sync += count.step()
                with m.If(count.zero & shifts.zero):
                    m.d.sync += count.load(key_beats)
                    m.next = "ACCUMULATE"

            with m.State("ACCUMULATE"):
                m.d.comb += [
                    accumulate.eq(self.i_key.valid & self.i_seed.valid),
                    self.i_key.ready.eq(self.i_seed.valid),
                    self.i_seed.ready.eq(self.i_key.valid),
                ]
                with m.If(accumulate):
                    m.d.sync += window.eq(seed[:A])
                    m.d.sync += count.step()
                    with m.If(count.one):
                        # The pass is done: drain it, and preload the next one if there is one.
                        m.d.sync += [
                            shifts.load(A // W),
                            out_beats.load((pass_bits + W - 1) >> shift),
                            out_last.eq(last_pass),
                            out_tail.eq(Cat((tail_bits == 0) | (tail_bits > w) for w in range(W))),
                            m_left.eq(m_left - pass_bits),
                            count.load(A // W),
                        ]
                        with m.If(last_pass):
                            m.next = "IDLE"
                        with m.Else():
                            m.next = "PRELOAD"

        return m
