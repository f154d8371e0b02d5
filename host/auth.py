"""Wegman-Carter authentication of the classical channel, with a recycled hash key and one-time-pad tags.

Everything Alice and Bob say to each other is public, but it must be authentic: a man in the middle who can
change the sifting, estimation or reconciliation messages breaks QKD whatever the photons do. The tags here are
information-theoretically secure, as the rest of the protocol is: they rest on a key shared in advance (a
pre-shared secret at first, then part of each distilled key) and on no computational assumption.

Construction
------------
Field: the integers modulo the Mersenne prime ``p = 2**127 - 1``. Its elements fit in 16 bytes, so a tag costs
128 bits of pad, and with up to 64 GiB under one tag the forgery probability stays below ``2**-94`` (below).

Hash: the data ``x`` is cut into 15-byte chunks (the last one may be shorter); a chunk of ``b`` bytes is read as a
little-endian integer ``d`` and becomes the coefficient ``c = d + 2**(8*b)`` (a 1 bit just above the chunk, as in
Poly1305), so every coefficient lies in ``[2**(8*b), 2**(8*b + 1))``: nonzero, below ``p``, and telling chunks of
different lengths apart. For ``L`` chunks and a key ``k`` in ``Z_p``::

    h_k(x) = c_1 k**L + c_2 k**(L-1) + ... + c_L k   (mod p)

The family is epsilon-almost-Delta-universal with ``epsilon = L/p``, ``L`` the number of chunks of the longer
input: for ``x != x'`` and any ``delta``, ``h_k(x) - h_k(x') - delta`` is a polynomial in ``k`` of degree at most
``L`` that is not zero (if ``x`` has more chunks, its leading coefficient ``c_1`` is not cancelled; if both have
``L`` chunks, the chunk encoding is injective and some coefficient of ``k**j``, ``j >= 1``, differs), so at most
``L`` keys out of ``p`` satisfy it. ``tests/host/test_auth.py`` counts this exhaustively on a 13-bit field.

Hash key: a pair ``(k, b)`` of elements of ``Z_p``. ``x -> h_k(x) + b`` is epsilon-almost strongly universal_2
(ASU_2): for every ``x`` and ``t``, ``Pr[h_k(x) + b = t] = 1/p`` through ``b``, and for ``x' != x``,
``Pr[h_k(x') + b = t' | h_k(x) + b = t] = Pr[h_k(x') - h_k(x) = t' - t] <= epsilon``.

Spans and tags: the messages of a direction are numbered from 0 in a session, and each is sent *tagged* or
*untagged*. A tagged message authenticates itself and every untagged one of its direction since the previous
tag: its *span*. The tag over a span of messages ``j..i`` is ``t = (h_k(a_j | ... | a_i) + b + r) mod p``, where
``r`` is fresh one-time pad (the Wegman-Carter construction; Wegman and Carter, JCSS 22, 1981) and the
authenticated data of message ``n`` is::

    len(label) (1 byte) | label (UTF-8, e.g. "alice->bob") | flag (1 byte) | n (8 bytes) | len(payload) (8 bytes)
        | payload

(integers little-endian; the flag is ``0xA5`` for tagged, ``0x5A`` for untagged). Each ``a_n`` says how long it is, so the
concatenation of a span tells its messages apart, and two different spans are two different inputs of the hash.
Because the direction, the sequence numbers, the flags and the lengths are authenticated and each tag has its own
``r``, a message replayed, reordered, reflected to its sender, cut short, extended, dropped or slipped into a span
fails verification, at the latest at the span's tag. A frame on the wire is ``flag (1 byte) | n (8 bytes) |
payload``, followed by the tag (16 bytes, little-endian) if it is tagged.

A receiver acts on an untagged message before its tag arrives, so a protocol must release nothing that depends
on one before the tag: :attr:`Authenticator.unverified` counts them. A receiver also says, message by message,
whether it accepts one untagged (:meth:`Authenticator.open`): a frame that comes untagged where a tag is due fails
at once, or a man in the middle could strip a tag, rewrite the message and have it acted on. The protocol
(:mod:`qkdlink.host.protocol`) sends a block's messages untagged and ends the block with three tagged messages,
each sent only after the one before it checked out: Alice's close, Bob's close, Alice's confirmation. A side
keeps its key only when it knows that both directions of the block were authentic (the "ping-pong" check of
Kiktenko et al., "Lightweight authentication for quantum key distribution", IEEE TIT 66, 2020): what a man in the
middle changes in between can make the block fail, but never make either side keep a key (one who stops the last
message leaves only its sender with a key, which the nodes' two-phase commit settles). Messages outside blocks
(the handshake's confirmation, the nodes' commits and key management) are tagged one by one and accepted only
tagged; the handshake's hellos are checked by its confirmation (:mod:`qkdlink.host.channel`).

Key recycling: the hash key ``(k, b)`` is used for many tags; only each tag's ``r`` is used once. Portmann ("Key
recycling in authentication", IEEE Trans. Inf. Theory 60(7), 2014; arXiv:1202.1229) showed, in a composable
framework, that Wegman and Carter's informal argument (the pad hides the hash function) is not enough by itself,
because an adversary learns whether a forgery was accepted, but that the scheme is still secure when the function
is chosen from an epsilon-ASU_2 family: each round adds at most ``epsilon`` to the error, so ``N`` tagged spans are
authenticated with error at most the sum of their ``epsilon``s, and the hash key can be reused for the next round.
The paper states this with the pad XORed onto bit strings; here it is added in ``Z_p``, which changes nothing the
argument uses (a uniform pad makes the tag uniform and independent of the hash). The paper's stronger result
(recycling the key for any task) assumes the receiver knows when a message should arrive, which the sequence
numbers provide; we need only the first, as the hash key serves nothing but authentication. We also take a fresh
hash key at the start of every session and every ``rekey_interval`` tags, so also after every failure, since
a failed verification ends the session.

Forgery probability, per tag: an adversary who has seen the genuine spans and tags and makes a receiver accept a
span that differs from the one sent succeeds with probability at most ``epsilon = L/p``, where ``L`` is the number
of chunks of the longer of the two spans' authenticated data (28 bytes per message and its payload); one who
sends a frame for a sequence number whose genuine tag he has not seen is accepted with probability ``1/p``. A
receiver fails a span of more than ``max_span`` authenticated bytes (:data:`MAX_SPAN`, 64 GiB) and a sender tags
before its span would reach half of that, so every tag holds ``epsilon <= 2**-94.9`` whatever the adversary
sends. Since the adversary chooses the length of what he substitutes, that cap is the term to add up: a session
of ``N`` tags is authenticated except with probability at most ``N * 2**-94.9``. (Against an adversary who only
alters bits in place, the genuine span's length bounds it: ``2**-120.9`` for a 1 kB message, ``2**-110.9`` for a
1 MiB span; :func:`forgery_probability`.)

Pad cost: every tag takes 16 bytes (128 bits: a 127-bit element of ``Z_p``) of its direction's pad stream, and
every new hash key 32 bytes, however many messages the tag covers; both the sender and the receiver take them,
each from its own copy of the stream, in the same order: the hash key when a span that is due one starts, the
pad element at its tag. Elements are drawn by rejection, exactly uniform: 16 bytes, the top bit cleared, and drawn
again (another 16 bytes) in the one case, of probability ``2**-127``, that the value is ``p``. So a direction that
sends ``n`` tags in a session takes ``16 n + 32 ceil(n / rekey_interval)`` bytes.

Two pad streams per link, ``"alice->bob"`` and ``"bob->alice"`` (:data:`STREAMS`): a stream authenticates the
messages of its direction, so the two sides consume each stream's bits in the same order. A pad source is anything
with ``take(stream, nbytes) -> bytes``, which never hands a byte out twice; the TCP handshake, which puts both
sides at the same place of each stream after a crash, also needs ``position(stream)`` (bytes ever taken), and
:func:`refill` needs ``add(stream, data)``. :class:`PadPool` keeps a pad in memory (tests, the in-process demo);
:class:`StorePad` is the durable key store's reserve (:meth:`qkdlink.host.keystore.KeyStore.take_auth_key`).
After each block both sides move part of the fresh key into the streams with :func:`refill`.
"""

import hmac
import math
import struct
import threading

from .channel import AuthenticationFailed, ChannelClosed
from .keystore import KeyStoreEmpty


__all__ = ["Authenticator", "PadPool", "StorePad", "PadExhausted", "AuthenticationFailed",
           "STREAMS", "ROLES", "PRIME", "TAG_BYTES", "HASH_KEY_BYTES", "REKEY_INTERVAL", "MAX_SPAN",
           "UNTAGGED", "TAGGED", "streams_for", "PolyHash", "poly_hash", "forgery_probability", "pad_cost",
           "split_key", "refill", "skip_to"]


PRIME = (1 << 127) - 1              # the field Z_p of the hash and the tags
CHUNK_BYTES = 15                    # bytes of data per coefficient: 2**(8*15 + 1) <= p
ELEMENT_BYTES = 16                  # pad bytes per drawn element of Z_p (127 bits used)
TAG_BYTES = 16                      # a tag on the wire: an element of Z_p, little-endian
HASH_KEY_BYTES = 2 * ELEMENT_BYTES  # (k, b)
REKEY_INTERVAL = 1024               # tags per direction between fresh hash keys (0.2% more pad per tag)
MAX_SPAN = 1 << 36                  # authenticated bytes one tag may cover: the forgery bound stays below 2**-94
STREAMS = ("alice->bob", "bob->alice")
ROLES = ("alice", "bob")
UNTAGGED, TAGGED = 0x5A, 0xA5       # a frame's first byte: eight bits apart, so no flipped bit turns one into the other

_SEQUENCE = struct.Struct("<BQ")    # flag, sequence number
_HEADER = struct.Struct("<BQQ")     # flag, sequence number, payload length


class PadExhausted(ChannelClosed):
    """A pad stream holds fewer bytes than a tag needs: nothing was taken, and the session cannot go on."""

    fatal = True

    def __init__(self, message):
        super().__init__(message, kind="pad exhausted")


def streams_for(role):
    """``(send_stream, receive_stream)`` of ``role`` (``"alice"`` or ``"bob"``)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    return STREAMS if role == "alice" else STREAMS[::-1]


class PolyHash:
    """``h_key`` of the module docstring, computed as the data comes: :meth:`update` any number of times, then
    :meth:`value` is the hash of everything given, as if it had come in one piece.

    ``prime`` and ``chunk`` exist so that tests can check the universality bound exhaustively on a small field;
    ``2**(8*chunk + 1)`` must not exceed ``prime``.
    """

    def __init__(self, key, *, prime=PRIME, chunk=CHUNK_BYTES):
        if 1 << (8 * chunk + 1) > prime:
            raise ValueError(f"{chunk}-byte chunks do not fit below {prime}")
        self.key, self.prime, self.chunk = key, prime, chunk
        self.nbytes = 0
        self._acc = 0
        self._tail = b""            # the bytes of an unfinished chunk

    def update(self, data):
        data = memoryview(bytes(data))
        self.nbytes += len(data)
        if self._tail:
            fill = self.chunk - len(self._tail)
            self._tail += bytes(data[:fill])
            data = data[fill:]
            if len(self._tail) < self.chunk:
                return self
            self._absorb(self._tail)
            self._tail = b""
        full = len(data) - len(data) % self.chunk
        self._absorb(data[:full])
        self._tail = bytes(data[full:])
        return self

    def value(self):
        acc = self._acc
        if self._tail:
            acc = (acc + int.from_bytes(self._tail, "little") + (1 << 8 * len(self._tail))) * self.key % self.prime
        return acc

    def _absorb(self, data):
        """Fold whole chunks into the accumulator (Horner's rule)."""
        key, prime, chunk, marker = self.key, self.prime, self.chunk, 1 << (8 * self.chunk)
        from_bytes = int.from_bytes
        acc = self._acc
        for start in range(0, len(data), chunk):
            acc = (acc + from_bytes(data[start:start + chunk], "little") + marker) * key % prime
        self._acc = acc


def poly_hash(key, data, *, prime=PRIME, chunk=CHUNK_BYTES):
    """``h_key(data)``: the polynomial hash of the module docstring, an element of ``Z_prime``."""
    return PolyHash(key, prime=prime, chunk=chunk).update(data).value()


def _authenticated_size(label, payload):
    return 1 + len(label.encode()) + _HEADER.size + len(payload)


def forgery_probability(nbytes, *, messages=1, label="alice->bob"):
    """The bound ``epsilon`` on accepting a forged or altered span (module docstring) whose longer version holds
    ``messages`` messages of ``nbytes`` payload bytes in all."""
    overhead = len(label.encode()) + 1 + _HEADER.size
    return math.ceil((overhead * messages + nbytes) / CHUNK_BYTES) / PRIME


def pad_cost(tags, *, rekey_interval=REKEY_INTERVAL):
    """Pad bytes one direction takes for ``tags`` tags of a session (except with probability about
    ``tags * 2**-127``, when a rejected draw takes 16 bytes more), however many messages they cover."""
    return ELEMENT_BYTES * tags + HASH_KEY_BYTES * math.ceil(tags / rekey_interval)


class _Span:
    """The messages of one direction since its last tag: the first one's number, their count, and their hash."""

    def __init__(self, first, hash_key):
        self.first = first
        self.messages = 0
        self.hash_key = hash_key
        self.hash = PolyHash(hash_key[0])


class Authenticator:
    """One side's Wegman-Carter authentication of one session of a link.

    :meth:`seal` makes the frame of each message this side sends, :meth:`open` checks and unwraps each frame the
    peer sent, in order. A tagged message authenticates itself and every untagged message of its direction since
    the previous tag (its *span*); :attr:`unverified` counts the peer's messages still waiting for their tag. The
    first failed check ends the session: the authenticator refuses any further use, and so does the endpoint that
    holds it. A session starts with fresh hash keys, taken from the pad at the first message of each direction.

    Parameters
    ----------
    pad
        The pad source: ``take(stream, nbytes) -> bytes`` (:class:`PadPool`, :class:`StorePad`).
    role : str
        ``"alice"`` or ``"bob"``: this side sends on its own stream and receives on the other.
    rekey_interval : int
        Tags per direction between fresh hash keys.
    max_span : int
        The most authenticated bytes (payloads and their 28-byte headers) one tag covers: a message that would
        take this side's span past half of it is tagged, so that no span of this side's reaches it, and a peer's
        span past it fails.

    Attributes
    ----------
    sent, received : int
        Messages sealed and opened: the sequence numbers of the next ones.
    tags_sent, tags_received : int
        Tags among them.
    pad_consumed : dict
        Pad bytes taken in this session, per stream.
    failure : AuthenticationFailed or PadExhausted or None
        What ended the session, if anything did.
    """

    OVERHEAD = _SEQUENCE.size + TAG_BYTES     # the most bytes a frame adds to its payload

    def __init__(self, pad, role, *, rekey_interval=REKEY_INTERVAL, max_span=MAX_SPAN):
        self.send_stream, self.receive_stream = streams_for(role)
        if not isinstance(rekey_interval, int) or rekey_interval < 1:
            raise ValueError(f"rekey interval must be a positive integer, not {rekey_interval!r}")
        self.pad = pad
        self.role = role
        self.rekey_interval = rekey_interval
        self.max_span = max_span
        self.sent = 0
        self.received = 0
        self.tags_sent = 0
        self.tags_received = 0
        self.pad_consumed = {stream: 0 for stream in STREAMS}
        self.failure = None
        self._spans = dict.fromkeys(STREAMS)
        self._hash_keys = {}

    def __repr__(self):
        return (f"<Authenticator {self.role} sent={self.sent} received={self.received} "
                f"unverified={self.unverified} {'failed' if self.failure else 'ok'}>")

    @property
    def unverified(self):
        """The peer's messages opened but not yet covered by a tag."""
        span = self._spans[self.receive_stream]
        return 0 if span is None else span.messages

    def seal(self, payload, *, tagged=True):
        """The frame that carries ``payload`` as this side's next message; untagged, it is authenticated by the
        next tagged one."""
        self._check_usable()
        payload = bytes(payload)
        stream = self.send_stream
        size = _authenticated_size(stream, payload)
        if size > self.max_span // 2:
            raise ValueError(f"a {len(payload)}-byte message is more than half the {self.max_span} bytes a tag "
                             f"may cover")
        span = self._spans[stream]
        if span is not None and span.hash.nbytes + size > self.max_span // 2:
            tagged = True
        flag = TAGGED if tagged else UNTAGGED
        self._absorb(stream, flag, self.sent, payload)
        frame = _SEQUENCE.pack(flag, self.sent) + payload
        if tagged:
            frame += self._tag(stream)
            self.tags_sent += 1
        self.sent += 1
        return frame

    def open(self, frame, *, untagged=False):
        """The payload of ``frame``, the peer's next message; :class:`AuthenticationFailed` unless it is genuine.

        A frame must be tagged unless ``untagged`` says that this message may wait for a later tag (see
        :attr:`unverified`): otherwise a man in the middle could strip a tag, rewrite the message, and have it
        acted on before anything is checked."""
        self._check_usable()
        frame = bytes(frame)
        if len(frame) < _SEQUENCE.size:
            self._fail("truncated", f"frame of {len(frame)} bytes, shorter than its flag and sequence number "
                                    f"({_SEQUENCE.size} bytes)")
        flag, sequence = _SEQUENCE.unpack_from(frame)
        if flag not in (UNTAGGED, TAGGED):
            self._fail("malformed", f"frame flag {flag:#04x} is neither untagged ({UNTAGGED:#04x}) nor tagged "
                                    f"({TAGGED:#04x})")
        if flag == UNTAGGED and not untagged:
            self._fail("untagged", f"message {sequence} came untagged where a tagged one was due (its tag stripped, "
                                   f"or the peer out of step)")
        if flag == TAGGED and len(frame) < _SEQUENCE.size + TAG_BYTES:
            self._fail("truncated", f"tagged frame of {len(frame)} bytes, shorter than a flag, a sequence number "
                                    f"and a tag ({_SEQUENCE.size + TAG_BYTES} bytes)")
        if sequence != self.received:
            self._fail("sequence", f"message number {sequence} where {self.received} was expected (replayed, "
                                   f"reordered or dropped)")
        payload = frame[_SEQUENCE.size:-TAG_BYTES] if flag == TAGGED else frame[_SEQUENCE.size:]
        stream = self.receive_stream
        span = self._absorb(stream, flag, sequence, payload)
        if span.hash.nbytes > self.max_span:
            self._fail("oversize", f"messages {span.first}-{sequence} hold {span.hash.nbytes} bytes without a tag, "
                                   f"more than the {self.max_span} one tag may cover")
        if flag == TAGGED:
            if not hmac.compare_digest(self._tag(stream), frame[-TAG_BYTES:]):
                covered = (f"message {sequence} ({len(payload)} bytes) has" if span.first == sequence else
                           f"messages {span.first}-{sequence} ({span.hash.nbytes} bytes with their headers) have")
                self._fail("tag", f"{covered} a wrong tag: forged, altered, reflected, or the pads are out of step")
            self.tags_received += 1
        self.received += 1
        return payload

    def expect_verified(self, what="the last message"):
        """Raise :class:`AuthenticationFailed`, ending the session, if any message of the peer waits for its tag:
        for a message that was opened untagged before its kind was known, when that kind must come tagged."""
        self._check_usable()
        span = self._spans[self.receive_stream]
        if span is not None:
            last = self.received - 1
            waiting = f"message {last} is" if span.first == last else f"messages {span.first}-{last} are"
            self._fail("untagged", f"{what} came untagged where a tagged one was due (its tag stripped, or the "
                                   f"peer out of step): {waiting} unverified")

    def _absorb(self, stream, flag, sequence, payload):
        """Add a message to its direction's span, starting the span (and drawing a fresh hash key when the span's
        tag is due one) if it is the first."""
        span = self._spans[stream]
        if span is None:
            tags = self.tags_sent if stream == self.send_stream else self.tags_received
            if tags % self.rekey_interval == 0:
                self._hash_keys[stream] = (self._draw(stream), self._draw(stream))
            span = self._spans[stream] = _Span(sequence, self._hash_keys[stream])
        label = stream.encode()
        span.hash.update(bytes([len(label)]) + label + _HEADER.pack(flag, sequence, len(payload)))
        span.hash.update(payload)
        span.messages += 1
        return span

    def _tag(self, stream):
        """Close ``stream``'s span: its tag, with fresh pad."""
        span, self._spans[stream] = self._spans[stream], None
        r = self._draw(stream)
        return ((span.hash.value() + span.hash_key[1] + r) % PRIME).to_bytes(TAG_BYTES, "little")

    def _draw(self, stream):
        """A uniform element of Z_p from the pad, by rejection (see the module docstring)."""
        while True:
            try:
                data = self.pad.take(stream, ELEMENT_BYTES)
            except PadExhausted as error:
                self.failure = error
                raise
            if len(data) != ELEMENT_BYTES:
                raise RuntimeError(f"the pad gave {len(data)} bytes of {stream!r} for {ELEMENT_BYTES}")
            self.pad_consumed[stream] += ELEMENT_BYTES
            value = int.from_bytes(data, "little") & PRIME
            if value != PRIME:
                return value

    def _check_usable(self):
        if self.failure is not None:
            raise AuthenticationFailed(f"{self.role}: the session ended ({self.failure}); no further message is "
                                       f"authenticated", kind=self.failure.kind)

    def _fail(self, kind, reason):
        self.failure = AuthenticationFailed(f"{self.role}: authentication failed on {self.receive_stream}: "
                                            f"{reason}", kind=kind)
        raise self.failure


class PadPool:
    """Pad streams kept in memory: for tests and the in-process demo (a real node keeps them in its key store).

    A byte is handed out once: :meth:`take` overwrites what it hands out with zeros in the pool.

    Parameters
    ----------
    streams : dict, optional
        Initial contents, stream name to bytes.
    """

    def __init__(self, streams=None):
        self._data = {}
        self._offset = {}
        self._position = {}
        self._lock = threading.Lock()
        for stream, data in (streams or {}).items():
            self.add(stream, data)

    @classmethod
    def from_secret(cls, secret):
        """A pool whose two streams are the two halves of a pre-shared ``secret`` (:func:`split_key`)."""
        half = len(secret) // 2
        streams, _ = split_key(secret, half)
        return cls(streams)

    def __repr__(self):
        return f"<PadPool {', '.join(f'{s}: {self.available(s)} bytes' for s in sorted(self._data))}>"

    def add(self, stream, data):
        """Append ``data`` to ``stream``."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"pad must be bytes, not {type(data).__name__}")
        with self._lock:
            self._data.setdefault(stream, bytearray()).extend(data)
            self._offset.setdefault(stream, 0)
            self._position.setdefault(stream, 0)

    def take(self, stream, nbytes):
        """The next ``nbytes`` of ``stream``, erased from the pool; :class:`PadExhausted` (nothing taken) if it
        holds fewer."""
        if not isinstance(nbytes, int) or nbytes < 0:
            raise ValueError(f"byte count must be a non-negative integer, not {nbytes!r}")
        with self._lock:
            available = self._available(stream)
            if available < nbytes:
                raise PadExhausted(f"the authentication pad {stream!r} holds {available} bytes, {nbytes} needed; "
                                   f"refill it from the distilled key or a pre-shared secret")
            data, start = self._data[stream], self._offset[stream]
            taken = bytes(data[start:start + nbytes])
            data[start:start + nbytes] = bytes(nbytes)
            self._offset[stream] += nbytes
            self._position[stream] += nbytes
            if self._offset[stream] > len(data) // 2:       # drop the erased front now and then
                del data[:self._offset[stream]]
                self._offset[stream] = 0
            return taken

    def available(self, stream):
        """Bytes left in ``stream``."""
        with self._lock:
            return self._available(stream)

    def position(self, stream):
        """Bytes ever taken from ``stream``: where the next :meth:`take` starts."""
        with self._lock:
            return self._position.get(stream, 0)

    def _available(self, stream):
        return len(self._data.get(stream, b"")) - self._offset.get(stream, 0)


class StorePad:
    """The authentication key reserve of a :class:`~qkdlink.host.keystore.KeyStore` as a pad source."""

    def __init__(self, store):
        self.store = store

    def __repr__(self):
        return f"<StorePad {self.store!r}>"

    def add(self, stream, data):
        self.store.add_auth_key(stream, data)

    def take(self, stream, nbytes):
        try:
            return self.store.take_auth_key(stream, nbytes)
        except KeyStoreEmpty as error:
            raise PadExhausted(str(error)) from None

    def available(self, stream):
        return self.store.auth_available(stream)

    def position(self, stream):
        return self.store.accounting()["auth"].get(stream, {}).get("consumed", 0)


def skip_to(pad, stream, position, *, max_skip):
    """Discard pad bytes of ``stream`` up to ``position`` (bytes ever taken), as the peer's side has; returns the
    number of bytes discarded (0 if this side is there or ahead already).

    Raises
    ------
    ValueError
        More than ``max_skip`` bytes would have to go: the two sides' pads diverged or the request is forged,
        and discarding would only waste key.
    """
    skip = position - pad.position(stream)
    if skip > max_skip:
        raise ValueError(f"the peer is {skip} bytes ahead on {stream!r}, more than the {max_skip} that lost "
                         f"messages can explain")
    if skip > 0:
        pad.take(stream, skip)
    return max(skip, 0)


def split_key(key, auth_bytes):
    """Split a distilled (or pre-shared) key into pad for each stream and the rest, the same way on both sides.

    The first ``auth_bytes`` bytes go to ``"alice->bob"``, the next to ``"bob->alice"``, the rest is returned for
    the key store. ``auth_bytes`` is one count for both streams or a mapping from stream to count; both sides must
    use the same counts (Alice decides and says so in an authenticated message).

    Returns
    -------
    (dict, bytes)
        Stream to pad bytes, and the remaining key.
    """
    if isinstance(auth_bytes, int):
        auth_bytes = dict.fromkeys(STREAMS, auth_bytes)
    if set(auth_bytes) - set(STREAMS):
        raise ValueError(f"unknown streams {sorted(set(auth_bytes) - set(STREAMS))}; the streams are {STREAMS}")
    counts = [auth_bytes.get(stream, 0) for stream in STREAMS]
    if any(not isinstance(count, int) or count < 0 for count in counts):
        raise ValueError(f"pad byte counts must be non-negative integers, not {auth_bytes!r}")
    key = bytes(key)
    if sum(counts) > len(key):
        raise ValueError(f"a {len(key)}-byte key cannot give {sum(counts)} bytes of authentication pad")
    streams, start = {}, 0
    for stream, count in zip(STREAMS, counts):
        streams[stream] = key[start:start + count]
        start += count
    return streams, key[start:]


def refill(pad, key, auth_bytes):
    """Add the first bytes of ``key`` to the pad streams as :func:`split_key` splits them; returns the rest."""
    streams, rest = split_key(key, auth_bytes)
    for stream, data in streams.items():
        if data:
            pad.add(stream, data)
    return rest
