"""The gateware Toeplitz core, simulated: its stream layout and a driver for the Amaranth simulator.

:func:`key_beats` and :func:`seed_beats` turn a key and a seed (``qkdlink.host.bits`` vectors) into the beats that
:class:`qkdlink.gateware.toeplitz.ToeplitzHash` takes, pass by pass; :func:`hash_blocks` runs blocks through the
core in the Amaranth simulator and returns its output. Cocotb benches and, later, the key memory's driver use the
same layout functions, so the layout is written down once.
"""

import os
import random
from contextlib import nullcontext

import numpy as np
from amaranth.sim import Simulator

from ..gateware.stream import stream_get, stream_put
from ..gateware.toeplitz import ToeplitzHash
from ..host.bits import as_bits


__all__ = ["passes", "block_cycles", "key_beats", "seed_beats", "beats_to_bits", "hash_blocks"]


def passes(m, accumulator):
    """Number of passes over the key that the core makes to compute ``m`` hash bits."""
    return -(-m // accumulator)


def block_cycles(n, m, *, width, accumulator):
    """Clock cycles from accepting a block to emitting its last hash beat, with no stalls on any stream.

    Each pass takes A/W seed beats of preload, one cycle to turn round and ceil(n/W) key beats; the previous
    pass drains meanwhile, and the last one drains after: ceil(bits of the last pass / W) beats.
    """
    count = passes(m, accumulator)
    last_bits = m - (count - 1) * accumulator
    return count * (accumulator // width + 1 + -(-n // width)) + -(-last_bits // width)


def _to_beats(bits, width):
    """Pack a bit vector into ``width``-bit beat values, bit ``w`` of a beat first; zero-padded at the end."""
    rows = np.zeros(-(-bits.size // width) * width, dtype=np.uint8)
    rows[:bits.size] = bits
    rows = rows.reshape(-1, width)
    return [sum(int(bit) << w for w, bit in enumerate(row) if bit) for row in rows]


def beats_to_bits(beats, width, count):
    """The first ``count`` bits of a list of ``width``-bit beat values (the inverse of the packing above)."""
    bits = np.array([(beat >> w) & 1 for beat in beats for w in range(width)], dtype=np.uint8)
    if bits.size < count:
        raise ValueError(f"{len(beats)} beats of {width} bits hold fewer than {count} bits")
    return bits[:count]


def key_beats(key, width):
    """The key beats of one pass (every pass sends the same ones)."""
    return _to_beats(as_bits(key, name="key"), width)


def seed_beats(seed, n, m, *, accumulator, width):
    """The seed beats of every pass, as one list per pass.

    Pass ``p`` reads seed bits from index ``p*A + n + A - 1`` down, ``A + ceil(n / W) * W`` of them, with zeros
    where the index falls outside the seed (``docs/toeplitz.md`` derives the order).
    """
    seed = as_bits(seed, name="seed")
    padded_n = -(-n // width) * width
    result = []
    for index in range(passes(m, accumulator)):
        positions = index * accumulator + n + accumulator - 1 - np.arange(accumulator + padded_n)
        inside = (positions >= 0) & (positions < seed.size)
        bits = np.zeros(positions.size, dtype=np.uint8)
        bits[inside] = seed[positions[inside]]
        result.append(_to_beats(bits, width))
    return result


def hash_blocks(blocks, *, width, accumulator, max_n=None, stall_seed=None, progress=None):
    """Hash ``blocks``, a list of ``(key, seed, m)``, one after another through one simulated core.

    Parameters
    ----------
    width, accumulator : int
        Parameters of :class:`ToeplitzHash`.
    max_n : int or None
        The core's largest key length; the longest key if ``None``.
    stall_seed : int or None
        If given, the testbenches stall every stream at random, reproducibly from this seed; if ``None``, the
        streams run at full rate.
    progress : callable or None
        Called with the number of key beats sent so far, for a progress display.

    Returns
    -------
    list of (numpy.ndarray, list of bool)
        Per block, the ``m`` hash bits and the ``last`` flag of each output beat. A beat that does not come in
        time raises :class:`AssertionError`.

    Set the environment variable ``GENERATE_VCDS`` to write a waveform, ``toeplitz.vcd``.
    """
    blocks = [(as_bits(key, name="key"), as_bits(seed, name="seed"), m) for key, seed, m in blocks]
    if max_n is None:
        max_n = max(key.size for key, _, _ in blocks)
    dut = ToeplitzHash(width=width, accumulator=accumulator, max_n=max_n)
    max_stall = 2 if stall_seed is not None else 0
    # Longest time the consumer may wait for a beat: a whole pass, stretched by the producers' stalls.
    timeout = (accumulator // width + max_n // width + 16) * (max_stall + 1) * 2

    def staller(salt):
        rng = random.Random(f"{stall_seed}/{salt}")
        async def stall(ctx):
            if max_stall:
                for _ in range(rng.randrange(max_stall + 1)):
                    await ctx.tick()
        return stall

    async def put_blocks(ctx):
        stall = staller("block")
        for key, _, m in blocks:
            await stall(ctx)
            await stream_put(ctx, dut.i_block, {"n": key.size, "m": m}, timeout=timeout * 64)

    async def put_keys(ctx):
        stall = staller("key")
        sent = 0
        for key, _, m in blocks:
            beats = key_beats(key, width)
            for _ in range(passes(m, accumulator)):
                for beat in beats:
                    await stall(ctx)
                    await stream_put(ctx, dut.i_key, beat, timeout=timeout)
                    sent += 1
                    if progress is not None and sent % 256 == 0:
                        progress(sent)
        if progress is not None:
            progress(sent)

    async def put_seeds(ctx):
        stall = staller("seed")
        for key, seed, m in blocks:
            for beats in seed_beats(seed, key.size, m, accumulator=accumulator, width=width):
                for beat in beats:
                    await stall(ctx)
                    await stream_put(ctx, dut.i_seed, beat, timeout=timeout)

    results = []
    async def get_hashes(ctx):
        stall = staller("hash")
        for key, _, m in blocks:
            beats, lasts = [], []
            for _ in range(-(-m // width)):
                await stall(ctx)
                payload = await stream_get(ctx, dut.o_hash, timeout=timeout)
                beats.append(payload.data)
                lasts.append(bool(payload.last))
            results.append((beats_to_bits(beats, width, m), lasts))
        # A beat beyond the expected ones is as wrong as a missing one.
        for _ in range(2 * accumulator // width + 32):
            _, _, valid = await ctx.tick().sample(dut.o_hash.valid)
            assert not valid, "the core produced more hash beats than the blocks have"

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for testbench in (put_blocks, put_keys, put_seeds, get_hashes):
        sim.add_testbench(testbench)
    with sim.write_vcd("toeplitz.vcd") if os.getenv("GENERATE_VCDS") else nullcontext():
        sim.run()
    return results
