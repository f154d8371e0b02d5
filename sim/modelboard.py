"""Simulated boards made of the gateware's bit-exact models: the fast twin of :mod:`qkdlink.sim.rtlboard`.

:class:`ModelLink` offers what :class:`~qkdlink.sim.rtlboard.SimulatedLink` offers (an :class:`Endpoint` per role
that answers the wire protocol), with each node's cores replaced by their reference models: the link by
:class:`~qkdlink.sim.hostlink.HostLinkModel`, Alice's sequencer by :func:`qkdlink.sim.sequencer.choices`, the
time-tagger by :func:`qkdlink.sim.timetagger.tag`, slot assignment by :func:`qkdlink.sim.slots.assign`, squashing
and sifting by :mod:`qkdlink.host.sifting`, the key memory by :class:`~qkdlink.sim.keymemory.KeyMemoryModel`.

It draws every random number exactly as the RTL link does from the same ``seed`` (Alice's words, Bob's squashing
bits, each frame's light), so the two give the same detections and keys. It keeps no clock: a frame is sent as soon
as Alice's choice memory has room for it, and its light reaches Bob at once. Two clocks that share a reference
make this exact: with Bob's clock equal to Alice's, every pulse falls at the same place in Bob's bins, relative to
its frame's sync, whenever the frame was sent. The model therefore time-tags each frame on its own time line,
from its sync; frames are far enough apart for no dead time or pulse to reach from one into the next.

Not modelled: the ``tags`` stream (raw events carry absolute times, which have no meaning without a clock) and the
Toeplitz core (``hash_blocks``, ``seed``, ``hash``): the streams exist but stay empty.
"""

import threading
from collections import deque

import numpy as np

from ..host.board import pack_beats, unpack_beats
from ..host.sifting import NOT_SENT, matches, sift, squash
from ..numbering import CHANNELS, SYNC
from ..wire import Control, Role
from . import optics
from .hostlink import HostLinkModel
from .keymemory import KeyMemoryModel
from .rtlboard import Endpoint, _frame_seed, _RandomStream
from .sequencer import choices
from .slots import assign
from .timetagger import sample, tag


__all__ = ["ModelLink"]


_FRACTION_BITS = 24
_CLEAR, _READ, _HASH = 0, 1, 2


class _Node:
    """What both roles share: the link model, the key memory, and the beats between them and the rings."""

    def __init__(self, role, config):
        self.config = config
        self.link = HostLinkModel(role, board=config.board, phases=config.phases, frame_bits=config.frame_bits,
                                  depths=config.depths,
                                  constants={"clock_hz": config.clock_hz, "baud": config.baud,
                                             "key_bits": config.key_bits})
        self.streams = {stream.name: stream for stream in self.link.stream_list}
        self.key = KeyMemoryModel(max_bits=config.key_bits, width=config.toeplitz_width)
        self._outbox = {stream.name: bytearray() for stream in self.link.stream_list if stream.out}

    @property
    def registers(self):
        return self.link.registers

    def take(self, name, count=None):
        """Up to ``count`` whole beats from in stream ``name`` (all there are by default), as a dict of arrays."""
        stream = self.streams[name]
        available = self.link.streams[name].level // stream.beat_bytes
        count = available if count is None else min(count, available)
        return unpack_beats(stream, self.link.consume(name, count * stream.beat_bytes))

    def give(self, name, **fields):
        """Queue beats for out stream ``name``; they go into its ring as it has room. (The gateware would stall
        instead of queueing: the beats are the same, only their timing differs.)"""
        self._outbox[name] += pack_beats(self.streams[name], **fields)

    def flush(self):
        for name, queue in self._outbox.items():
            beat = self.streams[name].beat_bytes
            count = min(len(queue), self.link.streams[name].free // beat * beat)
            if count:
                self.link.produce(name, bytes(queue[:count]))
                del queue[:count]

    def service_key(self):
        """The key memory's flips and commands."""
        for index in self.take("flips")["index"]:
            self.key.flip(int(index))
        commands = self.take("key_commands")
        for op, passes in zip(commands["op"], commands["passes"]):
            if op == _CLEAR:
                self.key.clear()
            elif op == _READ:
                words = self.key.read()
                if words:
                    data, last = zip(*words)
                    self.give("key_words", data=np.array(data), last=np.array(last, dtype=np.uint8))
        self.registers["key_count"] = self.key.count
        self.registers["bad_flips"] = self.key.bad_flip

    def append_key(self, bits):
        self.key.extend(bits)


class _Alice(_Node):
    def __init__(self, config, words):
        super().__init__(Role.ALICE, config)
        self.words = words
        self.held = {}                          # frame -> (basis, bit, intensity) of its slots
        self.next_frame = 0

    def emit(self):
        """Frames the sequencer sends now (while running and the choice memory has room): ``(frame, basis, bit,
        intensity)`` each."""
        frames = []
        registers = self.registers
        while registers["control"] & Control.RUN and len(self.held) < self.config.choice_frames:
            slots = 1 << self.config.frame_bits
            words = self.words.peek(slots).copy()
            self.words.take(slots)
            # RandomWord: basis draw in bits 0-15, intensity draw in bits 16-31, the bit in bit 32.
            basis, bit, intensity = choices(words & 0xffff, words >> 16 & 0xffff, words >> 32,
                                            p_z=registers["p_z"], t0=registers["threshold0"],
                                            t1=registers["threshold1"])
            frame = self.next_frame
            self.held[frame] = basis, bit, intensity
            self.next_frame = (frame + 1) % (1 << 32)
            frames.append((frame, basis, bit, intensity))
        return frames

    def service(self):
        for frame in self.take("releases")["frame"]:
            if self.held and int(frame) == next(iter(self.held)):     # the oldest: frame numbers wrap
                del self.held[int(frame)]
            else:
                self.registers["bad_releases"] = (self.registers["bad_releases"] + 1) % (1 << 32)
        lookups = self.take("lookups")
        if lookups["frame"].size:
            frame, slot = lookups["frame"].astype(np.int64), lookups["slot"].astype(np.int64)
            bob_basis = lookups["basis"].astype(np.uint8)
            basis, bit = np.zeros(frame.size, np.uint8), np.zeros(frame.size, np.uint8)
            intensity = np.full(frame.size, NOT_SENT, np.uint8)
            for number in np.unique(frame).tolist():
                mine = frame == number
                if number in self.held:
                    held = self.held[number]
                    basis[mine], bit[mine], intensity[mine] = (values[slot[mine]] for values in held)
                else:
                    self.registers["bad_lookups"] = (self.registers["bad_lookups"] + int(mine.sum())) % (1 << 32)
            match = matches(bob_basis, basis, intensity)
            self.give("matches", match=match.astype(np.uint8), intensity=intensity)
            sifted = sift(bob_basis, bit, basis, intensity)
            self.give("test", bit=sifted.test, intensity=sifted.test_intensity)
            self.append_key(sifted.key)
        self.service_key()
        self.flush()


class _Bob(_Node):
    def __init__(self, config, bits):
        super().__init__(Role.BOB, config)
        self.bits = bits
        self.memory = deque()                   # (basis, bit) of detections not answered yet
        self.frames = 0

    def detect(self, times, channels):
        """One frame's pulses, on a time line that starts at a clock edge shortly before its sync."""
        registers, config = self.registers, self.config
        if not registers["control"] & Control.RUN:
            return
        clock_ns = 1e9 / config.clock_hz
        cycles = int(times.max() / clock_ns) + 2 + registers["dead_cycles"]
        samples = np.zeros(cycles, dtype=np.uint64)
        for channel in range(len(CHANNELS)):
            mine = channels == channel
            if mine.any():
                samples |= sample(times[mine], channel, channels=len(CHANNELS), phases=config.phases,
                                  clock_ns=clock_ns, pulse_ns=self.pulse_ns, cycles=cycles)
        tags = tag(samples, channels=len(CHANNELS), phases=config.phases, dead_cycles=registers["dead_cycles"])
        assignment = assign(tags.events(), phases=config.phases, frame_bits=config.frame_bits,
                            period=registers["period_high"] << 32 | registers["period_low"],
                            delay=registers["delay"], gate_start=registers["gate_start"],
                            gate_width=registers["gate_width"], fraction_bits=_FRACTION_BITS)
        for name, value in (("edges", tags.edges), ("suppressed", tags.suppressed),
                            ("frames", assignment.frames), ("gated", assignment.gated),
                            ("outside", assignment.outside), ("overrun", assignment.overrun)):
            registers[name] = (registers[name] + value) % (1 << 32)
        detections = assignment.detections
        if detections:
            _, slot, pattern = (np.array(column, dtype=np.int64) for column in zip(*detections))
            random_bits = self.bits.peek(slot.size).copy()
            self.bits.take(slot.size)
            bases, bits = squash(pattern.astype(np.uint8),
                                 np.stack([random_bits & 1, random_bits >> 1 & 1], axis=1).astype(np.uint8))
            self.memory.extend(zip(bases.tolist(), bits.tolist()))
            self.give("detections", frame=np.full(slot.size, self.frames), slot=slot, basis=bases)
        self.frames = (self.frames + 1) % (1 << 32)

    def service(self):
        answers = self.take("answers", len(self.memory))
        count = answers["alice_basis"].size
        if count:
            basis, bit = (np.array(column, dtype=np.uint8) for column in zip(*(self.memory.popleft()
                                                                               for _ in range(count))))
            sifted = sift(basis, bit, answers["alice_basis"].astype(np.uint8), answers["intensity"].astype(np.uint8))
            self.give("test", bit=sifted.test, intensity=sifted.test_intensity)
            self.append_key(sifted.key)
        self.service_key()
        self.flush()


class ModelLink:
    """Alice's and Bob's nodes as models, on ``bench``; the parameters are
    :class:`~qkdlink.sim.rtlboard.SimulatedLink`'s (``bob_ppm`` must be 0: the models share one clock)."""

    def __init__(self, bench, *, alice, bob, seed, bob_ppm=0.0, delay_ns=2e6, pulse_ns=5.0, first_frame=0):
        if bob_ppm:
            raise ValueError(f"the model boards share one clock: bob_ppm must be 0, not {bob_ppm!r}")
        if alice.clock_hz != bob.clock_hz:
            raise ValueError(f"the model boards share one clock, not {alice.clock_hz} and {bob.clock_hz} Hz")
        self.bench = bench
        self.delay_ns = delay_ns
        self._lock = threading.Lock()
        self._bench_seed, alice_seed, bob_seed = np.random.SeedSequence(seed).spawn(3)
        self._alice = _Alice(alice, _RandomStream(np.random.default_rng(alice_seed), bits=33))
        self._bob = _Bob(bob, _RandomStream(np.random.default_rng(bob_seed), bits=2))
        self._bob.pulse_ns = pulse_ns
        # Boards that have run for a while number their frames from there (modulo 2^32): for tests of the wrap.
        first_frame %= 1 << 32
        self._alice.next_frame = self._bob.frames = self._bob.registers["frames"] = first_frame
        self._frames = 0
        self.sent = 0
        self.clicks = 0

    def endpoint(self, role):
        if role not in ("alice", "bob"):
            raise ValueError(f"role must be 'alice' or 'bob', not {role!r}")
        return Endpoint(self, role)

    def close(self):
        pass

    def _exchange(self, role, data):
        node = self._alice if role == "alice" else self._bob
        with self._lock:
            return node.link.receive(data, after=self._service)

    def _service(self):
        for frame, basis, bit, intensity in self._alice.emit():
            self._send(basis, bit, intensity)
        self._alice.service()
        self._bob.service()

    def _send(self, basis, bit, intensity):
        """One frame through the bench to Bob, drawn as :class:`~qkdlink.sim.rtlboard.SimulatedLink` draws it."""
        rng = np.random.default_rng(_frame_seed(self._bench_seed, self._frames))
        self._frames += 1
        events = optics.detector_events(self.bench, basis, bit, intensity, first_slot=0, rng=rng)
        clock_ns = 1e9 / self._alice.config.clock_hz
        period_ns = self._alice.registers["period"] * clock_ns
        # The time line starts at the last clock edge before the sync arrives: the delay's whole cycles drop out.
        arrival = self.delay_ns % clock_ns
        offset = events.time_ns - events.slot * events.slot_ns
        times = np.concatenate([[arrival], arrival + events.slot * period_ns + offset])
        channels = np.concatenate([[SYNC], events.detector]).astype(np.uint8)
        self.sent += int(np.count_nonzero(intensity != NOT_SENT))
        self.clicks += events.slot.size
        self._bob.detect(times, channels)
