"""Alice and Bob: one block of decoy-state BB84 post-processing, from detections to identical secret keys.

Each side is an object that knows only its own data and talks to the other only through a channel endpoint
(:mod:`qkdlink.host.channel`). A block runs:

1. ``block``     Alice -> Bob: the block's number and the pulses she sent.
2. ``detect``    Bob -> Alice: the slots where Bob registered a detection and his (squashed) basis for each, in
                 one or more batches (a board's frames as they complete), then ``detected``.
3. ``sift``      Alice -> Bob: her basis and the intensity she sent in each of those slots, batch by batch.
4. ``test``      Bob -> Alice: his bits of the matched X-basis detections (sacrificed for estimation).
5. ``estimate``  Alice -> Bob: the counts per intensity and the X-basis errors; or ``abort`` if no key can come
                 out of this block even with ideal error correction.
6. ``cascade*``  Bob asks, Alice answers: Cascade reconciliation of the Z-basis raw key (every parity counted).
7. ``verify``    Alice -> Bob: a universal hash of her key (log2(1/eps_cor) bits) and its seed; Bob answers.
8. ``amplify``   Alice -> Bob: the secret length from the finite-key bound and a fresh Toeplitz seed; both hash.
9. ``close``     Alice -> Bob: whether she has a key; then Bob -> Alice, once hers checked out: whether both have.
10. ``confirm``  Alice -> Bob, once Bob's close checked out: whether both keep the key.

Either side aborts the block with a reason (an ``abort`` message to the peer) when anything is off; no key is
released from an aborted block.

Authentication: every message before the closes goes untagged, and the three last ones are tagged
(:mod:`qkdlink.host.auth`): a tag covers every message its sender sent since its previous tag, so a block costs
three tags (two from Alice, one from Bob) however many sifting batches and Cascade round trips it takes. A side
acts on the peer's messages as they come, but each closing message goes out only after the one before it
checked out, so Alice keeps her key once Bob's close has checked out (his messages were authentic, and he found
hers so), and Bob keeps his once Alice's confirmation has (she found his so). A man in the middle who changes
anything in the block can make it fail, never make either side keep a key from it; one who only stops the
confirmation leaves Alice with a key that Bob does not keep, which a caller must settle (the nodes' two-phase
commit does). A block that fails still ends with the closing messages while the channel works, so a tampered
message is reported as an authentication failure even when it broke the protocol first, and the next block
starts with nothing of this one left unverified.
"""

import math
import time
from dataclasses import dataclass, field

import numpy as np

from .bits import pack_bits, unpack_bits
from .cascade import CascadeAlice, ParityReply, ParityRequest, cascade_bob
from .channel import ChannelClosed
from .finite_key import BlockCounts, DecoySettings, binary_entropy, secret_length
from .messages import Message, ProtocolError
from .sifting import NOT_SENT, sift, squash
from .toeplitz import toeplitz_hash


__all__ = ["ProtocolSettings", "BlockResult", "Alice", "Bob", "ChoiceMemory", "DetectionRecord", "SquashedDetections"]


@dataclass(frozen=True)
class ProtocolSettings:
    """What both sides agree on before a link starts.

    Attributes
    ----------
    decoy : DecoySettings
        Alice's intensities and their probabilities.
    eps_sec, eps_cor : float
        Secrecy and correctness parameters of the finite-key bound.
    expected_efficiency : float
        Reconciliation efficiency assumed when deciding, before reconciliation, whether a block can give any key.
    """
    decoy: DecoySettings
    eps_sec: float = 1e-10
    eps_cor: float = 1e-15
    expected_efficiency: float = 1.2

    @property
    def verification_bits(self):
        """Length of the verification hash: its collision probability 2^-t is at most eps_cor."""
        return math.ceil(-math.log2(self.eps_cor))


@dataclass
class BlockResult:
    """One side's outcome of one block: a key, or the reason there is none, and the block's figures."""
    block: int
    key: np.ndarray = None
    abort_reason: str = None
    figures: dict = field(default_factory=dict)

    @property
    def aborted(self):
        return self.key is None


class ChoiceMemory:
    """Alice's record of what she sent in each slot (on a board: the choice memory, read over the link).

    Parameters
    ----------
    slot : numpy.ndarray of int64
        Slots, ascending, for which choices are held.
    basis, bit, intensity : numpy.ndarray of uint8
        Alice's choices in those slots.
    """

    def __init__(self, slot, basis, bit, intensity):
        self.slot = np.asarray(slot, dtype=np.int64)
        self.basis = np.asarray(basis, dtype=np.uint8)
        self.bit = np.asarray(bit, dtype=np.uint8)
        self.intensity = np.asarray(intensity, dtype=np.uint8)
        self._answered = []

    def lookup(self, slots):
        """Alice's (basis, bit, intensity) in ``slots``; :class:`ProtocolError` for a slot she has no record of."""
        if slots.size == 0:
            return self.basis[:0], self.bit[:0], self.intensity[:0]
        index = np.minimum(np.searchsorted(self.slot, slots), max(self.slot.size - 1, 0))
        if self.slot.size == 0 or not np.array_equal(self.slot[index], slots):
            raise ProtocolError("Bob reported a detection in a slot Alice has no record of")
        return self.basis[index], self.bit[index], self.intensity[index]

    def answer(self, slots, bob_bases, frames=0):
        """Alice's answer to a batch of Bob's detections, in ``slots`` with his ``bob_bases``: her bases and
        intensities there. ``frames`` is the number of frames the batches so far cover completely (0 when the
        detections are not counted in frames); a board frees their choices. A board's choice memory offers the
        same calls, :meth:`answer` and :meth:`sifted`."""
        bases, bits, intensities = self.lookup(slots)
        self._answered.append((bob_bases, bits, bases, intensities))
        return bases, intensities

    def sifted(self):
        """Alice's :class:`~qkdlink.host.sifting.SiftedBlock` of every batch answered."""
        columns = [np.concatenate(column) for column in zip(*self._answered)] or [np.zeros(0, np.uint8)] * 4
        return sift(*columns)


@dataclass(frozen=True)
class DetectionRecord:
    """Bob's registered detections in a block: slots (ascending) and raw 4-bit detector patterns."""
    slot: np.ndarray
    pattern: np.ndarray

    def squash(self, entropy):
        """The :class:`SquashedDetections`, squashing multi-clicks with bits from ``entropy``."""
        pattern = np.asarray(self.pattern, dtype=np.uint8)
        bases, bits = squash(pattern, entropy.bits(2 * pattern.size).reshape(-1, 2))
        return SquashedDetections(np.asarray(self.slot, dtype=np.int64), bases, bits)


class SquashedDetections:
    """Bob's detections after squashing: slot, basis and bit of each, as his board's detection memory holds them.

    A board offers the same calls: :meth:`squash` (it has squashed already), :meth:`batches`, :meth:`answer` and
    :meth:`sifted`.
    """

    def __init__(self, slot, basis, bit):
        self.slot, self.basis, self.bit = slot, basis, bit
        self._answers = []

    def squash(self, entropy):
        return self

    def batches(self):
        """The detections to announce, in batches of ``(slots, bases, frames)``, ``frames`` being the number of
        frames the batches so far cover completely (0: not counted in frames): here one batch."""
        yield self.slot, self.basis, 0

    def answer(self, alice_bases, intensities):
        """Alice's answer to the last batch."""
        self._answers.append((alice_bases, intensities))

    def sifted(self):
        """Bob's :class:`~qkdlink.host.sifting.SiftedBlock` given Alice's answers."""
        alice_bases, intensities = ([np.concatenate(column) for column in zip(*self._answers)] or
                                    [np.zeros(0, np.uint8)] * 2)
        return sift(self.basis, self.bit, alice_bases, intensities)


def _counts(intensities, errors=None):
    """Per-intensity counts (and error counts) as tuples of three ints."""
    counts = tuple(int(c) for c in np.bincount(intensities, minlength=3)[:3])
    if errors is None:
        return counts
    return counts, tuple(int(c) for c in np.bincount(intensities, weights=errors, minlength=3)[:3])


# Cascade sizes its blocks from the QBER estimate, which must lie below 1/2; a block with a test-basis error
# rate that high has been aborted by the estimate already, so this only guards the arithmetic.
_CASCADE_QBER_LIMIT = 0.49


# What a field of the wrong type or size raises where the protocol uses it.
_DATA_ERRORS = (ValueError, TypeError, AttributeError, IndexError, KeyError, OverflowError)


class BlockAborted(ProtocolError):
    """Both sides learned together that the block failed (no abort message needs to go out)."""


class _Side:
    def __init__(self, endpoint, settings, entropy):
        self.endpoint = endpoint
        self.settings = settings
        self.entropy = entropy

    def _say(self, message):
        """Send a message of the block: untagged, the sender's next closing message authenticates it."""
        self.endpoint.send(message, tagged=False)

    def _hear(self, kind=None):
        """Receive a message of the block: untagged, the peer's next closing message authenticates it. The peer's
        close, where another message was due, ends the block: it is kept for :meth:`_peer_close`."""
        message = self.endpoint.receive(untagged=True)
        if message.kind == "close" and kind != "close":
            self._early_close = message
            raise ProtocolError(f"the peer closed the block where a {kind or 'block'} message was due")
        return message if kind is None else message.expect(kind)

    def _peer_close(self):
        """The peer's close, which must come tagged, and the aborts it sent before it."""
        if self._early_close is not None:
            close, self._early_close = self._early_close, None
            self.endpoint.expect_verified("the close message")
            return close, []
        return self.endpoint.skip_until("close")

    def _guarded(self, block, run):
        result = BlockResult(block)
        started = time.perf_counter()
        self._early_close = None
        try:
            try:
                run(result)
            except ChannelClosed:
                raise
            except (ProtocolError, *_DATA_ERRORS) as error:
                # These come from data the peer sent (counts, seeds, lengths that do not fit, a field of the wrong
                # type): the block is aborted like any other protocol violation.
                reason = (str(error) if isinstance(error, ProtocolError) else
                          f"invalid data from the peer: {error}" if isinstance(error, ValueError) else
                          f"invalid data from the peer: {type(error).__name__}: {error}")
                result.key, result.abort_reason = None, reason
                # The peer is waiting for a message from us unless it aborted first or knows already.
                if not isinstance(error, BlockAborted) and not reason.startswith("the peer aborted"):
                    self._say(Message("abort", {"reason": reason}))
            self._close(result)
        except ProtocolError as error:          # the channel failed, or the closing messages did
            reason = str(error)
            if result.abort_reason is not None:
                reason += f" (the block had failed already: {result.abort_reason})"
            result.key, result.abort_reason = None, reason
        result.figures["seconds"] = time.perf_counter() - started
        return result

    def _keep(self, result, keep, aborts):
        """Drop the key unless ``keep``; the reason from the peer's first abort message, if any."""
        if result.key is not None and not keep:
            result.key = None
            result.abort_reason = f"the peer aborted: {aborts[0]['reason']}" if aborts else "the peer has no key"

    def _finite_key(self, counts, leak, result):
        figures = secret_length(counts, self.settings.decoy, leak_ec=leak,
                                eps_sec=self.settings.eps_sec, eps_cor=self.settings.eps_cor)
        result.figures.update(finite_key=figures, leaked_bits=leak)
        return figures

    def _amplify(self, key, seed, length, result):
        final = toeplitz_hash(key, seed, length)
        result.key = final
        result.figures["secret_bits"] = length
        return final


class Alice(_Side):
    """Alice's side: she holds the choice memory and answers; she decides estimates and lengths.

    Parameters
    ----------
    endpoint : qkdlink.host.channel.Endpoint
    settings : ProtocolSettings
    entropy : OSEntropy or SimulatedEntropy
        Source of the verification and privacy-amplification seeds.
    """

    def run_block(self, block, pulses, choices):
        """Run one block; returns this side's :class:`BlockResult`."""
        return self._guarded(block, lambda result: self._run(block, pulses, choices, result))

    def _run(self, block, pulses, choices, result):
        self._say(Message("block", {"block": block, "pulses": pulses}))
        detections, last = 0, -1
        while (detect := self._hear()).kind != "detected":
            detect.expect("detect")
            slots = detect["slot"].astype(np.int64)
            bob_bases = detect["basis"].astype(np.uint8)
            if slots.size != bob_bases.size or (slots.size and (np.any(np.diff(slots) <= 0) or slots[0] <= last)):
                raise ProtocolError("Bob's detections are not one basis per slot in ascending slot order")
            if np.any(bob_bases > 1):
                raise ProtocolError("Bob's detections carry a basis other than Z or X")
            frames = detect["frames"]
            if not isinstance(frames, int) or frames < 0:
                raise ProtocolError(f"Bob's count of complete frames is {frames!r}, not a non-negative integer")
            bases, intensities = choices.answer(slots, bob_bases, frames)
            self._say(Message("sift", {"basis": bases, "intensity": intensities}))
            detections += slots.size
            last = slots[-1] if slots.size else last
        sifted = choices.sifted()

        test = self._hear("test")["bits"].astype(np.uint8)
        if test.size != sifted.test.size:
            raise ProtocolError(f"Bob sent {test.size} test bits for {sifted.test.size} X-basis matches")
        n_x, m_x = _counts(sifted.test_intensity, test != sifted.test)
        counts = BlockCounts(n_z=_counts(sifted.key_intensity), n_x=n_x, m_x=m_x)
        qber_x = sum(m_x) / max(sum(n_x), 1)
        result.figures.update(pulses=pulses, detections=detections, counts=counts, qber_x=qber_x)
        # Before spending a reconciliation on it: could this block give any key at all?
        expected_leak = math.ceil(self.settings.expected_efficiency * sifted.key.size *
                                  binary_entropy(min(qber_x, 0.5)))
        estimate = secret_length(counts, self.settings.decoy, leak_ec=expected_leak,
                                 eps_sec=self.settings.eps_sec, eps_cor=self.settings.eps_cor)
        if estimate.length <= 0:
            raise ProtocolError(f"no key can be extracted: {estimate.abort_reason}")
        self._say(Message("estimate", {"n_z": np.array(counts.n_z, np.int64),
                                                "n_x": np.array(n_x, np.int64),
                                                "m_x": np.array(m_x, np.int64)}))

        key = sifted.key
        start = self._hear("cascade")
        cascade = CascadeAlice(key, shuffle_seed=start["shuffle_seed"])
        leak = 0
        while True:
            message = self._hear()
            if message.kind == "cascade_done":
                break
            try:
                reply = cascade.answer(ParityRequest.decode(message.expect("parity")["request"]))
            except ValueError as error:
                raise ProtocolError(f"malformed parity request: {error}") from None
            leak += len(reply)
            self._say(Message("parities", {"reply": reply.encode()}))
        corrected = message["corrected"]
        result.figures.update(qber_z=corrected / max(key.size, 1), round_trips=message["round_trips"])

        seed = self.entropy.bits(key.size + self.settings.verification_bits - 1)
        tag = toeplitz_hash(key, seed, self.settings.verification_bits)
        self._say(Message("verify", {"seed": pack_bits(seed), "tag": pack_bits(tag)}))
        if not self._hear("verified")["equal"]:
            raise BlockAborted("verification failed: the keys differ after reconciliation")

        figures = self._finite_key(counts, leak, result)
        if figures.length <= 0:
            raise ProtocolError(f"no key can be extracted: {figures.abort_reason}")
        if figures.length > key.size:
            raise ProtocolError(f"the finite-key bound gives {figures.length} bits from a {key.size}-bit key")
        seed = self.entropy.bits(key.size + figures.length - 1)
        self._say(Message("amplify", {"length": figures.length, "seed": pack_bits(seed)}))
        self._amplify(key, seed, figures.length, result)

    def _close(self, result):
        """Close the block: Alice's close, then (once Bob found it genuine) his; she confirms if it is genuine."""
        self.endpoint.send(Message("close", {"key": int(result.key is not None)}))
        close, aborts = self._peer_close()
        keep = result.key is not None and bool(close["key"])
        self.endpoint.send(Message("confirm", {"key": int(keep)}))
        self._keep(result, keep, aborts)


class Bob(_Side):
    """Bob's side: he squashes his clicks, asks Cascade's questions and checks every length Alice announces.

    Parameters
    ----------
    endpoint : qkdlink.host.channel.Endpoint
    settings : ProtocolSettings
    entropy : OSEntropy or SimulatedEntropy
        Source of the squashing bits and Cascade's public shuffle seed.
    """

    def run_block(self, block, detections):
        """Run one block; returns this side's :class:`BlockResult`."""
        return self._guarded(block, lambda result: self._run(block, detections, result))

    def _run(self, block, detections, result):
        announced = self._hear("block")
        if announced["block"] != block:
            raise ProtocolError(f"Alice started block {announced['block']}, Bob expected block {block}")
        squashed = detections.squash(self.entropy)
        count = 0
        for slots, bases, frames in squashed.batches():
            self._say(Message("detect", {"slot": np.asarray(slots, dtype=np.int64), "basis": bases,
                                                  "frames": frames}))
            answer = self._hear("sift")
            alice_bases = answer["basis"].astype(np.uint8)
            intensities = answer["intensity"].astype(np.uint8)
            if alice_bases.size != bases.size or intensities.size != bases.size or np.any(intensities > NOT_SENT):
                raise ProtocolError("Alice's sifting answer does not match Bob's detections")
            squashed.answer(alice_bases, intensities)
            count += bases.size
        self._say(Message("detected"))
        sifted = squashed.sifted()
        self._say(Message("test", {"bits": sifted.test}))

        estimate = self._hear("estimate")
        counts = BlockCounts(n_z=tuple(int(c) for c in estimate["n_z"]),
                             n_x=tuple(int(c) for c in estimate["n_x"]),
                             m_x=tuple(int(c) for c in estimate["m_x"]))
        if counts.n_z != _counts(sifted.key_intensity) or counts.n_x != _counts(sifted.test_intensity):
            raise ProtocolError("Alice's detection counts differ from Bob's")
        qber_x = sum(counts.m_x) / max(sum(counts.n_x), 1)
        result.figures.update(pulses=announced["pulses"], detections=count, counts=counts,
                              qber_x=qber_x)

        shuffle_seed = self.entropy.bytes(16)
        self._say(Message("cascade", {"shuffle_seed": shuffle_seed}))
        try:
            session = cascade_bob(sifted.key, min(qber_x, _CASCADE_QBER_LIMIT), shuffle_seed=shuffle_seed)
            request = next(session)
            while True:
                self._say(Message("parity", {"request": request.encode()}))
                reply = ParityReply.decode(self._hear("parities")["reply"])
                request = session.send(reply)
        except StopIteration as stop:
            cascade = stop.value
        except ValueError as error:
            # A malformed or inconsistent answer: the channel is not what it should be.
            raise ProtocolError(f"reconciliation failed: {error}") from None
        self._say(Message("cascade_done", {"corrected": cascade.corrected,
                                                    "round_trips": cascade.round_trips}))
        key = cascade.key
        result.figures.update(qber_z=cascade.corrected / max(key.size, 1), round_trips=cascade.round_trips)

        verify = self._hear("verify")
        t = self.settings.verification_bits
        seed = unpack_bits(verify["seed"], key.size + t - 1)
        equal = pack_bits(toeplitz_hash(key, seed, t)) == verify["tag"]
        self._say(Message("verified", {"equal": equal}))
        if not equal:
            raise BlockAborted("verification failed: the keys differ after reconciliation")

        figures = self._finite_key(counts, cascade.leaked_bits, result)
        amplify = self._hear("amplify")
        if amplify["length"] != figures.length or not 0 < figures.length <= key.size:
            raise ProtocolError(f"Alice announced a secret length of {amplify['length']} bits, Bob's bound "
                                f"gives {figures.length}")
        seed = unpack_bits(amplify["seed"], key.size + figures.length - 1)
        self._amplify(key, seed, figures.length, result)

    def _close(self, result):
        """Close the block: Alice's close first; Bob answers with his only if hers is genuine, and keeps his key
        only on her genuine confirmation."""
        close, aborts = self._peer_close()
        self.endpoint.send(Message("close", {"key": int(result.key is not None and bool(close["key"]))}))
        confirm = self.endpoint.receive("confirm")
        self._keep(result, result.key is not None and bool(close["key"]) and bool(confirm["key"]), aborts)
