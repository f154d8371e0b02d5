"""COBS framing of the host link: wire bytes into frame bodies, reply bodies into wire bytes.

On the wire a frame is the COBS encoding of its body followed by a zero byte (``docs/protocol.md``).
:func:`qkdlink.host.wire.cobs_encode` and :func:`qkdlink.host.wire.cobs_decode` are the reference model.
"""

from amaranth import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out


__all__ = ["FrameByte", "ReplyByte", "CobsDecoder", "CobsEncoder"]


#: A decoded frame, beat by beat: its body bytes with ``end`` = 0, then one beat with ``end`` = 1 (``data`` 0) whose
#: ``error`` says whether the frame was not a COBS encoding.
FrameByte = data.StructLayout({"data": 8, "end": 1, "error": 1})

#: A body to encode, beat by beat: its bytes with ``end`` = 0, then one beat with ``end`` = 1 (``data`` ignored).
ReplyByte = data.StructLayout({"data": 8, "end": 1})


class CobsDecoder(wiring.Component):
    """Cut wire bytes into frames at zero bytes and decode each.

    Each frame gives the body :func:`~qkdlink.host.wire.cobs_decode` finds in it, then an end beat, with ``error``
    set exactly when ``cobs_decode`` raises (the frame ends inside a block); the body beats of such a frame are
    whatever had been decoded by then. A frame with no bytes (two zero bytes in a row) gives no beat at all. The
    decoder keeps no other state across frames, so the frame after a damaged one is decoded correctly.

    Each wire byte gives at most one beat, and with ``o`` not stalled one byte is taken every cycle. The beats come
    from a register, one cycle after their byte is taken.

    Members
    -------
    i : In(stream.Signature(8))
        Wire bytes; a zero byte ends a frame.
    o : Out(stream.Signature(FrameByte))
        Decoded frames.
    """

    i: In(stream.Signature(8))
    o: Out(stream.Signature(FrameByte))

    def elaborate(self, platform):
        m = Module()

        in_frame = Signal()     # a byte of the current frame has been taken
        left = Signal(8)        # bytes of the current block still to come; 0: the next byte is a code
        implied_zero = Signal() # the block that just ended is followed by a zero, if another block follows

        byte = self.i.payload
        m.d.comb += self.i.ready.eq(~self.o.valid | self.o.ready)
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)

        with m.If(self.i.valid & self.i.ready):
            with m.If(byte == 0):
                m.d.sync += [
                    self.o.valid.eq(in_frame),
                    self.o.p.data.eq(0),
                    self.o.p.end.eq(1),
                    self.o.p.error.eq(left != 0),
                    in_frame.eq(0),
                    left.eq(0),
                ]
            with m.Elif(left == 0):
                # The zero between two blocks is known only once the second block's code arrives: after the last
                # block of a frame there is none.
                m.d.sync += [
                    self.o.valid.eq(in_frame & implied_zero),
                    self.o.p.data.eq(0),
                    self.o.p.end.eq(0),
                    self.o.p.error.eq(0),
                    in_frame.eq(1),
                    left.eq(byte - 1),
                    implied_zero.eq(byte != 0xff),
                ]
            with m.Else():
                m.d.sync += [
                    self.o.valid.eq(1),
                    self.o.p.data.eq(byte),
                    self.o.p.end.eq(0),
                    self.o.p.error.eq(0),
                    left.eq(left - 1),
                ]
        return m


class CobsEncoder(wiring.Component):
    """Encode bodies for the wire: each body as ``cobs_encode(body) + b"\\0"`` exactly.

    The encoder takes the bytes of one block (up to 254 non-zero bytes, ended by a zero byte, the body's end or the
    254th byte) into a block RAM, then sends the block's code and its bytes, and the delimiter after a body's last
    block; only then does it take the next block's bytes. Taking and sending each go at one byte per cycle.

    Members
    -------
    i : In(stream.Signature(ReplyByte))
        Bodies to send.
    o : Out(stream.Signature(8))
        Wire bytes.
    """

    i: In(stream.Signature(ReplyByte))
    o: Out(stream.Signature(8))

    def elaborate(self, platform):
        m = Module()

        m.submodules.block = block = Memory(shape=8, depth=254, init=[])
        w_port = block.write_port()
        # A block is written only while it is taken and read only while it is sent, so transparency changes nothing
        # here; without it Yosys would add registers beside an iCE40 block RAM to give read-before-write.
        r_port = block.read_port(transparent_for=(w_port,))

        count = Signal(8)   # bytes in the block, 0 to 254; the block's code is count + 1
        sent = Signal(8)    # bytes of the block read from the memory
        last = Signal()     # the block ends the body: the delimiter follows it

        m.d.comb += [w_port.addr.eq(count), w_port.data.eq(self.i.p.data)]

        with m.FSM():
            with m.State("TAKE"):
                m.d.comb += self.i.ready.eq(1)
                with m.If(self.i.valid):
                    with m.If(self.i.p.end | (self.i.p.data == 0)):
                        m.d.sync += last.eq(self.i.p.end)
                        m.next = "CODE"
                    with m.Else():
                        m.d.comb += w_port.en.eq(1)
                        m.d.sync += count.eq(count + 1)
                        with m.If(count == 253):
                            m.d.sync += last.eq(0)
                            m.next = "CODE"
            with m.State("CODE"):
                m.d.comb += [
                    self.o.valid.eq(1),
                    self.o.payload.eq(count + 1),
                    r_port.addr.eq(0),
                ]
                with m.If(self.o.ready):
                    m.d.sync += sent.eq(1)
                    with m.If(count != 0):
                        m.next = "DATA"
                    with m.Elif(last):
                        m.next = "DELIMITER"
                    with m.Else():
                        m.next = "TAKE"
            with m.State("DATA"):
                # The read port holds its data while disabled, so the payload stays put while ``o`` is stalled.
                m.d.comb += [
                    self.o.valid.eq(1),
                    self.o.payload.eq(r_port.data),
                    r_port.addr.eq(sent),
                    r_port.en.eq(self.o.ready),
                ]
                with m.If(self.o.ready):
                    m.d.sync += sent.eq(sent + 1)
                    with m.If(sent == count):
                        m.d.sync += count.eq(0)
                        with m.If(last):
                            m.next = "DELIMITER"
                        with m.Else():
                            m.next = "TAKE"
            with m.State("DELIMITER"):
                m.d.comb += [self.o.valid.eq(1), self.o.payload.eq(0)]
                with m.If(self.o.ready):
                    m.next = "TAKE"
        return m
