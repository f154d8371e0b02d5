"""Wire efficiency: bulk stream reads and writes through the host driver, as a fraction of a UART's line rate.

    python -m bench.wire [--megabytes 1] [--baud 3000000] [--latency 1e-3] [--windows 1 4 8] [--depths 4096 16384]

The board is the wire protocol's reference model (:class:`qkdlink.sim.hostlink.HostLinkModel`) behind a proxy
that paces each direction like an 8N1 UART (``baud / 10`` bytes a second) and delivers every byte ``latency``
seconds after it left the line, as a USB-serial adapter does. Behind the model, Alice's ``matches`` stream (1-byte
beats) is kept full and her ``flips`` stream (4-byte beats) drained, so the link alone limits the rate. Window 1 is
stop-and-wait, the baseline; the framing's own ceiling (data bytes over line bytes of a full frame) is printed too.

A read's bytes stay in the board's ring until an acknowledgement comes back, and a write's until the board reports
them consumed, so the ring must hold about two round trips of the line's bytes, besides the window's.
"""

import argparse
import multiprocessing
import time

import numpy as np

from bench.machine import describe
from qkdlink.host.board import Board
from qkdlink.sim.hostlink import HostLinkModel
from qkdlink.sim.serve import FaultyLink, serve
from qkdlink.wire import MAX_DATA, Role, stream_map


OUT, IN = "matches", "flips"


class _Loopback:
    """The model, with an endless producer behind ``OUT`` and a consumer behind ``IN`` that keeps what it takes."""

    def __init__(self, depth, pattern):
        streams = stream_map(Role.ALICE, frame_bits=16, phases=1)
        self.model = HostLinkModel(Role.ALICE, board="sim", phases=1, frame_bits=16,
                                   depths={stream.name: depth for stream in streams},
                                   constants={"clock_hz": 48_000_000, "baud": 0, "key_bits": 1 << 16})
        self.pattern = pattern
        self.produced = 0
        self.consumed = bytearray()

    def receive(self, data):
        free = self.model.streams[OUT].free
        if free:
            start = self.produced % len(self.pattern)
            self.model.produce(OUT, (self.pattern[start:] + self.pattern)[:free])
            self.produced += free
        reply = self.model.receive(data)
        self.consumed += self.model.consume(IN)
        return reply


def _board_side(connection, depth, pattern, rate, latency):
    """Serve the board behind the paced line until told to stop; send back the url, then what was consumed."""
    with serve(lambda: _Loopback(depth, pattern)) as server, \
            FaultyLink(server.address, rate=rate, latency=latency) as link:
        connection.send(link.url)
        connection.recv()
        with server.lock:
            connection.send(bytes(server.board.consumed))


def _framing_ceiling(beat_bytes, *, reply):
    data = MAX_DATA - MAX_DATA % beat_bytes
    body = (3 + 8 if reply else 2 + 5) + data + 4
    return data / (body + (body + 253) // 254 + 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=float, default=1.0, help="data per transfer (default: %(default)s)")
    parser.add_argument("--baud", type=int, default=3_000_000, help="UART rate, 8N1 (default: %(default)s)")
    parser.add_argument("--latency", type=float, default=1e-3,
                        help="seconds from the line to the host and back, each way (default: %(default)s)")
    parser.add_argument("--windows", type=int, nargs="+", default=[1, 4, 8],
                        help="requests in flight (default: %(default)s)")
    parser.add_argument("--depths", type=int, nargs="+", default=[4096, 16384],
                        help="stream buffers in bytes (default: %(default)s)")
    args = parser.parse_args()

    line_rate = args.baud / 10
    size = int(args.megabytes * 1e6) // 4 * 4
    pattern = np.random.default_rng(1).integers(0, 256, 65_536, np.uint8).tobytes()
    data = (pattern * (size // len(pattern) + 1))[:size]
    streams = {stream.name: stream for stream in stream_map(Role.ALICE, frame_bits=16, phases=1)}
    print(f"machine: {describe()}")
    print(f"line: {args.baud} baud 8N1 ({line_rate:,.0f} bytes/s each way), {args.latency * 1e3:g} ms latency each "
          f"way; {size:,} bytes a transfer")
    print()
    print("| transfer | buffer (bytes) | window | payload bytes/s | fraction of line rate | framing ceiling | "
          "retries |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    # The board and the paced line run in their own process, so that they do not compete with the driver for the
    # interpreter.
    context = multiprocessing.get_context("fork")
    for depth, window in ((depth, window) for depth in args.depths for window in args.windows):
        connection, child = context.Pipe()
        process = context.Process(target=_board_side, args=(child, depth, pattern, line_rate, args.latency))
        process.start()
        with Board.open(connection.recv(), window=window) as board:
            started = time.perf_counter()
            received = board.read_stream(OUT, size)
            read_time = time.perf_counter() - started
            if received != (pattern * (size // len(pattern) + 1))[:size]:
                raise SystemExit("bench.wire: the bytes read differ from those produced")
            started = time.perf_counter()
            board.write_stream(IN, data)
            write_time = time.perf_counter() - started
            board.read("magic")                 # the board has taken the last write
            connection.send("stop")
            if connection.recv() != data:
                raise SystemExit("bench.wire: the bytes written differ from those consumed")
            for name, elapsed, reply in ((f"read `{OUT}`", read_time, True), (f"write `{IN}`", write_time, False)):
                rate = size / elapsed
                ceiling = _framing_ceiling(streams[OUT if reply else IN].beat_bytes, reply=reply)
                print(f"| {name} | {depth} | {window} | {rate:,.0f} | {100 * rate / line_rate:.1f} % | "
                      f"{100 * ceiling:.1f} % | {board.counters.retries} |", flush=True)
        process.join()


if __name__ == "__main__":
    main()
