"""The node cores: everything a board runs for Alice or Bob, minus its clocks, pins, sampler and UART.

Each node talks to its host through raw wire bytes (``docs/protocol.md``): a
:class:`~qkdlink.gateware.cobs.CobsDecoder` cuts them into frames for the
:class:`~qkdlink.gateware.hostlink.HostLink`, whose replies a :class:`~qkdlink.gateware.cobs.CobsEncoder` turns
back into bytes. The link's registers drive the cores' settings and read their counters; its streams carry what the
host and the cores exchange (``qkdlink.wire.stream_map``):

- Bob: the sampler's samples go through the :class:`~qkdlink.gateware.timetagger.TimeTagger`; while ``control``
  has :data:`~qkdlink.wire.Control.RUN` its events go to the :class:`~qkdlink.gateware.slots.SlotAssigner`, an
  :class:`~qkdlink.gateware.queue.EventQueue` and the :class:`~qkdlink.gateware.slots.Squasher`; each squashed
  detection goes out on ``detections`` (frame, slot, basis) while its (basis, bit) waits in the detection memory
  for Alice's answer from ``answers``, with which it is sifted. While ``control`` has
  :data:`~qkdlink.wire.Control.TAGS` the raw events also go out on ``tags``, through a queue of their own.
- Alice: the :class:`~qkdlink.gateware.sequencer.SlotSequencer` (enabled by ``RUN``) drives the modulator outputs
  and fills the :class:`~qkdlink.gateware.choices.ChoiceMemory`; ``lookups`` are answered from it into the
  sifter, whose matches go out on ``matches``; ``releases`` free its frames.
- Both: the sifter's key fills the :class:`~qkdlink.gateware.keymemory.KeyMemory`, its test bits go out on
  ``test``; ``key_commands`` and ``flips`` act on the key memory, which is read out on ``key_words`` and feeds
  the :class:`~qkdlink.gateware.toeplitz.ToeplitzHash` (blocks from ``hash_blocks``, seed from ``seed``, hash
  out on ``hash``).

The ``seed`` stream carries each block's seed bits (all its passes, in the core's pass order,
:func:`qkdlink.sim.toeplitz.seed_beats`), eight a byte, bit 0 first, padded with zeros to a whole byte at the
end of the block: the padding bits of a block's last byte are dropped when the core takes the next block.
A ``hash_blocks`` beat whose ``n`` or ``m`` exceeds ``max_block`` is ignored (no hash), rather than truncated into
another length. A flip whose index has a bit set above the key memory's index width is ignored and counted in
``bad_flips``, rather than truncated onto a valid bit.
"""

from dataclasses import dataclass, field

from amaranth import *
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFO, SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from ..numbering import CHANNELS
from ..wire import BOARD_IDS, Control, Role, stream_map
from .choices import ChoiceMemory
from .cobs import CobsDecoder, CobsEncoder
from .hostlink import HostLink
from .keymemory import KeyMemory
from .queue import EventQueue, RegisterSlice
from .sequencer import RandomWord, SlotSequencer
from .sifter import Sifter
from .slots import SlotAssigner, Squasher, detection_layout
from .timetagger import TimeTagger, event_layout
from .toeplitz import ToeplitzHash


__all__ = ["NodeConfig", "AliceNode", "BobNode"]


#: Detector channels and the sync: the time-tagger's channels.
_CHANNELS = len(CHANNELS)
_DETECTORS = _CHANNELS - 1
#: Fraction bits of Bob's slot period (``period_high:period_low`` is 16 whole and 24 fraction bits).
_FRACTION_BITS = 24
#: Frame numbers are 32 bits everywhere on the wire.
_FRAME_WIDTH = 32


def _default_depths():
    return {
        "lookups": 1024, "matches": 1024, "test": 1024, "releases": 64,
        "tags": 4096, "detections": 4096, "answers": 1024,
        "key_commands": 64, "flips": 256, "key_words": 1024, "hash_blocks": 64, "seed": 1024, "hash": 256,
    }


@dataclass(frozen=True)
class NodeConfig:
    """What a node is built with.

    Attributes
    ----------
    board : str
        A name of :data:`qkdlink.wire.BOARD_IDS`, reported in HELLO and ``ident``.
    clock_hz, baud : int
        Reported in the ``clock_hz`` and ``baud`` registers (the node does not use them).
    phases : int
        Time-tagger bins per clock cycle (the sampler's samples a cycle), a power of two; Bob's ``samples`` has
        ``5 * phases`` bits.
    frame_bits : int
        Slots per frame as a power of two, at least 2.
    choice_frames : int
        Frames Alice's choice memory holds.
    key_bits : int
        Size of the key memory in bits; at most ``max_block``.
    event_depth : int
        Beats of Bob's two event queues (raw tags, detections), at least 3.
    detection_depth : int
        Detections Bob's detection memory holds until Alice answers them.
    toeplitz_width : int
        Bits a beat of the Toeplitz core and of the key memory's hash feed: 1, 2, 4 or 8 (one ``hash`` beat).
    toeplitz_accumulator : int
        Hash bits a pass of the Toeplitz core, a multiple of ``toeplitz_width``.
    max_block : int
        Largest key length ``n`` the Toeplitz core takes.
    depths : dict of str to int
        Each stream's ring in bytes (a power of two), by stream name; the role's streams must all be there.
    """
    board: str = "sim"
    clock_hz: int = 48_000_000
    baud: int = 3_000_000
    phases: int = 2
    frame_bits: int = 15
    choice_frames: int = 4
    key_bits: int = 1 << 16
    event_depth: int = 256
    detection_depth: int = 512
    toeplitz_width: int = 2
    toeplitz_accumulator: int = 1024
    max_block: int = 1 << 16
    depths: dict = field(default_factory=_default_depths)

    def __post_init__(self):
        if self.board not in BOARD_IDS:
            raise ValueError(f"Board must be one of {', '.join(BOARD_IDS)}, not {self.board!r}")
        for name in ("clock_hz", "baud"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value < 1 << 32:
                raise ValueError(f"{name} must be an integer in [0, 2**32), not {value!r}")
        if not isinstance(self.phases, int) or self.phases < 1 or self.phases & (self.phases - 1):
            raise ValueError(f"Phases must be a positive power of two, not {self.phases!r}")
        if not isinstance(self.frame_bits, int) or not 2 <= self.frame_bits <= 32:
            raise ValueError(f"Frame bits must be an integer from 2 to 32, not {self.frame_bits!r}")
        for name in ("choice_frames", "key_bits", "detection_depth", "max_block"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        if not isinstance(self.event_depth, int) or self.event_depth < 3:
            raise ValueError(f"Event depth must be an integer of at least 3, not {self.event_depth!r}")
        if self.toeplitz_width not in (1, 2, 4, 8):
            raise ValueError(f"Toeplitz width must be 1, 2, 4 or 8, not {self.toeplitz_width!r}")
        accumulator = self.toeplitz_accumulator
        if not isinstance(accumulator, int) or accumulator < 1 or accumulator % self.toeplitz_width:
            raise ValueError(f"Toeplitz accumulator must be a positive multiple of the width "
                             f"{self.toeplitz_width}, not {accumulator!r}")
        if self.key_bits > self.max_block:
            raise ValueError(f"Key bits must not exceed the largest block {self.max_block}, "
                             f"not {self.key_bits!r}")

    @classmethod
    def for_tests(cls, **changes):
        """Small sizes for fast simulation; ``changes`` override them."""
        settings = dict(
            board="sim", clock_hz=1_000_000, baud=0, phases=2, frame_bits=4, choice_frames=2, key_bits=256,
            event_depth=16, detection_depth=64, toeplitz_width=2, toeplitz_accumulator=16, max_block=256,
            depths={
                "lookups": 256, "matches": 64, "test": 64, "releases": 16,
                "tags": 512, "detections": 256, "answers": 64,
                "key_commands": 16, "flips": 64, "key_words": 64, "hash_blocks": 16, "seed": 64, "hash": 64,
            })
        settings.update(changes)
        return cls(**settings)

    def stream_depths(self, role):
        """The ``depths`` of ``role``'s streams; ValueError if one is missing."""
        streams = stream_map(role, frame_bits=self.frame_bits, phases=self.phases)
        missing = [stream.name for stream in streams if stream.name not in self.depths]
        if missing:
            raise ValueError(f"depths has no ring size for stream(s) {', '.join(missing)}")
        return {stream.name: self.depths[stream.name] for stream in streams}


def _forward(m, source, sink, *names):
    """Connect stream ``source`` to stream ``sink``, whose payloads differ, copying the fields ``names``."""
    m.d.comb += [sink.valid.eq(source.valid), source.ready.eq(sink.ready)]
    m.d.comb += [sink.p[name].eq(source.p[name]) for name in names]


class _SeedGearbox(wiring.Component):
    """Bytes into beats of ``width`` bits, low bits first, one a cycle; ``flush`` drops the rest of a partly used
    byte (a block's padding).

    Members
    -------
    i : In(stream.Signature(8))
    o : Out(stream.Signature(width))
    flush : In(1)
        The rest of the byte being split, if any of it has gone out, is dropped at the end of this cycle. Must not
        be high in a cycle in which a beat leaves on ``o``.
    """

    def __init__(self, width):
        if width not in (1, 2, 4, 8):
            raise ValueError(f"Width must be 1, 2, 4 or 8, not {width!r}")
        self._width = width
        super().__init__({
            "i":     In(stream.Signature(8)),
            "o":     Out(stream.Signature(width)),
            "flush": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        W = self._width
        ratio = 8 // W
        if ratio == 1:
            wiring.connect(m, wiring.flipped(self.i), wiring.flipped(self.o))
            return m
        byte = Signal(8)
        index = Signal(range(ratio))
        full = Signal()
        last = index == ratio - 1
        m.d.comb += [
            self.o.valid.eq(full),
            self.o.payload.eq(byte.word_select(index, W)),
            self.i.ready.eq(~full | (self.o.ready & last)),
        ]
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [byte.eq(self.i.payload), full.eq(1), index.eq(0)]
        with m.Elif(self.o.valid & self.o.ready):
            m.d.sync += index.eq(index + 1)
            with m.If(last):
                m.d.sync += full.eq(0)
        with m.If(self.flush & full & (index != 0)):
            m.d.sync += [full.eq(0), index.eq(0)]
        return m


class _Node(wiring.Component):
    _role = None

    def __init__(self, config, members):
        if not isinstance(config, NodeConfig):
            raise TypeError(f"Configuration must be a NodeConfig, not {config!r}")
        self._depths = config.stream_depths(self._role)
        self._config = config
        super().__init__({
            "i_bytes":     In(stream.Signature(8)),
            "o_bytes":     Out(stream.Signature(8)),
            "rx_error":    In(1),
            "rx_overflow": In(1),
            **members,
        })

    @property
    def config(self):
        return self._config

    def _link(self, m):
        """The framing and the host link, wired to the node's byte ports; returns the link."""
        config = self._config
        m.submodules.decoder = decoder = CobsDecoder()
        m.submodules.link = link = HostLink(
            self._role, board=config.board, phases=config.phases, frame_bits=config.frame_bits,
            depths=self._depths,
            constants={"clock_hz": config.clock_hz, "baud": config.baud, "key_bits": config.key_bits})
        m.submodules.encoder = encoder = CobsEncoder()
        wiring.connect(m, wiring.flipped(self.i_bytes), decoder.i)
        wiring.connect(m, decoder.o, link.i_frames)
        wiring.connect(m, link.o_frames, encoder.i)
        wiring.connect(m, encoder.o, wiring.flipped(self.o_bytes))
        m.d.comb += [link.rx_error.eq(self.rx_error), link.rx_overflow.eq(self.rx_overflow)]
        return link

    def _key(self, m, link, key):
        """The key memory filled from ``key`` (the sifter's), its commands, flips, read-out and the hash."""
        config = self._config
        W = config.toeplitz_width
        m.submodules.key_memory = key_memory = KeyMemory(max_bits=config.key_bits, width=W)
        wiring.connect(m, key, key_memory.i_bits)
        _forward(m, link.o_key_commands, key_memory.i_command, "op", "passes")
        _forward(m, key_memory.o_words, link.i_key_words, "data", "last")

        # A flip's index is truncated to the key memory's width; one with a bit set above that width would alias
        # a valid bit, so it does not go there and is counted here as the bad flip it is.
        flips = link.o_flips
        index_width = len(key_memory.i_flip.payload)
        aliased = Signal()
        aliased_flips = Signal(32)
        m.d.comb += [
            aliased.eq(flips.p.index[index_width:] != 0),
            key_memory.i_flip.valid.eq(flips.valid & ~aliased),
            key_memory.i_flip.payload.eq(flips.p.index),
            flips.ready.eq(key_memory.i_flip.ready | aliased),
        ]
        with m.If(flips.valid & aliased):
            m.d.sync += aliased_flips.eq(aliased_flips + 1)
        m.d.sync += link.bad_flips.eq(key_memory.bad_flip + aliased_flips)
        m.d.comb += link.key_count.eq(key_memory.count)

        m.submodules.toeplitz = toeplitz = ToeplitzHash(width=W, accumulator=config.toeplitz_accumulator,
                                                        max_n=config.max_block)
        wiring.connect(m, key_memory.o_key, toeplitz.i_key)
        # A block longer than the core takes would be truncated into another length: the core ignores it instead.
        blocks = link.o_hash_blocks
        too_long = (blocks.p.n > config.max_block) | (blocks.p.m > config.max_block)
        _forward(m, blocks, toeplitz.i_block)
        m.d.comb += [
            toeplitz.i_block.p.n.eq(Mux(too_long, 0, blocks.p.n)),
            toeplitz.i_block.p.m.eq(Mux(too_long, 0, blocks.p.m)),
        ]
        # A block's seed is padded to whole bytes; the core takes a block only while it takes no seed beat.
        m.submodules.seed_gearbox = gearbox = _SeedGearbox(W)
        m.d.comb += gearbox.flush.eq(toeplitz.i_block.valid & toeplitz.i_block.ready)
        _forward(m, link.o_seed, gearbox.i)
        m.d.comb += gearbox.i.payload.eq(link.o_seed.p.bits)
        wiring.connect(m, gearbox.o, toeplitz.i_seed)
        # The link's ready would reach the core's accumulator enables in the same cycle: 91 MHz on the ECP5-25F.
        m.submodules.hash_slice = hash_slice = RegisterSlice(toeplitz.o_hash.payload.shape())
        wiring.connect(m, toeplitz.o_hash, hash_slice.i)
        _forward(m, hash_slice.o, link.i_hash, "data", "last")
        return key_memory


class AliceNode(_Node):
    """Alice's node: slot sequencer, choice memory, sifter, key memory and Toeplitz core behind the host link.

    Parameters
    ----------
    config : NodeConfig

    Members
    -------
    i_bytes : In(stream.Signature(8))
        Wire bytes from the host (the UART receiver's).
    o_bytes : Out(stream.Signature(8))
        Wire bytes to the host.
    rx_error, rx_overflow : In(1)
        The UART receiver's pulses, counted in ``uart_errors`` and ``rx_overflows``.
    i_random : In(stream.Signature(RandomWord))
        One random word a slot for the sequencer; a slot with none on offer is not sent.
    modulators : Out(6)
        ``basis``, ``bit``, ``intensity`` (two bits), ``emit``, ``sync`` of the sequencer, in the order of
        :data:`qkdlink.boards.platforms.MODULATOR_OUTPUTS`.
    """

    _role = Role.ALICE

    def __init__(self, config):
        super().__init__(config, {
            "i_random":   In(stream.Signature(RandomWord)),
            "modulators": Out(6),
        })

    def elaborate(self, platform):
        config = self._config
        m = Module()
        link = self._link(m)

        m.submodules.sequencer = sequencer = SlotSequencer(frame_bits=config.frame_bits, frame_width=_FRAME_WIDTH)
        m.d.comb += [
            sequencer.period.eq(link.period),
            sequencer.p_z.eq(link.p_z),
            sequencer.intensity_thresholds.t0.eq(link.threshold0),
            sequencer.intensity_thresholds.t1.eq(link.threshold1),
            sequencer.enable.eq((link.control & Control.RUN) != 0),
            self.modulators.eq(Cat(sequencer.basis, sequencer.bit, sequencer.intensity, sequencer.emit,
                                   sequencer.sync)),
            link.starved.eq(sequencer.starved),
        ]
        wiring.connect(m, wiring.flipped(self.i_random), sequencer.i_random)

        m.submodules.choices = choices = ChoiceMemory(frame_bits=config.frame_bits, frames=config.choice_frames,
                                                      frame_width=_FRAME_WIDTH)
        wiring.connect(m, sequencer.o_choices, choices.i_choices)
        m.d.comb += [
            sequencer.i_frame_free.eq(choices.o_frame_free),
            link.bad_lookups.eq(choices.bad_lookup),
            link.bad_releases.eq(choices.bad_release),
        ]
        _forward(m, link.o_lookups, choices.i_lookup, "frame", "slot", "basis")
        _forward(m, link.o_releases, choices.i_release)
        m.d.comb += choices.i_release.payload.eq(link.o_releases.p.frame)

        m.submodules.sifter = sifter = Sifter()
        _forward(m, choices.o_lookup, sifter.i_detections, "basis", "bit", "alice_basis", "intensity")
        _forward(m, sifter.o_match, link.i_matches, "match", "intensity")
        _forward(m, sifter.o_test, link.i_test, "bit", "intensity")

        self._key(m, link, sifter.o_key)
        return m


class BobNode(_Node):
    """Bob's node: time-tagger, slot assigner, squasher, detection memory, sifter, key memory and Toeplitz core
    behind the host link.

    Parameters
    ----------
    config : NodeConfig

    Members
    -------
    i_bytes, o_bytes, rx_error, rx_overflow
        As for :class:`AliceNode`.
    samples : In(5 * phases)
        The sampler's output, channel-major (bit ``c * phases + k`` is channel ``c``'s sample ``k``), as
        :class:`~qkdlink.gateware.timetagger.TimeTagger` takes it; asynchronous.
    i_random : In(stream.Signature(2))
        Random bits for the squasher, one beat per detection.
    """

    _role = Role.BOB

    def __init__(self, config):
        super().__init__(config, {
            "samples":  In(_CHANNELS * config.phases),
            "i_random": In(stream.Signature(2)),
        })

    def elaborate(self, platform):
        config = self._config
        m = Module()
        link = self._link(m)
        run = (link.control & Control.RUN) != 0
        tags = (link.control & Control.TAGS) != 0

        m.submodules.tagger = tagger = TimeTagger(channels=_CHANNELS, phases=config.phases)
        m.d.comb += [
            tagger.i_samples.eq(self.samples),
            tagger.dead_cycles.eq(link.dead_cycles),
            link.edges.eq(tagger.edges),
            link.suppressed.eq(tagger.suppressed),
        ]
        events = tagger.o_events

        # The raw events, for calibration.
        m.submodules.tag_queue = tag_queue = EventQueue(event_layout(_CHANNELS, config.phases),
                                                        config.event_depth)
        m.d.comb += [
            tag_queue.i.valid.eq(events.valid & tags),
            tag_queue.i.payload.eq(events.payload),
            link.tag_overflows.eq(tag_queue.overflow),
        ]
        raw = tag_queue.o
        _forward(m, raw, link.i_tags, "cycle", "hits")
        m.d.comb += [link.i_tags.p[f"fine{channel}"].eq(raw.p.fine[channel]) for channel in range(_CHANNELS)]

        m.submodules.assigner = assigner = SlotAssigner(
            detectors=_DETECTORS, phases=config.phases, frame_bits=config.frame_bits,
            fraction_bits=_FRACTION_BITS, frame_width=_FRAME_WIDTH)
        m.d.comb += [
            assigner.i_events.valid.eq(events.valid & run),
            assigner.i_events.payload.eq(events.payload),
            assigner.delay.eq(link.delay),
            assigner.period.eq(Cat(link.period_low, link.period_high)),
            assigner.gate_start.eq(link.gate_start),
            assigner.gate_width.eq(link.gate_width),
            link.frames.eq(assigner.frames),
            link.gated.eq(assigner.gated),
            link.outside.eq(assigner.outside),
            link.overrun.eq(assigner.overrun),
        ]

        layout = detection_layout(frame_width=_FRAME_WIDTH, frame_bits=config.frame_bits, detectors=_DETECTORS)
        m.submodules.detection_queue = detection_queue = EventQueue(layout, config.event_depth)
        m.submodules.squasher = squasher = Squasher(frame_width=_FRAME_WIDTH, frame_bits=config.frame_bits,
                                                    detectors=_DETECTORS)
        wiring.connect(m, assigner.o_detections, detection_queue.i)
        wiring.connect(m, detection_queue.o, squasher.i_detections)
        wiring.connect(m, wiring.flipped(self.i_random), squasher.i_random)
        m.d.comb += link.detection_overflows.eq(detection_queue.overflow)

        # Each squashed detection goes both to the host (frame, slot, basis) and into the detection memory
        # (basis, bit), in one transfer when both have room. As in the bench top, a two-entry FIFO of flip-flops
        # behind the deep one takes its read path alone.
        m.submodules.detection_memory = memory = SyncFIFOBuffered(width=2, depth=config.detection_depth)
        m.submodules.detection_head = head = SyncFIFO(width=2, depth=2)
        squashed = squasher.o_detections
        announce = link.i_detections
        m.d.comb += [
            memory.w_data.eq(Cat(squashed.p.basis, squashed.p.bit)),
            memory.w_en.eq(squashed.valid & announce.ready),
            announce.valid.eq(squashed.valid & memory.w_rdy),
            announce.p.frame.eq(squashed.p.frame),
            announce.p.slot.eq(squashed.p.slot),
            announce.p.basis.eq(squashed.p.basis),
            squashed.ready.eq(memory.w_rdy & announce.ready),
            head.w_data.eq(memory.r_data),
            head.w_en.eq(memory.r_rdy),
            memory.r_en.eq(head.w_rdy),
        ]

        # Alice's answer to each detection, joined with it.
        m.submodules.sifter = sifter = Sifter()
        answers = link.o_answers
        joined = sifter.i_detections
        m.d.comb += [
            joined.valid.eq(head.r_rdy & answers.valid),
            joined.p.basis.eq(head.r_data[0]),
            joined.p.bit.eq(head.r_data[1]),
            joined.p.alice_basis.eq(answers.p.alice_basis),
            joined.p.intensity.eq(answers.p.intensity),
            head.r_en.eq(joined.ready & answers.valid),
            answers.ready.eq(joined.ready & head.r_rdy),
            sifter.o_match.ready.eq(1),
        ]
        _forward(m, sifter.o_test, link.i_test, "bit", "intensity")

        self._key(m, link, sifter.o_key)
        return m
