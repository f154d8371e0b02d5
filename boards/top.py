"""The board tops: a node of the QKD link on a real board, with its clocks, pins, UART and random source.

:class:`BoardTop` puts :class:`qkdlink.gateware.node.AliceNode` or :class:`~qkdlink.gateware.node.BobNode` on a
board of :data:`qkdlink.boards.platforms.BOARDS`, sized by :func:`node_config`:

- the ``sync`` clock from the board's oscillator through a PLL (:mod:`qkdlink.boards.clocks`); on Bob's ECP5 with
  the gearbox sampler, also its edge clock;
- Bob: the ``detectors`` pins through the board's sampler (``board.phases`` samples a cycle) into the node;
- Alice: the node's modulator outputs on the ``modulators`` pins;
- the host link: the ``uart`` pins through :class:`~qkdlink.gateware.uart.UARTRx` into the node's wire bytes,
  and its replies through :class:`~qkdlink.gateware.uart.UARTTx` (the host link queues the requests that arrive
  while a reply goes out, so the host may pipeline them);
- the ``qrng`` pins through :class:`~qkdlink.gateware.qrng.QRNGInput` into the node's random words (Alice's
  :class:`~qkdlink.gateware.sequencer.RandomWord` a slot, Bob's two squasher bits a detection);
- two LEDs: one lit once the QRNG has failed a health test, the other flashing with each byte to or from the
  host.

:func:`check_fit` refuses, before synthesis, a board whose sizes its device cannot hold.
"""

import math

from amaranth import *
from amaranth.lib import io, wiring

from ..gateware.node import AliceNode, BobNode, NodeConfig
from ..gateware.qrng import QRNGInput
from ..gateware.sampler import DDRSampler, ECP5GearboxSampler
from ..gateware.sequencer import RandomWord
from ..gateware.slots import detection_layout
from ..gateware.timetagger import event_layout
from ..gateware.uart import UARTRx, UARTTx, uart_divisor
from ..wire import Role
from .clocks import add_gearbox_domains, add_sync_domain, ecp5_pll_settings, ice40_pll_settings
from .platforms import BLOCK_RAMS, DETECTOR_CHANNELS, SPRAM_WORDS, Board, board as lookup_board


__all__ = ["BoardTop", "node_config", "sync_frequency", "memory_blocks", "check_fit"]


# Block RAM shapes (width, depth) that Yosys maps memories to: iCE40 SB_RAM40_4K, ECP5 DP16KD.
_RAM_SHAPES = {
    "iCE40": [(16, 256), (8, 512), (4, 1024), (2, 2048)],
    "ecp5":  [(36, 512), (18, 1024), (9, 2048), (4, 4096), (2, 8192), (1, 16384)],
}

# Bytes of the host link's receive queue (gateware/hostlink.py).
_LINK_RX_BYTES = 1024

# The activity LED stays lit for 16 ticks after a byte; a tick is a period of a 16-bit maximal LFSR (65535 cycles,
# 2.7 ms at 24 MHz), which needs no carry chain: a long counter's chain, split up on a full UP5K, ran at 26 MHz.
_TICK_LFSR_BITS = 16
_TICK_TAPS = (15, 14, 12, 3)            # x^16 + x^15 + x^13 + x^4 + 1
_ACTIVITY_TICKS = 16



def sync_frequency(board, role):
    """The ``sync`` frequency in Hz that the PLL of ``board`` reaches for ``role``, near
    ``board.node_frequency``."""
    reference = board.platform().default_clk_frequency
    if Role(role) is Role.BOB and board.phases == 4:
        return ecp5_pll_settings(reference, 2 * board.node_frequency)[3] / 2
    if board.family == "iCE40":
        return ice40_pll_settings(reference, board.node_frequency)[3]
    return ecp5_pll_settings(reference, board.node_frequency)[3]


def node_config(board, role):
    """The :class:`qkdlink.gateware.node.NodeConfig` of ``role`` on ``board`` (a :class:`Board` or its name)."""
    board = lookup_board(board)
    role = Role(role)
    return NodeConfig(
        board=board.name, clock_hz=round(sync_frequency(board, role)), baud=board.baud, phases=board.phases,
        frame_bits=board.frame_bits, choice_frames=board.choice_frames, key_bits=board.key_bits,
        event_depth=board.event_depth, detection_depth=board.detection_depth,
        toeplitz_width=board.toeplitz_width, toeplitz_accumulator=board.node_toeplitz_accumulator,
        max_block=board.max_block, depths=board.stream_depths(role))


def _blocks(family, width, depth):
    """Block RAMs of ``family`` that a memory of ``depth`` words of ``width`` bits takes."""
    return min(math.ceil(width / ram_width) * math.ceil(depth / ram_depth)
               for ram_width, ram_depth in _RAM_SHAPES[family])


def memory_blocks(board, role):
    """Estimate the memories of ``role`` on ``board``: ``{memory: block RAMs}``, and on the iCE40 the SPRAMs of the
    choice and key memories under the key ``"spram"``.

    The figures are those of the memories the node's cores declare, mapped to the family's block RAM shapes; the
    place-and-route report is the final word.
    """
    board = lookup_board(board)
    role = Role(role)
    family = board.family
    config = node_config(board, role)
    blocks = {"link receive queue": _blocks(family, 8, _LINK_RX_BYTES),
              "link scratch memory": _blocks(family, 8, 256),
              "cobs encoder": _blocks(family, 8, 254)}
    for name, depth in config.depths.items():
        blocks[f"{name} ring"] = _blocks(family, 8, depth)
    words = {"key memory": math.ceil(board.key_bits / 16)}
    if role is Role.ALICE:
        words["choice memory"] = (board.choice_frames << board.frame_bits) // 4
    else:
        channels = len(DETECTOR_CHANNELS)
        blocks["tag queue"] = _blocks(family, Shape.cast(event_layout(channels, board.phases)).width,
                                      board.event_depth)
        blocks["detection queue"] = _blocks(
            family, Shape.cast(detection_layout(frame_width=32, frame_bits=board.frame_bits,
                                                detectors=channels - 1)).width,
            board.event_depth)
        blocks["detection memory"] = _blocks(family, 2, board.detection_depth)
    if family == "iCE40":
        blocks["spram"] = sum(math.ceil(count / SPRAM_WORDS) for count in words.values())
    else:
        for name, count in words.items():
            blocks[name] = _blocks(family, 16, count)
    return blocks


def check_fit(board, role):
    """Raise :class:`ValueError` if ``role`` on ``board`` cannot fit its device: a key block larger than the
    Toeplitz core takes, a ring that is not a power of two, or memories beyond the device's block RAM (or, on the
    UP5K, its four SPRAMs), with the figures of each."""
    board = lookup_board(board)
    role = Role(role)
    where = f"{board.name} ({board.device}), {role.name.lower()}"
    if role.name.lower() in board.unsupported:
        raise ValueError(f"{where}: {board.unsupported[role.name.lower()]}")
    if board.key_bits > board.max_block:
        raise ValueError(f"{where}: a key block of {board.key_bits} bits is larger than the largest block "
                         f"{board.max_block} the Toeplitz core takes")
    for name, depth in board.stream_depths(role).items():
        if not isinstance(depth, int) or depth < 8 or depth & (depth - 1):
            raise ValueError(f"{where}: the {name} ring must be a power of two of at least 8 bytes, not "
                             f"{depth!r}")
    blocks = memory_blocks(board, role)
    spram = blocks.pop("spram", 0)
    if spram > 4:
        raise ValueError(f"{where}: the choice and key memories need {spram} SPRAMs of 16384 words; the "
                         f"UP5K has 4 (choice_frames={board.choice_frames}, frame_bits={board.frame_bits}, "
                         f"key_bits={board.key_bits})")
    count, bits = BLOCK_RAMS[board.device]
    needed = sum(blocks.values())
    if needed > count:
        detail = ", ".join(f"{name} {number}" for name, number in sorted(blocks.items(), key=lambda x: -x[1]))
        raise ValueError(f"{where}: the memories need {needed} block RAMs of {bits // 1024} kbit, the device has "
                         f"{count}: {detail}")
    return blocks


class BoardTop(Elaboratable):
    """``role`` (a :class:`qkdlink.wire.Role`) on ``board`` (a :class:`Board` or its name), ready to build.

    Raises :class:`ValueError` at construction if the board's sizes do not fit its device (:func:`check_fit`) or
    its clock cannot make the UART's rate within 2 %.

    Attributes
    ----------
    board : Board
    role : Role
    config : NodeConfig
        The node's sizes and constants.
    divisor : int
        Clock cycles per UART bit.
    """

    def __init__(self, board, role):
        self.board = board = lookup_board(board)
        self.role = role = Role(role)
        check_fit(board, role)
        self.config = node_config(board, role)
        self.divisor = uart_divisor(self.config.clock_hz, board.baud)

    def elaborate(self, platform):
        board, role = self.board, self.role
        m = Module()

        if role is Role.BOB:
            pins = platform.request("detectors", 0, dir="-")
            if board.phases == 4:
                add_gearbox_domains(m, platform, board.node_frequency)
                m.submodules.sampler = sampler = ECP5GearboxSampler(pins)
            else:
                add_sync_domain(m, platform, board.node_frequency)
                m.submodules.sampler = sampler = DDRSampler(pins)
            if sampler.phases != board.phases:
                raise ValueError(f"{board.name}: the sampler gives {sampler.phases} samples a cycle, the board "
                                 f"names {board.phases}")
            m.submodules.node = node = BobNode(self.config)
            m.d.comb += node.samples.eq(sampler.o_samples)
            random_shape = 2
        else:
            add_sync_domain(m, platform, board.node_frequency)
            m.submodules.node = node = AliceNode(self.config)
            m.submodules.modulators = modulators = io.Buffer("o", platform.request("modulators", 0, dir="-"))
            m.d.comb += modulators.o.eq(node.modulators)
            random_shape = RandomWord

        uart = platform.request("uart", 0, dir="-")
        m.submodules.rx_pin = rx_pin = io.Buffer("i", uart.rx)
        m.submodules.tx_pin = tx_pin = io.Buffer("o", uart.tx)
        m.submodules.uart_rx = uart_rx = UARTRx(divisor=self.divisor)
        m.submodules.uart_tx = uart_tx = UARTTx(divisor=self.divisor)
        m.d.comb += [
            uart_rx.rx.eq(rx_pin.i),
            tx_pin.o.eq(uart_tx.tx),
            node.rx_error.eq(uart_rx.error),
            node.rx_overflow.eq(uart_rx.overflow),
        ]
        wiring.connect(m, uart_rx.o, node.i_bytes)
        wiring.connect(m, node.o_bytes, uart_tx.i)

        qrng_pins = platform.request("qrng", 0, dir="-")
        m.submodules.qrng_clock = qrng_clock = io.Buffer("i", qrng_pins.clock)
        m.submodules.qrng_data = qrng_data = io.Buffer("i", qrng_pins.data)
        m.submodules.qrng = qrng = QRNGInput(random_shape)
        m.d.comb += [qrng.clock.eq(qrng_clock.i), qrng.data.eq(qrng_data.i)]
        wiring.connect(m, qrng.o, node.i_random)

        failed_led, activity_led = self._status_leds(m, platform)
        lfsr = Signal(_TICK_LFSR_BITS, init=1)
        m.d.sync += lfsr.eq(Cat(Cat(lfsr[tap] for tap in _TICK_TAPS).xor(), lfsr[:-1]))
        tick = Signal()
        m.d.sync += tick.eq(lfsr == 1)
        activity = Signal(range(_ACTIVITY_TICKS + 1))
        byte = (uart_rx.o.valid & uart_rx.o.ready) | (uart_tx.i.valid & uart_tx.i.ready)
        with m.If(byte):
            m.d.sync += activity.eq(_ACTIVITY_TICKS)
        with m.Elif(tick & (activity != 0)):
            m.d.sync += activity.eq(activity - 1)
        lit = Signal()
        m.d.sync += lit.eq(activity != 0)
        m.d.comb += [failed_led.eq(qrng.failed), activity_led.eq(lit)]
        return m

    @staticmethod
    def _status_leds(m, platform):
        """Output signals of the QRNG-failed LED (red where there is one) and the activity LED (green)."""
        leds = []
        if platform.resources.get(("led", 1)) is not None:
            pins = [platform.request("led", 0, dir="-"), platform.request("led", 1, dir="-")]
        else:
            rgb = platform.request("rgb_led", 0, dir="-")
            pins = [rgb.r, rgb.g]
        for index, pin in enumerate(pins):
            m.submodules[f"led{index}"] = buffer = io.Buffer("o", pin)
            leds.append(buffer.o)
        return leds
