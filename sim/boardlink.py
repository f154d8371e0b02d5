"""A QKD link through simulated boards: the host protocol driving two boards over the wire protocol.

:func:`run_board_link` serves a simulated Alice board and Bob board on local sockets (:func:`qkdlink.sim.serve.serve`),
opens both with the host's driver (:class:`qkdlink.host.board.Board`) exactly as it would open real boards, sets
their slot timing, starts them, and runs blocks of the host protocol (:mod:`qkdlink.host.protocol`) on the boards'
choice and detection memories (:mod:`qkdlink.host.frontend`): the boards draw, send, time-tag, assign, squash and
sift; the hosts estimate, reconcile, verify and amplify.

The boards are the real gateware under Verilator (:class:`qkdlink.sim.rtlboard.SimulatedLink`, ``rtl=True``) or
its bit-exact models. Everything random comes from ``seed``: a simulation, reproducible, not secret.
"""

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np

from ..host.board import Board
from ..host.channel import LocalChannel
from ..host.entropy import SimulatedEntropy
from ..host.finite_key import DecoySettings
from ..host.frontend import BoardChoices, BoardDetections, configure_alice, configure_bob, start
from ..host.protocol import Alice, Bob
from . import optics
from .link import PAD_BYTES_PER_BLOCK, LinkBlock
from .sequencer import RANDOM_RANGE, thresholds
from .serve import serve


__all__ = ["LinkTiming", "frames_for", "realised_decoy", "run_board_link", "simulated_link", "node_configuration"]


@dataclass(frozen=True)
class LinkTiming:
    """The simulated boards' timing.

    Attributes
    ----------
    clock_hz : float
        Both boards' clock (the simulated boards share a reference: their slot grids keep step).
    period : int
        Alice's slot period in clock cycles.
    phases : int
        Bob's time-tagger bins per clock cycle.
    frame_bits : int
        Slots per frame, as a power of two.
    """
    clock_hz: float = 100e6
    period: int = 2
    phases: int = 4
    frame_bits: int = 12

    @property
    def slot_ns(self):
        return self.period * 1e9 / self.clock_hz

    @property
    def frame_ns(self):
        return self.slot_ns * (1 << self.frame_bits)


def realised_decoy(decoy, p_z):
    """The sequencer's thresholds for ``decoy`` and ``p_z``, and the :class:`DecoySettings` it really sends with
    (thresholds over 65536), which the finite-key analysis must use."""
    settings = thresholds(p_z, decoy.probabilities)
    p, t0, t1 = settings
    probabilities = (t0 / RANDOM_RANGE, (t1 - t0) / RANDOM_RANGE, (RANDOM_RANGE - t1) / RANDOM_RANGE)
    return settings, replace(decoy, probabilities=probabilities), p / RANDOM_RANGE


def frames_for(bench, key_bits, timing):
    """Frames to send for about ``key_bits`` sifted Z-basis bits on ``bench``."""
    return max(1, math.ceil(key_bits / optics.sifted_key_probability(bench) / (1 << timing.frame_bits)))


def run_board_link(bench, settings, *, frames, seed, rtl=True, timing=LinkTiming(), blocks=1, build_dir=None,
                   progress=None):
    """Run ``blocks`` blocks of ``frames`` frames each through two simulated boards; returns a list of
    :class:`~qkdlink.sim.link.LinkBlock`. ``progress(frames)``, if given, hears of every frame sifted.

    ``settings`` is a :class:`~qkdlink.host.protocol.ProtocolSettings`; its decoy probabilities are replaced by
    the ones the sequencer realises. ``bench.source.p_z`` sets Alice's basis probability; ``bench`` must have a
    slot of ``timing.slot_ns``.
    """
    if not math.isclose(bench.slot_ns, timing.slot_ns):
        raise ValueError(f"the bench's slot of {bench.slot_ns} ns differs from the boards' {timing.slot_ns} ns")
    (p_z, t0, t1), decoy, _ = realised_decoy(settings.decoy, bench.source.p_z)
    settings = replace(settings, decoy=decoy)
    link = simulated_link(bench, timing=timing, seed=seed, rtl=rtl, build_dir=build_dir)
    # Children 0-2 of the seed are the boards' (SimulatedLink); 3 and 4 the hosts'.
    entropy = [SimulatedEntropy(child) for child in np.random.SeedSequence(seed).spawn(5)[3:]]
    results = []
    with serve(lambda: link.endpoint("alice")) as alice_server, serve(lambda: link.endpoint("bob")) as bob_server, \
            Board.open(alice_server.url) as alice_board, Board.open(bob_server.url) as bob_board:
        configure_alice(alice_board, period=timing.period, p_z=p_z, thresholds=(t0, t1))
        bins = timing.period * timing.phases
        # Photons arrive mid-slot (sim.optics): the gate takes the middle half of the slot and a bin.
        configure_bob(bob_board, period_bins=bins, delay=0, gate_start=bins // 4, gate_width=bins // 2 + 1)
        start(bob_board)
        start(alice_board)
        alice_end, bob_end = LocalChannel.authenticated_pair(PAD_BYTES_PER_BLOCK * blocks)
        alice = Alice(alice_end, settings, entropy[0])
        bob = Bob(bob_end, settings, entropy[1])
        released, carry = 0, None
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="node") as nodes:
            for block in range(blocks):
                choices = BoardChoices(alice_board, released=released, frames=frames)
                detections = BoardDetections(bob_board, frames=frames, first_frame=block * frames,
                                             progress=progress, carry=carry)
                pulses = frames << timing.frame_bits
                pad_before = sum(alice_end.pad_consumed.values())
                alice_result = nodes.submit(alice.run_block, block, pulses, choices)
                bob_result = nodes.submit(bob.run_block, block, detections)
                results.append(LinkBlock(alice_result.result(), bob_result.result(),
                                         sum(alice_end.pad_consumed.values()) - pad_before))
                released, carry = choices.released, detections.leftover
    link.close()
    return results


def simulated_link(bench, *, timing, seed, rtl=True, build_dir=None, first_frame=0):
    """Two simulated boards on ``bench`` with ``timing``: the gateware under Verilator
    (:class:`~qkdlink.sim.rtlboard.SimulatedLink`) or its models (:class:`~qkdlink.sim.modelboard.ModelLink`).
    The models can start their frame numbers at ``first_frame``, as boards that have run that long."""
    config = node_configuration(timing)
    if rtl and first_frame:
        raise ValueError("only the model boards start their frame numbers elsewhere than 0")
    # Bob sees a frame's light once the whole frame is drawn: the flight time covers a frame and a half.
    if rtl:
        from .rtlboard import SimulatedLink
        return SimulatedLink(bench, alice=config, bob=config, seed=seed, delay_ns=timing.frame_ns * 1.5,
                             build_dir=build_dir)
    from .modelboard import ModelLink
    return ModelLink(bench, alice=config, bob=config, seed=seed, delay_ns=timing.frame_ns * 1.5,
                     first_frame=first_frame)


def node_configuration(timing):
    """Both simulated boards' node configuration: ECP5-sized memories, rings deep enough for a host that polls."""
    from ..gateware.node import NodeConfig

    config = NodeConfig()
    depths = {**config.depths, "lookups": 1 << 15, "matches": 1 << 14, "test": 1 << 14, "detections": 1 << 15,
              "answers": 1 << 14, "key_words": 1 << 14}
    return replace(config, board="sim", clock_hz=int(timing.clock_hz), baud=0, phases=timing.phases,
                   frame_bits=timing.frame_bits, choice_frames=16, key_bits=1 << 18, event_depth=1024,
                   detection_depth=1 << 14, toeplitz_width=4, toeplitz_accumulator=4096, max_block=1 << 18,
                   depths=depths)
