"""Cascade information reconciliation: Bob corrects his key to Alice's by asking her for parities.

Protocol
--------
Cascade (Brassard and Salvail, EUROCRYPT 1993) with the parameters and improvements analysed by Martinez-Mateo,
Pacher, Peev, Ciurana and Martin, "Demystifying the information reconciliation protocol Cascade", QIC 15 (2015),
arXiv:1407.3257. In every pass the key, in that pass's order, is cut into blocks; Alice tells Bob the parity of each
block; every block whose parity differs from Bob's holds an odd number of errors, and a binary search (bisection:
Alice reveals the parity of the first half, Bob infers the second) finds and corrects one of them. Correcting a bit
changes the parity of the block that holds it in every other pass, so blocks of earlier passes that were even become
odd and are searched again (the *cascade*). Alice only answers parity questions; Bob asks and corrects.

Block sizes follow the analysis of the paper (:func:`block_sizes` gives the reasoning and the alternatives). With
``alpha = ceil(log2(1/Q) - 1/2)`` for the estimated error rate Q:

- first pass: ``k1 = 2**alpha``, between 0.71/Q and 1.41/Q (the paper's option (8));
- second pass: ``k2 = 4 k1`` (their option (7));
- third pass: ``k3 = 4096`` (option (8));
- fourth pass and later: two blocks, a random half of the key and the rest (options (7) and (8)),

each at most ``ceil(n/2)``. Powers of two make every bisection reveal exactly ``log2 k`` parities. The passes with two
blocks are a BICONF-style confirmation (Buttler et al. 2003): each compares the parity of a random half of the key,
which catches any remaining error pattern with probability 1/2, and corrects through bisection and the cascade when
it does. The default is the paper's 14 passes, so 11 such checks.

Beyond the textbook protocol (the last two save leak without changing what the protocol corrects):

- the first pass uses the key order; every later pass has its own random order (below);
- in passes after the first, the parity of the last block is not asked: it follows from the parity of the whole
  key, which the first pass's block parities give;
- every parity Alice ever revealed is kept, for the fixed bisection tree of every block of every pass, and reused:
  a search walks through known sub-blocks without asking (sub-block reuse), the second half of every bisection is
  inferred, and after each correction the smallest known sub-block, in every pass, that holds the corrected bit and
  has become odd is searched (the larger ones contain it and are searched again only if still odd afterwards).

Batching
--------
Everything that can go in one message does. The first request asks for the block parities of *all* passes at once
(Alice's parities do not depend on Bob's corrections, so asking early reveals nothing more). After that, every
bisection step of every odd block in flight, of every pass, advances together: one request/reply exchange per
bisection level, not per block. Corrections and the searches they trigger are handled in batches between exchanges;
searches that overlap are merged (a block holding another search's block waits for that search to finish, then is
searched again only if it is still odd). Passes run in order: a pass starts once no search of the earlier passes is
left. Most exchanges are spent in the cascade after the second pass, where each correction can make one more block
odd: chains of searches that cannot run in parallel. ``bench/cascade.py`` measures about 70 to 500 exchanges for
n = 10^4 to 10^6 at Q = 1 % to 8 % (textbook Cascade, one block at a time: 650 to 290 000).

The leak is counted exactly: ``leaked_bits`` is the number of parity bits in all of Alice's replies, including the
block parities of every pass. Cascade can, with small probability, leave errors (an even number of errors hidden
from every check); the verification hash that follows reconciliation catches that. Nothing here claims equality.

Orders of the passes
--------------------
Both sides derive every pass's order from the public ``shuffle_seed`` (bytes, at least 16, that Bob draws from the
operating system and sends). The pass of index ``q`` (0-based) uses the generator
``numpy.random.Generator(numpy.random.PCG64(numpy.random.SeedSequence(E, spawn_key=(q,))))``, where ``E`` is
``int.from_bytes(SHA-256(b"qkdlink.cascade/1\\0" + shuffle_seed), "little")``:

- index 0 (the first pass): the key order (identity);
- indices 1 and 2: ``generator.permutation(n)``; position ``p`` of the pass holds key bit ``permutation[p]``;
- indices 3 and later: ``mask = generator.bytes(ceil(n / 8))``, read least significant bit first (the convention of
  :mod:`.bits`); bit ``x`` of the key goes to the second half when mask bit ``x`` is 1. The pass order is the key
  bits of the first half in key order, then those of the second half in key order. A pass with two blocks needs only
  a random split; the order inside a half only decides which error a bisection finds first. Drawing a split instead
  of a permutation keeps these passes almost free when they find nothing, which is nearly always.

NumPy's compatibility policy allows ``Generator`` methods to change their output between versions, so both ends must
run a NumPy whose ``permutation`` and ``bytes`` agree (in practice: the same version). If they did not, Bob would
correct against the wrong orders and the verification hash would reject every block; nothing detects it earlier.

Messages
--------
Bob's generator yields :class:`ParityRequest` objects and receives :class:`ParityReply` objects; neither side does
any I/O. Both encode to bytes (little-endian, fixed layout, described on each class) and decoding checks everything.
"""

import hashlib
import math
import numbers
from dataclasses import dataclass

import numpy as np

from .bits import as_bits, pack_bits, unpack_bits


__all__ = ["ParityRequest", "ParityReply", "CascadeResult", "CascadeAlice", "cascade_bob", "reconcile",
           "block_sizes", "SCHEDULES", "DEFAULT_PASSES"]


#: Number of passes when the caller does not choose (the paper's): three of growing blocks, eleven random-half checks.
DEFAULT_PASSES = 14

# Passes 1 and 2 (0-based) are random permutations; later passes are random splits into two halves. The rule depends
# only on the pass index, so that Alice derives the same orders without knowing Bob's schedule.
_PERMUTED_PASSES = (1, 2)
_FIRST_SPLIT_PASS = 3
_MAX_PASSES = 255                           # a pass index travels as one byte
_MAX_KEY_LENGTH = (1 << 32) - 1             # range ends travel as 32-bit integers
_MIN_SEED_BYTES = 16
_SEED_DOMAIN = b"qkdlink.cascade/1\0"

_REQUEST_MAGIC = b"QKCQ"
_REPLY_MAGIC = b"QKCP"
_VERSION = 1


# --- checks ------------------------------------------------------------------------------------------------------

def _check_key(key, name):
    bits = as_bits(key, name=name)
    if bits.size == 0:
        raise ValueError(f"{name} must hold at least one bit, not {bits.size}")
    if bits.size > _MAX_KEY_LENGTH:
        raise ValueError(f"{name} must hold at most {_MAX_KEY_LENGTH} bits, not {bits.size}")
    return bits


def _check_seed(seed):
    if not isinstance(seed, (bytes, bytearray)):
        raise ValueError(f"shuffle_seed must be bytes, not {seed!r}")
    if len(seed) < _MIN_SEED_BYTES:
        raise ValueError(f"shuffle_seed must hold at least {_MIN_SEED_BYTES} bytes, not {len(seed)}")
    return bytes(seed)


def _check_qber(qber):
    if (isinstance(qber, bool) or not isinstance(qber, numbers.Real) or not math.isfinite(qber)
            or not 0 <= qber < 0.5):
        raise ValueError(f"qber must be a number in [0, 0.5), not {qber!r}")
    return float(qber)


# --- the block-size schedule ------------------------------------------------------------------------------------

SCHEDULES = ("qkdlink", "option7", "option8")


def block_sizes(qber, n, *, schedule="qkdlink"):
    """Block sizes of the first three passes for an estimated error rate ``qber`` and an ``n``-bit key.

    Passes 4 and later always split the key into two random halves. With ``alpha = ceil(log2(1/qber) - 1/2)``:

    - ``"qkdlink"`` (the default): ``k1 = 2**alpha``, ``k2 = 4 k1``, ``k3 = 4096``. The first and third passes of
      option (8) of Martinez-Mateo et al. (2015) with the second pass of their option (7);
    - ``"option8"``: ``k1 = 2**alpha``, ``k2 = 2**ceil((alpha + 12) / 2)``, ``k3 = 4096``;
    - ``"option7"``: ``k1 = 2**ceil(log2(1/qber))``, ``k2 = 4 k1``, and the third pass already of half the key.

    Every size is capped at ``ceil(n/2)`` (so Q = 0 gives blocks of half the key) and raised to at least the one
    before (which only matters below Q = 2^-12).

    The paper's reasoning, which all three follow: the leak of a pass is its block parities plus ``log2 k``
    parities per odd block, exact for powers of two; a first block near 1/Q (rather than the original 0.73/Q) asks
    fewer block parities and leaves the errors that hide in pairs to later passes, which find them cheaply through
    the cascade; passes of half the key cost about one parity each and drive the chance of a leftover error down.
    Option (8)'s large second block leaks least for long keys, but the cascade after it is long (many round trips)
    and for short keys it leaks more. ``bench/cascade.py`` measures both: ``"qkdlink"`` keeps f below 1.10 from
    n = 10^4 to 10^6 at Q = 1 % to 8 % with 1.2 to 5 times fewer round trips than option (8), which leaks up to
    0.02 less (in f) for n >= 10^5 and up to 0.06 more at 10^4.

    Raises
    ------
    ValueError
        If ``qber`` is not in [0, 0.5), ``n`` is not a positive integer or ``schedule`` is unknown.
    """
    qber = _check_qber(qber)
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"the key length must be a positive integer, not {n!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, not {schedule!r}")
    half = (int(n) + 1) // 2
    # Q = 0 asks for blocks as large as possible: below 2^-40 every cap applies anyway.
    inverse = math.log2(1 / max(qber, 2.0 ** -40))
    alpha = max(1, math.ceil(inverse - 0.5))
    if schedule == "option7":
        k1 = 1 << math.ceil(inverse)
        sizes = [k1, 4 * k1, half]
    elif schedule == "option8":
        sizes = [1 << alpha, 1 << math.ceil((alpha + 12) / 2), 4096]
    else:
        sizes = [1 << alpha, 4 << alpha, 4096]
    result = []
    for size in sizes:
        result.append(min(max(size, result[-1] if result else 1), half))
    return tuple(result)


_schedule = block_sizes                    # cascade_bob's keyword of the same name hides the function


# --- pass orders, shared by both sides --------------------------------------------------------------------------

_BYTE_POPCOUNT = np.array([bin(value).count("1") for value in range(256)], dtype=np.uint8)


def _generator(seed, index):
    entropy = int.from_bytes(hashlib.sha256(_SEED_DOMAIN + seed).digest(), "little")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy, spawn_key=(index,))))


class _PassOrder:
    """The order of one pass: ``perm[p]`` is the key bit at position ``p`` of the pass, ``inv`` its inverse.

    Split passes keep their packed mask and build ``perm``/``inv`` only when something needs a position inside a
    half (rare: a half must have turned out odd).
    """
    def __init__(self, seed, n, index):
        self.n = n
        self.index = index
        self.split = index >= _FIRST_SPLIT_PASS
        self._perm = self._inv = None
        if index in _PERMUTED_PASSES:
            self._perm = _generator(seed, index).permutation(n)
        elif self.split:
            raw = np.frombuffer(_generator(seed, index).bytes((n + 7) // 8), dtype=np.uint8).copy()
            if n % 8:
                raw[-1] &= (1 << (n % 8)) - 1       # bits past the key are not part of the mask
            self.mask_packed = raw
            self.n0 = n - int(_BYTE_POPCOUNT[raw].sum(dtype=np.int64))   # the first half: mask bit 0

    @property
    def identity(self):
        return self.index == 0

    def mask(self):
        return np.unpackbits(self.mask_packed, count=self.n, bitorder="little")

    @property
    def perm(self):
        if self._perm is None and self.split:
            mask = self.mask().view(bool)
            self._perm = np.concatenate([np.flatnonzero(~mask), np.flatnonzero(mask)])
        return self._perm

    @property
    def inv(self):
        if self._inv is None and not self.identity:
            # 32-bit positions where they fit: the scatter writes half the memory and runs three times as fast.
            dtype = np.int32 if self.n < 1 << 31 else np.int64
            self._inv = np.empty(self.n, dtype=dtype)
            self._inv[self.perm] = np.arange(self.n, dtype=dtype)
        return self._inv

    def positions(self, x):
        """Positions in this pass of the key bits ``x``."""
        return x if self.identity else self.inv[x]

    def bits(self, p):
        """Key bits at the positions ``p`` of this pass."""
        return p if self.identity else self.perm[p]

    def half_of(self, x):
        """For a split pass: 0 or 1, the half that key bit ``x`` is in."""
        return (self.mask_packed[x >> 3] >> (x & 7)) & 1


def _packed_parity(packed, mask_packed=None):
    """Parity of a packed bit vector, optionally ANDed with a packed mask: the parity of the XOR of its bytes."""
    data = packed if mask_packed is None else packed & mask_packed
    return bin(int(np.bitwise_xor.reduce(data, initial=0))).count("1") & 1


# --- messages ----------------------------------------------------------------------------------------------------

def _index_array(values, name):
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, not of shape {array.shape!r}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integers, not {array.dtype}")
    array = array.astype(np.int64)
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class ParityRequest:
    """Bob's question: the parities of Alice's key over a list of ranges, each in the order of one pass.

    Range ``i`` is positions ``starts[i]`` up to, not including, ``ends[i]`` of pass ``passes[i]`` (0-based).

    Attributes
    ----------
    key_length : int
        Length ``n`` of the key, so that Alice can refuse a request meant for a different key.
    passes : numpy.ndarray
        Pass index of each range, 0 to 254.
    starts, ends : numpy.ndarray
        Range bounds, ``0 <= start < end <= key_length``.

    Encoding: ``b"QKCQ"``, version byte 1, ``key_length`` (uint32), the number of ranges ``m`` (uint32), then ``m``
    pass indices (uint8), ``m`` starts (uint32) and ``m`` ends (uint32), all little-endian: ``13 + 9 m`` bytes.

    Raises
    ------
    ValueError
        If the arrays do not describe valid ranges.
    """
    key_length: int
    passes: np.ndarray
    starts: np.ndarray
    ends: np.ndarray

    def __post_init__(self):
        if (isinstance(self.key_length, bool) or not isinstance(self.key_length, numbers.Integral)
                or not 1 <= self.key_length <= _MAX_KEY_LENGTH):
            raise ValueError(f"key_length must be an integer in [1, {_MAX_KEY_LENGTH}], not {self.key_length!r}")
        object.__setattr__(self, "key_length", int(self.key_length))
        passes = _index_array(self.passes, "passes")
        starts = _index_array(self.starts, "starts")
        ends = _index_array(self.ends, "ends")
        if not passes.size == starts.size == ends.size:
            raise ValueError(f"passes, starts and ends must have one length, not "
                             f"{passes.size}, {starts.size} and {ends.size}")
        if passes.size:
            if passes.min() < 0 or passes.max() >= _MAX_PASSES:
                raise ValueError(f"pass indices must lie in [0, {_MAX_PASSES - 1}], not "
                                 f"{int(passes.min())}..{int(passes.max())}")
            empty = starts >= ends
            if starts.min() < 0 or ends.max() > self.key_length or empty.any():
                bad = int(np.flatnonzero(empty | (starts < 0) | (ends > self.key_length))[0])
                raise ValueError(f"range {bad} must satisfy 0 <= start < end <= {self.key_length}, not "
                                 f"{int(starts[bad])}..{int(ends[bad])}")
        object.__setattr__(self, "passes", passes)
        object.__setattr__(self, "starts", starts)
        object.__setattr__(self, "ends", ends)

    @classmethod
    def _trusted(cls, key_length, passes, starts, ends):
        """A request from Bob's own arrays (int64, valid by construction), without the checks of ``__init__``."""
        request = object.__new__(cls)
        for name, value in (("key_length", key_length), ("passes", passes), ("starts", starts), ("ends", ends)):
            if isinstance(value, np.ndarray):
                value.setflags(write=False)
            object.__setattr__(request, name, value)
        return request

    def __len__(self):
        return self.passes.size

    def __eq__(self, other):
        if not isinstance(other, ParityRequest):
            return NotImplemented
        return (self.key_length == other.key_length and np.array_equal(self.passes, other.passes)
                and np.array_equal(self.starts, other.starts) and np.array_equal(self.ends, other.ends))

    __hash__ = None

    def encode(self):
        """The request as bytes (layout in the class description)."""
        header = _REQUEST_MAGIC + bytes([_VERSION]) + self.key_length.to_bytes(4, "little") + \
            len(self).to_bytes(4, "little")
        return b"".join([header, self.passes.astype(np.uint8).tobytes(),
                         self.starts.astype("<u4").tobytes(), self.ends.astype("<u4").tobytes()])

    @classmethod
    def decode(cls, data):
        """The request that :meth:`encode` turned into ``data``.

        Raises
        ------
        ValueError
            If ``data`` is not exactly one well-formed request.
        """
        data = _check_bytes(data, "parity request")
        _check_header(data, _REQUEST_MAGIC, 13, "parity request")
        key_length = int.from_bytes(data[5:9], "little")
        count = int.from_bytes(data[9:13], "little")
        if len(data) != 13 + 9 * count:
            raise ValueError(f"a parity request of {count} ranges is {13 + 9 * count} bytes long, not {len(data)}")
        passes = np.frombuffer(data, dtype=np.uint8, count=count, offset=13)
        starts = np.frombuffer(data, dtype="<u4", count=count, offset=13 + count)
        ends = np.frombuffer(data, dtype="<u4", count=count, offset=13 + 5 * count)
        return cls(key_length, passes, starts, ends)


@dataclass(frozen=True, eq=False)
class ParityReply:
    """Alice's answer: one parity bit per range of the request, in the request's order.

    Encoding: ``b"QKCP"``, version byte 1, the number of bits ``m`` (uint32, little-endian), then the bits packed
    least significant bit first (:func:`.bits.pack_bits`) with zero padding: ``9 + ceil(m / 8)`` bytes.

    Raises
    ------
    ValueError
        If ``parities`` is not a one-dimensional vector of bits.
    """
    parities: np.ndarray

    def __post_init__(self):
        parities = as_bits(self.parities, name="parities").copy()
        parities.setflags(write=False)
        object.__setattr__(self, "parities", parities)

    @classmethod
    def _trusted(cls, parities):
        """A reply from Alice's own uint8 bits, without the checks of ``__init__``."""
        reply = object.__new__(cls)
        parities.setflags(write=False)
        object.__setattr__(reply, "parities", parities)
        return reply

    def __len__(self):
        return self.parities.size

    def __eq__(self, other):
        if not isinstance(other, ParityReply):
            return NotImplemented
        return np.array_equal(self.parities, other.parities)

    __hash__ = None

    def encode(self):
        """The reply as bytes (layout in the class description)."""
        return _REPLY_MAGIC + bytes([_VERSION]) + len(self).to_bytes(4, "little") + pack_bits(self.parities)

    @classmethod
    def decode(cls, data):
        """The reply that :meth:`encode` turned into ``data``.

        Raises
        ------
        ValueError
            If ``data`` is not exactly one well-formed reply (including non-zero padding bits).
        """
        data = _check_bytes(data, "parity reply")
        _check_header(data, _REPLY_MAGIC, 9, "parity reply")
        count = int.from_bytes(data[5:9], "little")
        expected = 9 + (count + 7) // 8
        if len(data) != expected:
            raise ValueError(f"a parity reply of {count} bits is {expected} bytes long, not {len(data)}")
        payload = data[9:]
        if count % 8 and payload[-1] >> (count % 8):
            raise ValueError(f"the padding bits after parity bit {count} must be zero, not {payload[-1]:#04x}")
        return cls(unpack_bits(payload, count))


def _check_bytes(data, what):
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"a {what} must be decoded from bytes, not {type(data).__name__}")
    return bytes(data)


def _check_header(data, magic, size, what):
    if len(data) < size:
        raise ValueError(f"a {what} needs at least {size} bytes, not {len(data)}")
    if data[:4] != magic:
        raise ValueError(f"a {what} starts with {magic!r}, not {data[:4]!r}")
    if data[4] != _VERSION:
        raise ValueError(f"{what} version must be {_VERSION}, not {data[4]}")


@dataclass(frozen=True, eq=False)
class CascadeResult:
    """Outcome of Bob's side of Cascade.

    Attributes
    ----------
    key : numpy.ndarray
        Bob's corrected key. It equals Alice's except with small probability; only a verification hash tells.
    leaked_bits : int
        Number of parity bits Alice revealed: every bit of every reply.
    round_trips : int
        Number of request/reply exchanges.
    corrected : int
        Number of bits Bob flipped. Every flip corrects an error: a bit is flipped only when Alice's bit is known.
    passes : int
        Number of passes run.
    """
    key: np.ndarray
    leaked_bits: int
    round_trips: int
    corrected: int
    passes: int


# --- Alice -------------------------------------------------------------------------------------------------------

class CascadeAlice:
    """Alice's side of Cascade: answers parity questions about her key, and does nothing else.

    Parameters
    ----------
    key : sequence of 0 and 1
        Alice's key, the reference that Bob corrects his key to.
    shuffle_seed : bytes
        The public seed of the pass orders, at least 16 bytes, the same as Bob's.

    Raises
    ------
    ValueError
        If the key is empty or not bits, or the seed is not bytes of at least 16.

    Alice keeps, for every pass asked about, the XOR prefix of her key in that pass's order, so every range parity
    costs two look-ups. The whole halves of a split pass are answered from the packed key without building its order.
    """
    def __init__(self, key, *, shuffle_seed):
        self._key = _check_key(key, "key").copy()
        self._seed = _check_seed(shuffle_seed)
        self._packed = np.packbits(self._key, bitorder="little")
        self._orders = {}
        self._prefixes = {}

    @property
    def key_length(self):
        return self._key.size

    def _order(self, index):
        order = self._orders.get(index)
        if order is None:
            order = self._orders[index] = _PassOrder(self._seed, self._key.size, index)
        return order

    def _prefix(self, index):
        prefix = self._prefixes.get(index)
        if prefix is None:
            order = self._order(index)
            bits = self._key if order.identity else self._key[order.perm]
            prefix = np.zeros(self._key.size + 1, dtype=np.uint8)
            np.bitwise_xor.accumulate(bits, out=prefix[1:])
            self._prefixes[index] = prefix
        return prefix

    def answer(self, request):
        """The parities of ``request``'s ranges of Alice's key.

        Raises
        ------
        ValueError
            If ``request`` is not a :class:`ParityRequest` for a key of Alice's length.
        """
        if not isinstance(request, ParityRequest):
            raise ValueError(f"Alice answers a ParityRequest, not {type(request).__name__}")
        n = self._key.size
        if request.key_length != n:
            raise ValueError(f"the request is for a key of {request.key_length} bits, not Alice's {n}")
        parities = np.empty(len(request), dtype=np.uint8)
        passes = request.passes
        # Bob groups his ranges by pass; any order is answered, one run of equal pass indices at a time.
        cuts = (np.flatnonzero(passes[1:] != passes[:-1]) + 1).tolist()
        for first, last in zip([0, *cuts], [*cuts, passes.size]) if passes.size else ():
            index = int(passes[first])
            starts, ends = request.starts[first:last], request.ends[first:last]
            order = self._order(index)
            if order.split and index not in self._prefixes:
                # A half of a split pass is the parity of the key under the mask (or its complement): no order needed.
                first_half = (starts == 0) & (ends == order.n0)
                if (first_half | ((starts == order.n0) & (ends == n))).all():
                    ones = _packed_parity(self._packed, order.mask_packed)
                    zeros = ones ^ _packed_parity(self._packed)
                    parities[first:last] = np.where(first_half, zeros, ones)
                    continue
            prefix = self._prefix(index)
            np.bitwise_xor(prefix[ends], prefix[starts], out=parities[first:last])
        return ParityReply._trusted(parities)


# --- Bob ---------------------------------------------------------------------------------------------------------

def _distinct(values):
    """The distinct values, sorted (``numpy.unique`` without its overhead, which dominates for small arrays)."""
    ordered = np.sort(values)
    if ordered.size < 2:
        return ordered
    keep = np.empty(ordered.size, dtype=bool)
    keep[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


def _odd_runs(sorted_ids):
    """The values that occur an odd number of times in a sorted array."""
    if sorted_ids.size == 0:
        return sorted_ids
    change = np.empty(sorted_ids.size, dtype=bool)
    change[0] = True
    np.not_equal(sorted_ids[1:], sorted_ids[:-1], out=change[1:])
    starts = np.flatnonzero(change)
    counts = np.diff(np.append(starts, sorted_ids.size))
    return sorted_ids[starts[(counts & 1).astype(bool)]]


class _BobPass:
    """Bob's state for one pass: its blocks, and the bisection trees of all blocks with what Alice revealed.

    Each block of at most ``2**c`` bits gets a binary tree: node ``(t, g)`` covers virtual positions
    ``g << t .. (g + 1) << t``, where virtual position ``j << c | i`` is bit ``i`` of block ``j`` (blocks padded to
    ``2**c``; a node that lies wholly in the padding is empty). Level ``c`` holds the blocks, level 0 single bits.
    The nodes of all levels are laid out in one flat array (level ``t`` from ``offsets[t]``), for two arrays: Bob's
    current parity of every node (``tree``), and what Bob knows of Alice's (``alice``: 0 if unknown, else 2 plus
    her parity, so one look-up answers both questions).

    Active searches are nodes ``(t, g)`` whose parity Alice revealed and differs from Bob's.
    """
    def __init__(self, order, bounds):
        self.order = order
        self.index = order.index
        self.bounds = np.asarray(bounds, dtype=np.int64)
        self.lengths = np.diff(self.bounds)
        self.blocks = self.lengths.size
        self.c = int(self.lengths.max() - 1).bit_length()
        self.low = (1 << self.c) - 1
        self.levels = np.arange(self.c + 1, dtype=np.int64)
        # Blocks of exactly 2**c bits (except maybe the last) put every position at its own virtual position.
        self.direct = bool(np.array_equal(self.bounds[:-1], np.arange(self.blocks, dtype=np.int64) << self.c))
        sizes = [self.blocks << (self.c - t) for t in range(self.c + 1)]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.alice_top = None               # Alice's block parities, from the first exchange
        self.top = None                     # Bob's block parities while there is no tree
        self.tree = self.alice = None
        self.started = False
        self.fresh = False                  # searches may move without asking (new searches or new parities)
        self.t = np.zeros(0, dtype=np.int64)
        self.g = np.zeros(0, dtype=np.int64)

    # geometry

    def virtual(self, p):
        if self.direct:
            return p
        block = np.searchsorted(self.bounds, p, side="right") - 1
        return (block << self.c) + p - self.bounds[block]

    def ranges(self, t, g):
        """Positions ``start, end`` in the pass of nodes ``(t, g)`` (clipped to their block)."""
        first = g << t
        block = first >> self.c
        start = self.bounds[block] + (first & self.low)
        return start, np.minimum(start + (np.int64(1) << t), self.bounds[block + 1])

    def block_of(self, x):
        """Block of key bits ``x`` (for the top-level parities kept before the tree exists)."""
        if self.order.split and self.blocks == 2:
            return self.order.half_of(x).astype(np.int64)
        if self.order.split:
            return np.zeros(x.size, dtype=np.int64)
        return np.searchsorted(self.bounds, self.order.positions(x), side="right") - 1

    # Bob's parities

    def start_top(self, key, packed):
        """Bob's block parities at the start of the pass; passes with a permutation get their whole tree."""
        if self.order.split:
            if self.blocks == 2:
                ones = _packed_parity(packed, self.order.mask_packed)
                self.top = np.array([ones ^ _packed_parity(packed), ones], dtype=np.uint8)
            else:
                self.top = np.array([_packed_parity(packed)], dtype=np.uint8)
        else:
            self.build_tree(key)
        self.started = True

    def build_tree(self, key):
        bits = key if self.order.identity else key[self.order.perm]
        total = int(self.offsets[-1])
        self.tree = np.zeros(total, dtype=np.uint8)
        leaves = self.tree[:self.offsets[1]]
        if self.direct:
            leaves[:bits.size] = bits
        else:
            leaves[self.virtual(np.arange(bits.size, dtype=np.int64))] = bits
        for t in range(1, self.c + 1):
            below = self.tree[self.offsets[t - 1]:self.offsets[t]]
            np.bitwise_xor(below[0::2], below[1::2], out=self.tree[self.offsets[t]:self.offsets[t + 1]])
        self.alice = np.zeros(total, dtype=np.uint8)
        top = slice(self.offsets[self.c], self.offsets[self.c + 1])
        self.alice[top] = 2 | self.alice_top
        if self.top is not None and not np.array_equal(self.top, self.tree[top]):
            raise AssertionError("Bob's block parities disagree with his tree")   # a bug, never the peer's doing
        self.top = None

    # searches

    def odd_blocks(self):
        top = self.tree[self.offsets[self.c]:] if self.tree is not None else self.top
        return np.flatnonzero(top ^ self.alice_top)

    def add(self, t, g):
        self.t = np.concatenate([self.t, t])
        self.g = np.concatenate([self.g, g])
        self.fresh = True

    def normalize(self):
        """Merge searches at the same node; hold back any search whose node contains another search's node.

        Searches in different blocks, or in disjoint nodes of one block, stay disjoint as they descend, so this is
        needed only after searches are added.
        """
        if self.t.size < 2:
            return
        # Only searches in one block can coincide or nest; nearly always every search has a block of its own.
        blocks = self.g >> (self.c - self.t)
        ordered = np.sort(blocks)
        if not (ordered[1:] == ordered[:-1]).any():
            return
        order = np.argsort(blocks, kind="stable")
        ordered = blocks[order]
        same = ordered[1:] == ordered[:-1]
        shared = np.zeros(blocks.size, dtype=bool)
        shared[order[1:][same]] = True
        shared[order[:-1][same]] = True
        t, g = self.t[shared], self.g[shared]
        ids = self.offsets[t] + g
        ids, first = np.unique(ids, return_index=True)
        t, g = t[first], g[first]
        ancestors = []
        for up in range(1, self.c + 1):
            below = t + up <= self.c
            if not below.any():
                break
            ancestors.append(self.offsets[t[below] + up] + (g[below] >> up))
        if ancestors:
            ancestors = _distinct(np.concatenate(ancestors))
            at = np.minimum(np.searchsorted(ancestors, ids), ancestors.size - 1)
            keep = ancestors[at] != ids
            t, g = t[keep], g[keep]
        self.t = np.concatenate([self.t[~shared], t])
        self.g = np.concatenate([self.g[~shared], g])

    def update(self, x, key):
        """Account for the flipped key bits ``x`` (distinct, already flipped in ``key``).

        Bob's parities change on the path from every flipped bit to its block; searches whose node became even are
        dropped (the correction inside came from another search); and every known node that became odd is searched,
        the smallest above each flipped bit (the larger ones contain it and wait for it).
        """
        if self.tree is None:
            blocks = self.block_of(x)
            np.bitwise_xor.at(self.top, blocks, 1)
            blocks = _distinct(blocks)
            odd = blocks[(self.top[blocks] ^ self.alice_top[blocks]).view(bool)]
            if odd.size:
                self.build_tree(key)
                self.add(np.full(odd.size, self.c, dtype=np.int64), odd)
            return
        v = self.order.positions(x)
        if not self.direct:
            v = self.virtual(v)
        g = v[None, :] >> self.levels[:, None]
        ids = self.offsets[:-1, None] + g
        if ids.size <= 256:
            np.bitwise_xor.at(self.tree, ids.ravel(), 1)
        else:
            # Sorted bits give sorted ids level by level, and the levels lie in increasing ranges of the flat array.
            order = np.argsort(v)
            g, ids = g[:, order], ids[:, order]
            self.tree[_odd_runs(ids.ravel())] ^= 1
        if self.t.size:
            nodes = self.offsets[self.t] + self.g
            odd = ((self.alice[nodes] ^ self.tree[nodes]) & 1).view(bool)
            self.t, self.g = self.t[odd], self.g[odd]
        alice = self.alice[ids]
        odd = ((alice >> 1) & (alice ^ self.tree[ids])).view(bool)
        hit = np.flatnonzero(odd.any(axis=0))
        if hit.size:
            lowest = odd[:, hit].argmax(axis=0)
            self.add(lowest, g[lowest, hit])
            self.normalize()

    def descend(self):
        """Walk every search down through children whose parity Alice's known parities give, without asking.

        Returns the key bits found wrong: searches that reached a single bit (they are removed).
        """
        self.fresh = False
        t, g = self.t, self.g
        offsets, alice, tree, lengths, c, low = self.offsets, self.alice, self.tree, self.lengths, self.c, self.low
        moving = np.flatnonzero(t)
        while moving.size:
            tm, gm = t[moving], g[moving]
            below = tm - 1
            left = offsets[below] + (gm << 1)
            right = left + 1
            right_first = ((gm << 1) + 1) << below
            right_nonempty = (right_first & low) < lengths[right_first >> c]
            left_alice, right_alice = alice[left], alice[right]
            # A child's parity follows from the node's and the other child's; an empty right child leaves the left
            # with the node's parity. Searches with neither go no further without asking.
            movable = ((left_alice | right_alice) >> 1).view(bool) | ~right_nonempty
            if not movable.all():
                if not movable.any():
                    break
                moving, tm, gm = moving[movable], tm[movable], gm[movable]
                left, right, right_nonempty = left[movable], right[movable], right_nonempty[movable]
                left_alice, right_alice = left_alice[movable], right_alice[movable]
            parent = alice[offsets[tm] + gm] & 1
            left_parity = np.where(left_alice >> 1, left_alice, parent ^ (right_alice & right_nonempty)) & 1
            alice[left] = 2 | left_parity
            alice[right[right_nonempty]] = 2 | (parent ^ left_parity)[right_nonempty]
            go_right = left_parity == tree[left]
            t[moving] = tm - 1
            g[moving] = (gm << 1) + go_right
            moving = moving[tm > 1]
        found = t == 0
        if not found.any():
            return np.zeros(0, dtype=np.int64)
        v = g[found]
        positions = self.bounds[v >> c] + (v & low)
        self.t, self.g = t[~found], g[~found]
        return self.order.bits(positions)

    def questions(self):
        """Ranges of the left halves of all searches (all of them need Alice's parity after :meth:`descend`)."""
        return self.ranges(self.t - 1, self.g << 1)

    def answers(self, bits):
        """Record Alice's parities of the left halves asked by :meth:`questions` and step every search down."""
        t, g = self.t, self.g
        node = self.offsets[t] + g
        left = self.offsets[t - 1] + (g << 1)
        self.alice[left] = 2 | bits
        # The right half is never empty here, or the search would have moved without asking.
        self.alice[left + 1] = 2 | ((self.alice[node] ^ bits) & 1)
        self.t = t - 1
        self.g = (g << 1) + (bits == self.tree[left])
        self.fresh = True


class _Bob:
    """Bob's side of one reconciliation; :meth:`run` is the generator that :func:`cascade_bob` returns."""
    def __init__(self, key, seed, passes, sizes):
        self.key = key.copy()
        self.n = key.size
        self.pass_count = passes
        self.corrected = 0
        # With honest answers every flip corrects an error, so no bit is flipped twice; a second flip means the
        # answers contradict each other (a tampered channel), and without this check Bob would chase them forever.
        self.flipped = np.zeros(self.key.size, dtype=bool)
        self.leaked = 0
        self.round_trips = 0
        self.passes = []
        n = self.n
        for index in range(passes):
            order = _PassOrder(seed, n, index)
            if order.split:
                bounds = [0, order.n0, n] if 0 < order.n0 < n else [0, n]
            else:
                k = sizes[index]
                bounds = np.append(np.arange(0, n, k, dtype=np.int64), n)
            self.passes.append(_BobPass(order, bounds))

    def _exchange(self, passes, starts, ends):
        request = ParityRequest._trusted(self.n, passes, starts, ends)
        reply = yield request
        if not isinstance(reply, ParityReply):
            raise ValueError(f"Bob expects a ParityReply, not {type(reply).__name__}")
        if len(reply) != len(request):
            raise ValueError(f"the reply holds {len(reply)} parities for a request of {len(request)}")
        self.round_trips += 1
        self.leaked += len(reply)
        return reply.parities

    def run(self):
        # Exchange 1: the block parities of every pass. In passes after the first the last block is left out: the
        # parity of the whole key (the XOR of the first pass's blocks) gives it.
        pass_ids, starts, ends = [], [], []
        for bob_pass in self.passes:
            asked = bob_pass.blocks if bob_pass.index == 0 else bob_pass.blocks - 1
            pass_ids.append(np.full(asked, bob_pass.index, dtype=np.int64))
            starts.append(bob_pass.bounds[:asked])
            ends.append(bob_pass.bounds[1:asked + 1])
        bits = yield from self._exchange(np.concatenate(pass_ids), np.concatenate(starts), np.concatenate(ends))
        at = 0
        total = None
        for bob_pass in self.passes:
            if bob_pass.index == 0:
                bob_pass.alice_top = bits[:bob_pass.blocks].copy()
                total = int(np.bitwise_xor.reduce(bob_pass.alice_top))
            else:
                asked = bits[at:at + bob_pass.blocks - 1]
                last = total ^ int(np.bitwise_xor.reduce(asked, initial=0))
                bob_pass.alice_top = np.append(asked, np.uint8(last)).astype(np.uint8)
            at += bob_pass.blocks if bob_pass.index == 0 else bob_pass.blocks - 1

        waiting = list(self.passes)
        while True:
            self._settle()
            # A pass starts once no search of the earlier passes is left: starting it earlier would save round trips
            # but find errors by bisecting its large blocks that the cascade finds cheaper (measured: more leak).
            while waiting and not any(p.t.size for p in self.passes):
                self._start(waiting.pop(0))
                self._settle()
            if not any(p.t.size for p in self.passes):
                break
            asking = [p for p in self.passes if p.t.size]
            questions = [p.questions() for p in asking]
            pass_ids = np.concatenate([np.full(p.t.size, p.index, dtype=np.int64) for p in asking])
            bits = yield from self._exchange(pass_ids, np.concatenate([q[0] for q in questions]),
                                             np.concatenate([q[1] for q in questions]))
            at = 0
            for p in asking:
                count = p.t.size
                p.answers(bits[at:at + count])
                at += count
        return CascadeResult(key=self.key, leaked_bits=self.leaked, round_trips=self.round_trips,
                             corrected=self.corrected, passes=self.pass_count)

    def _start(self, bob_pass):
        packed = np.packbits(self.key, bitorder="little") if bob_pass.order.split else None
        bob_pass.start_top(self.key, packed)
        odd = bob_pass.odd_blocks()
        if odd.size:
            if bob_pass.tree is None:
                bob_pass.build_tree(self.key)
            bob_pass.add(np.full(odd.size, bob_pass.c, dtype=np.int64), odd)

    def _settle(self):
        """Walk, correct and cascade until every search needs a parity from Alice (or none is left)."""
        started = [p for p in self.passes if p.started]
        while True:
            found = [bob_pass.descend() for bob_pass in started if bob_pass.fresh]
            flips = _distinct(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)
            if not flips.size:
                return
            if self.flipped[flips].any():
                raise ValueError("Alice's parities contradict each other: a bit would be corrected twice")
            self.flipped[flips] = True
            self.key[flips] ^= 1
            self.corrected += flips.size
            for bob_pass in started:
                bob_pass.update(flips, self.key)


def cascade_bob(key, qber, *, shuffle_seed, passes=DEFAULT_PASSES, block_sizes=None):
    """Bob's side of Cascade, as a generator: it yields requests, is sent replies, and returns the result.

    ``request = next(gen)``, then ``request = gen.send(alice_reply)`` until :class:`StopIteration`, whose ``value``
    is the :class:`CascadeResult`. Nothing here does I/O; the caller carries the messages (encoded or not).

    Parameters
    ----------
    key : sequence of 0 and 1
        Bob's key, ``n`` bits.
    qber : float
        Estimated error rate, in [0, 0.5); it only sets the block sizes.
    shuffle_seed : bytes
        Public seed of the pass orders, at least 16 bytes, drawn by Bob from the OS and sent to Alice.
    passes : int
        Number of passes, 1 to 255 (default :data:`DEFAULT_PASSES`). Passes 4 and later are random-half checks.
    block_sizes : sequence of int, optional
        Block sizes of the first passes (at most three), replacing those of :func:`block_sizes` (for the paper's
        option (8): ``block_sizes=block_sizes(qber, n, schedule="option8")``).

    Raises
    ------
    ValueError
        At the call, if an argument is wrong; later, if a reply does not fit its request.
    """
    bits = _check_key(key, "key")
    qber = _check_qber(qber)
    seed = _check_seed(shuffle_seed)
    if isinstance(passes, bool) or not isinstance(passes, numbers.Integral) or not 1 <= passes <= _MAX_PASSES:
        raise ValueError(f"passes must be an integer in [1, {_MAX_PASSES}], not {passes!r}")
    sizes = list(_schedule(qber, bits.size))
    if block_sizes is not None:
        chosen = list(block_sizes)
        if not 1 <= len(chosen) <= _FIRST_SPLIT_PASS:
            raise ValueError(f"block_sizes gives the sizes of passes 1 to {_FIRST_SPLIT_PASS}, not {chosen!r}")
        for size in chosen:
            if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
                raise ValueError(f"block sizes must be positive integers, not {size!r}")
        sizes[:len(chosen)] = [min(int(size), bits.size) for size in chosen]
    return _Bob(bits, seed, int(passes), sizes).run()


def reconcile(alice_key, bob_key, qber, *, shuffle_seed, **options):
    """Run both sides of Cascade in one process over a zero-latency channel; for tests and benchmarks.

    ``options`` go to :func:`cascade_bob`. Returns Bob's :class:`CascadeResult`.

    Raises
    ------
    ValueError
        If a key is not bits, the keys differ in length, or another argument is wrong.
    """
    alice = CascadeAlice(alice_key, shuffle_seed=shuffle_seed)
    bob_bits = _check_key(bob_key, "bob_key")
    if bob_bits.size != alice.key_length:
        raise ValueError(f"the keys must have one length, not {alice.key_length} (Alice) and {bob_bits.size} (Bob)")
    bob = cascade_bob(bob_bits, qber, shuffle_seed=shuffle_seed, **options)
    try:
        request = next(bob)
        while True:
            request = bob.send(alice.answer(request))
    except StopIteration as stop:
        return stop.value
