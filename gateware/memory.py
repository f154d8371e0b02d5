"""A single-port RAM of 16-bit words with nibble write enables: SPRAM on the iCE40 UP5K, block RAM elsewhere.

The choice memory and the key memory are the large stores of the capture path. On the UP5K they would not fit in
its 120 kbit of block RAM but fit in its 1 Mbit of single-port RAM (four SB_SPRAM256KA of 16k x 16 bits, each with
a write mask per nibble), so both use this one interface, which is the SPRAM's: one access a cycle, read or write.
"""

from amaranth import *
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.vendor import SiliconBluePlatform


__all__ = ["SinglePortMemory"]


_SPRAM_DEPTH = 1 << 14


class SinglePortMemory(wiring.Component):
    """``depth`` words of 16 bits; one read or one write a cycle.

    Parameters
    ----------
    depth : int
        Number of words. On the UP5K at most 65536: whole SPRAMs of 16384 words, the last one partly used.

    Members
    -------
    addr : In(range(depth))
        Word to read or write this cycle.
    wdata : In(16)
    wmask : In(4)
        Nibbles of ``wdata`` to write at ``addr`` this cycle; zero is a read.
    rdata : Out(16)
        The word at the ``addr`` of the previous cycle, if that cycle was a read; undefined after a write (the
        SPRAM gives X).
    """

    def __init__(self, depth):
        if not isinstance(depth, int) or depth < 1:
            raise TypeError(f"Memory depth must be a positive integer, not {depth!r}")
        self._depth = depth
        super().__init__({
            "addr":  In(range(depth)),
            "wdata": In(16),
            "wmask": In(4),
            "rdata": Out(16),
        })

    @property
    def depth(self):
        return self._depth

    def elaborate(self, platform):
        if isinstance(platform, SiliconBluePlatform) and platform.device == "iCE40UP5K":
            return self._elaborate_spram()
        m = Module()
        m.submodules.memory = memory = Memory(shape=16, depth=self._depth, init=[])
        write = memory.write_port(granularity=4)
        read = memory.read_port()
        m.d.comb += [
            write.addr.eq(self.addr),
            write.data.eq(self.wdata),
            write.en.eq(self.wmask),
            read.addr.eq(self.addr),
            read.en.eq(self.wmask == 0),
            self.rdata.eq(read.data),
        ]
        return m

    def _elaborate_spram(self):
        banks = -(-self._depth // _SPRAM_DEPTH)
        if banks > 4:
            raise ValueError(f"SPRAM on the UP5K holds at most 4 x {_SPRAM_DEPTH} words, not {self._depth}")
        m = Module()
        address = Signal(14)
        m.d.comb += address.eq(self.addr)
        bank = Signal(range(banks))
        read_bank = Signal.like(bank)
        m.d.comb += bank.eq(self.addr >> 14)
        m.d.sync += read_bank.eq(bank)
        outputs = []
        for index in range(banks):
            data_out = Signal(16, name=f"spram{index}_data")
            selected = bank == index
            m.submodules[f"spram{index}"] = Instance("SB_SPRAM256KA",
                i_ADDRESS=address,
                i_DATAIN=self.wdata,
                i_MASKWREN=self.wmask,
                i_WREN=(self.wmask != 0) & selected,
                i_CHIPSELECT=1,
                i_CLOCK=ClockSignal(),
                i_STANDBY=0,
                i_SLEEP=0,
                i_POWEROFF=1,
                o_DATAOUT=data_out)
            outputs.append(data_out)
        m.d.comb += self.rdata.eq(Array(outputs)[read_bank])
        return m
