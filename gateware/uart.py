"""The board's serial port: 8N1 UART receiver and transmitter with stream interfaces.

Bytes go least significant bit first, framed by a start bit (0) and one stop bit (1); the line idles high. Both ends
run from the ``sync`` domain at ``divisor`` clock cycles per bit (:func:`uart_divisor`).
"""

from amaranth import *
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out


__all__ = ["uart_divisor", "UARTRx", "UARTTx"]


def uart_divisor(clock, baud):
    """Clock cycles per bit for ``baud`` from a ``clock`` Hz clock: ``round(clock / baud)``.

    Raises
    ------
    ValueError
        If the rate it gives is more than 2 % off ``baud`` (the receiver at the other end samples each bit near its
        middle, and 2 % over ten bits still leaves it there), or the divisor is below 4 (the receiver needs a few
        cycles per bit to find the middle).
    """
    if not clock > 0 or not baud > 0:
        raise ValueError(f"Clock and baud rate must be positive, not {clock!r} and {baud!r}")
    divisor = round(clock / baud)
    if divisor < 4:
        raise ValueError(f"A {clock!r} Hz clock is too slow for {baud!r} baud: divisor {divisor!r} is below 4")
    error = abs(clock / divisor - baud) / baud
    if error > 0.02:
        raise ValueError(f"A {clock!r} Hz clock gives {baud!r} baud only within {error:.1%}, not 2 %: "
                         f"divisor {divisor!r}")
    return divisor


def _check_divisor(divisor):
    if not isinstance(divisor, int):
        raise TypeError(f"Divisor must be an integer, not {divisor!r}")
    if divisor < 4:
        raise ValueError(f"Divisor must be at least 4, not {divisor!r}")


class _Serial(wiring.Component):
    """What both directions share: ``divisor`` clock cycles a bit."""

    def __init__(self, *, divisor):
        _check_divisor(divisor)
        self._divisor = divisor
        super().__init__()

    @property
    def divisor(self):
        return self._divisor


class UARTRx(_Serial):
    """UART receiver.

    A falling edge of the line starts a byte. The line is checked again ``divisor // 2`` cycles later, near the
    middle of the start bit: if it is high again the edge was a glitch and is ignored. Then each data bit and the
    stop bit are sampled ``divisor`` cycles apart. A byte whose stop bit is 0 is dropped with an ``error`` pulse,
    and no new start bit is looked for until the line is high (so a held-low line, a break, gives one error).

    Parameters
    ----------
    divisor : int
        Clock cycles per bit, at least 4.

    Members
    -------
    rx : In(1)
        The line; asynchronous (synchronised inside), idle high.
    o : Out(stream.Signature(8))
        The bytes received, from a register. A byte completes (at the middle of its stop bit) while the previous
        one is still offered and not taken in that cycle: the new byte is dropped and ``overflow`` pulses.
    error : Out(1)
        One-cycle pulse for a byte dropped because its stop bit was 0.
    overflow : Out(1)
        One-cycle pulse for a byte dropped because ``o`` still held one.
    """

    rx:       In(1)
    o:        Out(stream.Signature(8))
    error:    Out(1)
    overflow: Out(1)

    def elaborate(self, platform):
        m = Module()
        divisor = self._divisor

        line = Signal(init=1)
        m.submodules.sync = FFSynchronizer(self.rx, line, init=1)

        timer = Signal(range(divisor))
        bits = Signal(range(8))
        shift = Signal(8)

        m.d.sync += [self.error.eq(0), self.overflow.eq(0)]
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(~line):
                    m.d.sync += timer.eq(divisor // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                m.d.sync += timer.eq(timer - 1)
                with m.If(timer == 0):
                    m.d.sync += [timer.eq(divisor - 1), bits.eq(0)]
                    with m.If(line):
                        m.next = "IDLE"
                    with m.Else():
                        m.next = "DATA"
            with m.State("DATA"):
                m.d.sync += timer.eq(timer - 1)
                with m.If(timer == 0):
                    m.d.sync += [timer.eq(divisor - 1), shift.eq(Cat(shift[1:], line)), bits.eq(bits + 1)]
                    with m.If(bits == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                m.d.sync += timer.eq(timer - 1)
                with m.If(timer == 0):
                    with m.If(~line):
                        m.d.sync += self.error.eq(1)
                        m.next = "BREAK"
                    with m.Elif(self.o.valid & ~self.o.ready):
                        m.d.sync += self.overflow.eq(1)
                        m.next = "IDLE"
                    with m.Else():
                        m.d.sync += [self.o.payload.eq(shift), self.o.valid.eq(1)]
                        m.next = "IDLE"
            with m.State("BREAK"):
                with m.If(line):
                    m.next = "IDLE"
        return m


class UARTTx(_Serial):
    """UART transmitter.

    Each byte taken from ``i`` goes out as a start bit, its eight bits least significant first and a stop bit, each
    ``divisor`` cycles long. A byte offered by the end of a stop bit is taken then, and its start bit follows with no
    idle time: a stream that keeps up is sent at the full rate.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit, at least 4.

    Members
    -------
    i : In(stream.Signature(8))
        The bytes to send.
    tx : Out(1, init=1)
        The line, from a register; high when idle.
    """

    i:  In(stream.Signature(8))
    tx: Out(1, init=1)

    def elaborate(self, platform):
        m = Module()
        divisor = self._divisor

        timer = Signal(range(divisor))  # cycles left in the bit on the line, after this one
        pending = Signal(9)             # the bits still to send after it: data then stop
        left = Signal(range(10))

        with m.If(timer != 0):
            m.d.sync += timer.eq(timer - 1)
        with m.Elif(left != 0):
            m.d.sync += [
                self.tx.eq(pending[0]),
                pending.eq(pending >> 1),
                left.eq(left - 1),
                timer.eq(divisor - 1),
            ]
        with m.Else():
            m.d.comb += self.i.ready.eq(1)
            with m.If(self.i.valid):
                m.d.sync += [
                    self.tx.eq(0),
                    pending.eq(Cat(self.i.payload, C(1, 1))),
                    left.eq(9),
                    timer.eq(divisor - 1),
                ]
        return m
