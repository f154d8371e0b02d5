"""Toeplitz hashing over GF(2): the privacy amplification step and the reference model of the gateware core.

Convention (``docs/toeplitz.md``): an n-bit input ``x`` is hashed to an m-bit output ``y`` by the m x n Toeplitz
matrix ``T[i][j] = s[i - j + n - 1]`` built from an (n + m - 1)-bit seed ``s``, ``y = T x`` over GF(2). The
modified Toeplitz hash of Hayashi and Tsurumaru uses the m x n matrix ``(T' | I)``, where ``T'`` is the m x (n - m)
Toeplitz matrix of an (n - 1)-bit seed in the same convention, so ``y = T' x[:n-m] ^ x[n-m:]``.

Every ``y[i]`` is the parity of the integer linear convolution ``(s * x)[i + n - 1]``, which we compute with a real
FFT in double precision and round. The rounding is exact: the values are integers of at most ``n`` and the FFT
error stays below 2^-17 for every n up to 2^24 (the bound and the measured errors are in ``docs/toeplitz.md``); each
call checks that every value lies within 1/8 of an integer and raises :class:`ArithmeticError` rather than
return a hash it cannot vouch for.
"""

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .bits import as_bits


__all__ = ["toeplitz_hash", "modified_toeplitz_hash", "seed_length", "modified_seed_length",
           "toeplitz_rounding_error"]


# Largest distance from an integer that a convolution value may have before the hash is refused. The analytic
# error bound is far below it; anything near it means the FFT is no longer exact for these sizes.
_ROUNDING_MARGIN = 1 / 8


def seed_length(n, m):
    """Number of seed bits that :func:`toeplitz_hash` needs to hash ``n`` bits to ``m`` bits."""
    _check_lengths(n, m)
    return n + m - 1


def modified_seed_length(n, m):
    """Number of seed bits that :func:`modified_toeplitz_hash` needs to hash ``n`` bits to ``m`` bits."""
    _check_lengths(n, m)
    return n - 1


def _check_lengths(n, m):
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"the input length must be a positive integer, not {n!r}")
    if not isinstance(m, int) or m < 1:
        raise ValueError(f"the output length must be a positive integer, not {m!r}")
    if m > n:
        raise ValueError(f"the output length {m} exceeds the input length {n}: privacy amplification "
                         f"can only shorten a key")


def _fft_length(size):
    """Smallest 5-smooth integer at least ``size``: lengths that numpy's FFT handles at full speed."""
    best = 1 << max(size - 1, 0).bit_length()
    power5 = 1
    while power5 < best:
        power35 = power5
        while power35 < best:
            value = power35
            while value < size:
                value *= 2
            best = min(best, value)
            power35 *= 3
        power5 *= 5
    return best


class _Workspace:
    """FFT buffers of one transform length, reused from block to block.

    Allocating and faulting in fresh arrays of tens of megabytes costs as much as the transforms themselves, so
    each thread keeps the buffers of the last length it used (a thread hashing a stream of equal-sized blocks
    allocates once).
    """
    def __init__(self, length):
        self.length = length
        self.x = np.empty(length)
        self.s = np.empty(length)
        self.x_spectrum = np.empty(length // 2 + 1, dtype=np.complex128)
        self.s_spectrum = np.empty(length // 2 + 1, dtype=np.complex128)
        self.product = np.empty(length)


_local = threading.local()
_executor = None


def _workspace(length):
    workspace = getattr(_local, "workspace", None)
    if workspace is None or workspace.length != length:
        workspace = _local.workspace = _Workspace(length)
    return workspace


def _forward(buffer, bits, spectrum):
    buffer[:bits.size] = bits
    buffer[bits.size:] = 0
    np.fft.rfft(buffer, out=spectrum)


def _convolution(x, s, m):
    """Outputs n-1 .. n+m-2 of the linear convolution of ``x`` and ``s``, in floating point."""
    global _executor
    n = x.size
    # Only outputs n-1 .. n+m-2 of the linear convolution are needed; a cyclic convolution of length
    # >= n+m-1 wraps the unneeded ones (indices >= n+m-1) onto indices below n-1, so it is enough.
    work = _workspace(_fft_length(n + m - 1))
    if _executor is None:
        # numpy's FFT releases the GIL: the two forward transforms run on two cores.
        _executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="toeplitz")
    pending = _executor.submit(_forward, work.x, x, work.x_spectrum)
    _forward(work.s, s, work.s_spectrum)
    pending.result()
    np.multiply(work.x_spectrum, work.s_spectrum, out=work.x_spectrum)
    np.fft.irfft(work.x_spectrum, work.length, out=work.product)
    return work.product[n - 1:n - 1 + m]


def _toeplitz_product(x, s, m):
    """``y = T x`` over GF(2) for the Toeplitz matrix of seed ``s``; lengths are checked by the caller."""
    values = _convolution(x, s, m)
    rounded = np.rint(values)
    error = float(np.max(np.abs(values - rounded), initial=0.0))
    if error > _ROUNDING_MARGIN:
        raise ArithmeticError(f"Toeplitz hash of {x.size} bits to {m} bits: FFT rounding error {error:.3g} "
                              f"exceeds {_ROUNDING_MARGIN}; the result would not be exact")
    return (rounded.astype(np.int64) & 1).astype(np.uint8)


def toeplitz_rounding_error(key, seed, m):
    """Largest distance from an integer of the convolution values behind :func:`toeplitz_hash`.

    The hash is exact while this stays below 1/2; it refuses to answer above 1/8. For benchmarks and tests.
    """
    x = as_bits(key, name="key")
    s = as_bits(seed, name="seed")
    if s.size != seed_length(x.size, m):
        raise ValueError(f"hashing {x.size} bits to {m} bits needs a seed of {seed_length(x.size, m)} bits, "
                         f"not {s.size}")
    values = _convolution(x, s, m)
    return float(np.max(np.abs(values - np.rint(values)), initial=0.0))


def toeplitz_hash(key, seed, m):
    """Hash the bit vector ``key`` (n bits) to ``m`` bits with the Toeplitz matrix of ``seed``.

    Parameters
    ----------
    key : sequence of 0 and 1
        The input ``x``, n bits, ``x[0]`` first.
    seed : sequence of 0 and 1
        The seed ``s``, exactly n + m - 1 bits.
    m : int
        Output length, 1 <= m <= n.

    Returns
    -------
    numpy.ndarray
        The m output bits ``y``, as a bit vector.

    Raises
    ------
    ValueError
        If the lengths do not fit together or a vector holds something other than bits.
    """
    x = as_bits(key, name="key")
    s = as_bits(seed, name="seed")
    expected = seed_length(x.size, m)
    if s.size != expected:
        raise ValueError(f"hashing {x.size} bits to {m} bits needs a seed of {expected} bits, not {s.size}")
    return _toeplitz_product(x, s, m)


def modified_toeplitz_hash(key, seed, m):
    """Hash ``key`` (n bits) to ``m`` bits with the modified Toeplitz matrix ``(T' | I)`` of an (n - 1)-bit seed.

    ``T'`` is the m x (n - m) Toeplitz matrix of ``seed`` in the usual convention; when m = n it has no columns
    and the hash is the identity (no compression). Raises :class:`ValueError` as :func:`toeplitz_hash` does.
    """
    x = as_bits(key, name="key")
    s = as_bits(seed, name="seed")
    expected = modified_seed_length(x.size, m)
    if s.size != expected:
        raise ValueError(f"the modified Toeplitz hash of {x.size} bits to {m} bits needs a seed of "
                         f"{expected} bits, not {s.size}")
    n = x.size
    if m == n:
        return x.copy()
    return _toeplitz_product(x[:n - m], s, m) ^ x[n - m:]
