"""Simulated boards running the real gateware: Alice's and Bob's nodes under Verilator, joined through the bench.

:class:`SimulatedLink` compiles :class:`~qkdlink.gateware.node.AliceNode` and
:class:`~qkdlink.gateware.node.BobNode` with Verilator (:mod:`qkdlink.sim.verilator`) and runs them side by side,
each at its own clock: Alice's modulator outputs go through the optical bench (:func:`qkdlink.sim.optics.
detector_events`) to Bob's detector inputs, as pulses sampled on Bob's clock (:func:`qkdlink.sim.timetagger.sample`);
Alice's sync output drives Bob's sync channel. Each node's wire bytes come from and go to an :class:`Endpoint`,
which :func:`qkdlink.sim.serve.serve` puts on a TCP socket, so the host's driver talks to the simulated board exactly
as to a real one.

Time advances in windows, as fast as Verilator runs, from a host's first request until it has been quiet for two
seconds (and when :meth:`SimulatedLink.run` is called); both boards always advance together, so Bob sees every
pulse and sync Alice sends. Random numbers (Alice's sequencer words, Bob's squashing bits, the bench) come from ``seed``: a simulation,
reproducible, not secret.

Simplification: the bench resolves dead time and afterpulses within each window (the detectors start live in every
window); with windows of many slots the difference is confined to the first slots of a window.
"""

import threading
import time

import numpy as np

from ..numbering import CHANNELS, NOT_SENT, SYNC
from . import optics
from .timetagger import first_bin_at_or_after, sample
from .verilator import VerilatedModel, build_library


__all__ = ["SimulatedLink", "Endpoint"]


# Seconds an exchange waits for the node to answer every request it was sent (a node that does not answer
# leaves the host to its time-out), and seconds the boards keep running after a host last spoke.
_PATIENCE = 10.0
_ACTIVE = 2.0

# Modulator output bits (qkdlink.boards.platforms.MODULATOR_OUTPUTS).
_BASIS, _BIT, _INTENSITY, _EMIT, _SYNC = 0, 1, 2, 4, 5


class Endpoint:
    """One board's wire: :meth:`receive` takes the bytes the host sends and returns the board's answer."""

    def __init__(self, link, role):
        self._link = link
        self.role = role

    def receive(self, data):
        return self._link._exchange(self.role, bytes(data))


class _Node:
    def __init__(self, component, name, clock_hz, build_dir):
        library, ports = build_library(component, name, build_dir=build_dir)
        self.model = VerilatedModel(library, ports)
        self.clock_ns = 1e9 / clock_hz
        self.cycles = 0
        self.input = bytearray()
        self.output = bytearray()
        self.unanswered = 0                     # requests sent to the node and not answered yet
        self.last_byte = 0


class SimulatedLink:
    """Alice's and Bob's nodes (configurations ``alice`` and ``bob``, :class:`~qkdlink.gateware.node.NodeConfig`)
    on ``bench`` (an :class:`~qkdlink.sim.optics.OpticalBench`).

    Parameters
    ----------
    bench : OpticalBench
        Its ``slot_ns`` should be the slot period Alice's ``period`` register sets, for the timing of dark counts.
    alice, bob : NodeConfig
    seed : int or sequence of int
        Seeds every random number of the simulation.
    bob_ppm : float
        Bob's clock error against its nominal frequency, in parts per million (Alice's clock is exact).
    delay_ns : float
        Flight time from Alice's outputs to Bob's inputs.
    pulse_ns : float
        Width of the detector and sync pulses.
    window_ns : float
        Time advanced per step.
    build_dir : path, optional
        Where Verilator's libraries are cached.
    """

    def __init__(self, bench, *, alice, bob, seed, bob_ppm=0.0, delay_ns=2e6, pulse_ns=5.0,
                 window_ns=5_000.0, build_dir=None):
        from ..gateware.node import AliceNode, BobNode

        self.bench = bench
        self.delay_ns = delay_ns
        self.pulse_ns = pulse_ns
        self.window_ns = window_ns
        self.time_ns = 0.0
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._closed = False
        self._active_until = 0.0
        self._alice = _Node(AliceNode(alice), "alice_node", alice.clock_hz, build_dir)
        self._bob = _Node(BobNode(bob), "bob_node", bob.clock_hz * (1 + bob_ppm * 1e-6), build_dir)
        self._bob_phases = bob.phases
        self._bench_seed, alice_seed, bob_seed = np.random.SeedSequence(seed).spawn(3)
        self._frame_slots = 1 << alice.frame_bits
        self._frame, self._frame_cycles = [], []    # the frame being emitted: outputs and cycles of its slots
        self._frames = 0
        self._alice_words = _RandomStream(np.random.default_rng(alice_seed), bits=33)
        self._bob_bits = _RandomStream(np.random.default_rng(bob_seed), bits=2)
        self._pulses = np.zeros(0), np.zeros(0, dtype=np.uint8)     # (times, channels) not yet sampled
        self.sent = 0                           # pulses with light, for the figures
        self.clicks = 0
        self._runner = threading.Thread(target=self._run, name="simulated-boards", daemon=True)
        self._runner.start()

    def endpoint(self, role):
        """The :class:`Endpoint` of ``"alice"`` or ``"bob"``."""
        if role not in ("alice", "bob"):
            raise ValueError(f"role must be 'alice' or 'bob', not {role!r}")
        return Endpoint(self, role)

    def run(self, ns):
        """Advance both boards by ``ns`` nanoseconds now (they also run by themselves while a host talks)."""
        with self._lock:
            end = self.time_ns + ns
            while self.time_ns < end:
                self._advance(min(self.window_ns, end - self.time_ns))

    def close(self):
        with self._lock:
            self._closed = True
            self._wake.notify_all()
        self._runner.join()
        for node in (self._alice, self._bob):
            node.model.close()

    def _run(self):
        """Keep time going, as real boards do, while a host has talked to either board in the last seconds."""
        while True:
            with self._lock:
                if self._closed:
                    return
                if time.monotonic() > self._active_until:
                    self._wake.wait(1.0)
                    continue
                self._advance(self.window_ns)
                self._wake.notify_all()
            time.sleep(0)                   # let a waiting exchange have the lock

    def _exchange(self, role, data):
        node = self._alice if role == "alice" else self._bob
        with self._lock:
            node.input += data
            # Every non-empty frame gets one reply, which ends in the only zero byte it has.
            received = np.frombuffer(data, dtype=np.uint8)
            previous = np.concatenate([[node.last_byte], received[:-1]]) if received.size else received
            node.unanswered += int(np.count_nonzero((received == 0) & (previous != 0)))
            node.last_byte = received[-1] if received.size else node.last_byte
            deadline = time.monotonic() + _PATIENCE
            while (node.input or node.unanswered > 0) and time.monotonic() < deadline:
                self._active_until = time.monotonic() + _ACTIVE
                self._wake.notify_all()
                self._wake.wait(0.1)
            answer = bytes(node.output)
            node.output.clear()
            return answer

    def _finish_frame(self, times, channels):
        """Send the frame gathered in ``self._frame`` through the bench: append its pulses (and its sync)."""
        if not self._frame:
            return
        outputs = np.concatenate(self._frame)
        at = np.concatenate(self._frame_cycles) * self._alice.clock_ns + self.delay_ns
        self._frame, self._frame_cycles = [], []
        if not outputs.size:
            return
        rng = np.random.default_rng(_frame_seed(self._bench_seed, self._frames))
        self._frames += 1
        basis, bit, intensity = (outputs >> _BASIS & 1), (outputs >> _BIT & 1), (outputs >> _INTENSITY & 3)
        events = optics.detector_events(self.bench, basis, bit, intensity, first_slot=0, rng=rng)
        offset = events.time_ns - events.slot * events.slot_ns
        times += [at[events.slot] + offset, at[:1]]
        channels += [events.detector, np.array([SYNC], dtype=np.uint8)]
        self.sent += int(np.count_nonzero(intensity != NOT_SENT))
        self.clicks += events.slot.size

    def _step(self, node, end_ns, **kwargs):
        cycles = int(end_ns / node.clock_ns) - node.cycles
        sinks = kwargs.pop("sinks", {})
        if node.input:
            sinks["i_bytes"] = np.frombuffer(bytes(node.input), dtype=np.uint8)
        taken, produced, recorded = node.model.step(cycles, sinks=sinks, **kwargs)
        del node.input[:taken["i_bytes"]]
        node.output += produced["o_bytes"].astype(np.uint8).tobytes()
        node.unanswered -= int(np.count_nonzero(produced["o_bytes"] == 0))
        start = node.cycles
        node.cycles += cycles
        return start, cycles, taken, recorded

    def _advance(self, window_ns):
        end_ns = self.time_ns + window_ns
        alice, bob = self._alice, self._bob

        # Alice first: her light reaches Bob no earlier than it leaves her.
        words = self._alice_words.peek(int(window_ns / alice.clock_ns) + 1)
        start, cycles, taken, recorded = self._step(alice, end_ns, sinks={"i_random": words},
                                                    record=["modulators"])
        self._alice_words.take(taken["i_random"])
        outputs = recorded["modulators"]
        cycle = start + np.flatnonzero(outputs >> _EMIT & 1)
        emitted = outputs[cycle - start]
        frame_starts = np.flatnonzero(emitted >> _SYNC & 1)
        times, channels = [self._pulses[0]], [self._pulses[1]]
        # Slots of one frame at a time, each frame's light drawn from its own generator, so that what Bob sees
        # does not depend on how time was cut into windows (nor on when the host's requests came).
        for piece, piece_cycles in zip(np.split(emitted, frame_starts), np.split(cycle, frame_starts)):
            if piece.size and piece[0] >> _SYNC & 1:
                self._finish_frame(times, channels)
            self._frame.append(piece)
            self._frame_cycles.append(piece_cycles)
        if sum(piece.size for piece in self._frame) == self._frame_slots:
            self._finish_frame(times, channels)
        if len(times) > 1:
            drawn = np.concatenate(times[1:])
            if first_bin_at_or_after(drawn - bob.cycles * bob.clock_ns, bob.clock_ns, self._bob_phases).min() < 0:
                raise RuntimeError(f"a frame's light reaches Bob before it was drawn: the delay of {self.delay_ns} "
                                   f"ns must exceed a frame's duration")
        times, channels = np.concatenate(times), np.concatenate(channels)

        # Bob: the pulses that start before the end of his window; the rest wait for the next.
        bob_start_ns = bob.cycles * bob.clock_ns
        cycles = int(end_ns / bob.clock_ns) - bob.cycles
        # A pulse is sampled in this window if its rising edge falls on one of the window's bins.
        now = first_bin_at_or_after(times - bob_start_ns, bob.clock_ns, self._bob_phases) < cycles * self._bob_phases
        samples = np.zeros(cycles, dtype=np.uint64)
        for channel in range(len(CHANNELS)):
            mine = now & (channels == channel)
            if mine.any():
                samples |= sample(times[mine] - bob_start_ns, channel, channels=len(CHANNELS),
                                  phases=self._bob_phases, clock_ns=bob.clock_ns, pulse_ns=self.pulse_ns,
                                  cycles=cycles)
        self._pulses = times[~now], channels[~now]
        bits = self._bob_bits.peek(cycles)
        _, _, taken, _ = self._step(bob, end_ns, sinks={"i_random": bits}, inputs={"samples": samples})
        self._bob_bits.take(taken["i_random"])
        self.time_ns = end_ns


def _frame_seed(seed, frame):
    """The bench's seed for Alice's ``frame``-th frame (counted from the first she sent), from the link's."""
    return np.random.SeedSequence(seed.entropy, spawn_key=(*seed.spawn_key, frame))


class _RandomStream:
    """A reproducible stream of ``bits``-bit random numbers, read ahead without being used up."""

    def __init__(self, rng, *, bits):
        self._rng = rng
        self._bits = bits
        self._buffer = np.zeros(0, dtype=np.uint64)

    def peek(self, count):
        if self._buffer.size < count:
            more = self._rng.integers(0, 1 << self._bits, max(count - self._buffer.size, 4096), dtype=np.uint64)
            self._buffer = np.concatenate([self._buffer, more])
        return self._buffer[:count]

    def take(self, count):
        self._buffer = self._buffer[count:]
