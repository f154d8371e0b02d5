"""A board as the protocol's front end: Alice's choice memory and Bob's detection memory, reached over the link.

:class:`BoardChoices` and :class:`BoardDetections` offer the calls that :class:`qkdlink.host.protocol.Alice` and
:class:`~qkdlink.host.protocol.Bob` make on a :class:`~qkdlink.host.protocol.ChoiceMemory` and
:class:`~qkdlink.host.protocol.SquashedDetections`, so the same protocol runs on host data or on a board (real or
simulated): the board squashes, looks up and sifts, keeps the raw key in its key memory, and the host reads what
it needs through the driver (:class:`qkdlink.host.board.Board`).

:func:`configure_alice` and :func:`configure_bob` set the boards' slot timing.
"""

import logging
import time

import numpy as np

from .bits import unpack_bits
from .board import COUNT_WRAP, pack_beats, unpack_beats, unwrap
from .protocol import ProtocolError
from .sifting import NOT_SENT, X, Z, SiftedBlock
from ..wire import Control


__all__ = ["configure_alice", "configure_bob", "BoardChoices", "BoardDetections", "FRACTION_BITS"]


logger = logging.getLogger(__name__)


#: Fraction bits of Bob's slot period register (``period_high:period_low``).
FRACTION_BITS = 24

# Key memory commands (qkdlink.wire stream "key_commands").
_CLEAR, _READ = 0, 1


def configure_alice(board, *, period, p_z, thresholds):
    """Set Alice's slot ``period`` (clock cycles), basis threshold ``p_z`` and intensity ``thresholds`` (t0, t1),
    all out of 65536 (:func:`qkdlink.sim.sequencer.thresholds` computes them from probabilities); the sequencer is
    left stopped."""
    board.write(control=0, period=period, p_z=p_z, threshold0=thresholds[0], threshold1=thresholds[1])


def configure_bob(board, *, period_bins, delay=0, gate_start, gate_width, dead_cycles=0):
    """Set Bob's slot grid: ``period_bins`` (a float: the slot period in time-tagger bins), the ``delay`` from a
    sync to slot 0 and the gate within each slot, in bins, and the detectors' dead time in clock cycles."""
    period = round(period_bins * (1 << FRACTION_BITS))
    board.write(control=0, dead_cycles=dead_cycles, delay=delay, period_low=period & 0xffff_ffff,
                period_high=period >> 32, gate_start=gate_start, gate_width=gate_width)


def _wait(board, condition, what, *, timeout, poll=0.001):
    """Poll ``condition()`` until true; :class:`ProtocolError` naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise ProtocolError(f"the board did not {what} within {timeout} s")
        time.sleep(poll)


def _read_beats(board, name, count, *, timeout):
    """Exactly ``count`` beats of out stream ``name``, as a dict of arrays."""
    stream = board.streams[name]
    data = bytearray()
    deadline = time.monotonic() + timeout
    while len(data) < count * stream.beat_bytes:
        data += board.read_stream(name, count * stream.beat_bytes - len(data))
        if len(data) < count * stream.beat_bytes:
            if time.monotonic() > deadline:
                raise ProtocolError(f"the board gave {len(data) // stream.beat_bytes} of {count} {name} beats "
                                    f"within {timeout} s")
            time.sleep(0.001)
    return unpack_beats(stream, bytes(data))


def _read_key(board, count, *, timeout):
    """The ``count`` bits of the board's key memory, which is then cleared for the next block."""
    _wait(board, lambda: board.read("key_count")["key_count"] == count,
          f"hold the block's {count} key bits", timeout=timeout)
    board.write_stream("key_commands", pack_beats(board.streams["key_commands"], op=[_READ], passes=[0]))
    words = _read_beats(board, "key_words", -(-count // 16), timeout=timeout) if count else {"data": []}
    data = np.asarray(words["data"], dtype="<u2").tobytes()
    board.write_stream("key_commands", pack_beats(board.streams["key_commands"], op=[_CLEAR], passes=[0]))
    return unpack_bits(data, count)


def _sifted(board, key_intensity, test, *, timeout):
    """The block's :class:`SiftedBlock` from the batches' key intensities and test beats and the board's key."""
    key_intensity = np.concatenate(key_intensity) if key_intensity else np.zeros(0, np.uint8)
    test, test_intensity = [np.concatenate(column) for column in zip(*test)] or [np.zeros(0, np.uint8)] * 2
    key = _read_key(board, key_intensity.size, timeout=timeout)
    return SiftedBlock(key=key, key_intensity=key_intensity, test=test, test_intensity=test_intensity)


class BoardChoices:
    """Alice's choice memory on ``board``: lookups, matches and test bits over the link, the raw key in the board's
    key memory. One instance per block; frames are freed as Bob reports them complete.

    Parameters
    ----------
    board : qkdlink.host.board.Board
        Alice's board.
    released : int
        Frames freed before this block (the first frame the block may name).
    frames : int, optional
        Frames in the block: Bob may not report more complete (his reports are not yet authenticated when Alice
        frees the frames, and a frame freed early is lost).
    timeout : float
        Seconds to wait for the board's answers.
    """

    def __init__(self, board, *, released=0, frames=None, timeout=30.0):
        self.board = board
        self.released = released
        self.end = None if frames is None else released + frames
        self.timeout = timeout
        self._frame_bits = board.frame_bits
        self._key_intensity, self._test = [], []

    def answer(self, slots, bob_bases, frames=0):
        slots = np.asarray(slots, dtype=np.int64)
        bob_bases = np.asarray(bob_bases, dtype=np.uint8)
        frame = slots >> self._frame_bits
        if self.end is not None and frames > self.end:
            raise ProtocolError(f"Bob reports {frames} frames complete, past the block's end at frame {self.end}")
        last = frames or self.end
        if slots.size and (frame[0] < self.released or (last is not None and frame[-1] >= last)):
            raise ProtocolError(f"Bob's detections name frames {frame[0]}..{frame[-1]}, outside the frames "
                                f"{self.released}..{last - 1} being sifted")
        board = self.board
        if slots.size:
            board.write_stream("lookups", pack_beats(board.streams["lookups"], frame=frame % COUNT_WRAP,
                                                     slot=slots & ((1 << self._frame_bits) - 1), basis=bob_bases))
        matches = _read_beats(board, "matches", slots.size, timeout=self.timeout)
        match = np.asarray(matches["match"], dtype=np.uint8)
        intensities = np.asarray(matches["intensity"], dtype=np.uint8)
        # The board answers a match bit; with the intensity it gives Alice's basis wherever it matters.
        bases = np.where(match == 1, bob_bases, 1 - bob_bases).astype(np.uint8)
        bases[intensities == NOT_SENT] = Z
        tests = int(np.count_nonzero(match & (bob_bases == X)))
        test = _read_beats(board, "test", tests, timeout=self.timeout)
        self._test.append((np.asarray(test["bit"], np.uint8), np.asarray(test["intensity"], np.uint8)))
        self._key_intensity.append(intensities[(match == 1) & (bob_bases == Z)])
        if frames > self.released:
            board.write_stream("releases", pack_beats(board.streams["releases"],
                                                      frame=np.arange(self.released, frames) % COUNT_WRAP))
            self.released = frames
        return bases, intensities

    def sifted(self):
        return _sifted(self.board, self._key_intensity, self._test, timeout=self.timeout)


class BoardDetections:
    """Bob's detection memory on ``board``: the squashed detections of ``frames`` frames read over the link in
    batches as frames complete, Alice's answers written back, the raw key in the board's key memory.

    Parameters
    ----------
    board : qkdlink.host.board.Board
        Bob's board, running (``Control.RUN``).
    frames : int
        Frames in the block.
    first_frame : int
        The block's first frame.
    timeout : float
        Seconds to wait for a frame to complete.
    progress : callable, optional
        Called with the number of frames completed since frame 0 after each batch.
    carry : dict, optional
        The previous block's :attr:`leftover`: detections already read from the board, of frames from
        ``first_frame`` on. A block must start from them, or the board's detection memory, which waits for an
        answer to each, falls out of step with the answers.
    """

    def __init__(self, board, *, frames, first_frame=0, timeout=60.0, progress=None, carry=None):
        self.board = board
        self.progress = progress
        self.first_frame = first_frame
        self.end_frame = first_frame + frames
        self.timeout = timeout
        self._frame_bits = board.frame_bits
        self._pending = {name: np.asarray((carry or {}).get(name, ()), np.int64) for name in ("frame", "slot", "basis")}
        self._bases = []
        self._key_intensity, self._test = [], []

    @property
    def leftover(self):
        """The detections read from the board beyond the block's last frame: the next block's ``carry``."""
        return dict(self._pending)

    def squash(self, entropy):
        return self             # the board squashes with its own random bits

    def _fetch(self, near):
        detections = self.board.streams["detections"]
        data = self.board.read_stream("detections")
        beats = unpack_beats(detections, data[:len(data) - len(data) % detections.beat_bytes])
        beats["frame"] = unwrap(beats["frame"], near)
        for name in self._pending:
            self._pending[name] = np.concatenate([self._pending[name], np.asarray(beats[name], np.int64)])

    def batches(self):
        done = self.first_frame
        deadline = time.monotonic() + self.timeout
        while done < self.end_frame:
            # Every frame before the last sync Bob saw is complete.
            complete = min(int(unwrap(self.board.read("frames")["frames"], done)) - 1, self.end_frame)
            self._fetch(done)
            if complete <= done:
                if time.monotonic() > deadline:
                    raise ProtocolError(f"frame {done} did not complete within {self.timeout} s")
                time.sleep(0.001)
                continue
            deadline = time.monotonic() + self.timeout
            frame = self._pending["frame"]
            if frame.size and frame[0] < done:
                raise ProtocolError(f"the board reported a detection in frame {frame[0]}, before frame {done}")
            take = np.searchsorted(frame, complete)
            batch = {name: values[:take] for name, values in self._pending.items()}
            self._pending = {name: values[take:] for name, values in self._pending.items()}
            slots = batch["frame"] << self._frame_bits | batch["slot"]
            bases = batch["basis"].astype(np.uint8)
            self._bases.append(bases)
            logger.debug("frames %d..%d: %d detections", done, complete - 1, slots.size)
            done = complete
            if self.progress is not None:
                self.progress(complete)
            yield slots, bases, complete

    def answer(self, alice_bases, intensities):
        board, bases = self.board, self._bases[-1]
        if bases.size:
            board.write_stream("answers", pack_beats(board.streams["answers"], alice_basis=alice_bases,
                                                     intensity=intensities))
        match = (bases == alice_bases) & (intensities != NOT_SENT)
        test = _read_beats(board, "test", int(np.count_nonzero(match & (bases == X))), timeout=self.timeout)
        self._test.append((np.asarray(test["bit"], np.uint8), np.asarray(test["intensity"], np.uint8)))
        self._key_intensity.append(intensities[match & (bases == Z)])

    def sifted(self):
        return _sifted(self.board, self._key_intensity, self._test, timeout=self.timeout)


def start(board):
    """Let ``board`` run: Bob's tagger feeds slot assignment, Alice's sequencer emits."""
    board.write(control=int(Control.RUN))
