"""Simulated boards on TCP, and a proxy that makes the line between host and board imperfect.

:func:`serve` puts any object with ``receive(data) -> bytes`` (a :class:`~qkdlink.sim.hostlink.HostLinkModel`, or
later the RTL under Verilator) behind a TCP port, so that the host's driver reaches it as ``socket://host:port``
exactly as it reaches a real board's UART. :class:`FaultyLink` sits between the two: it flips, drops and duplicates
bytes at given rates, and can pace each direction like a UART with a USB adapter's latency.
"""

import logging
import selectors
import socket
import threading
import time
from collections import deque

import numpy as np


__all__ = ["serve", "Server", "FaultyLink"]


logger = logging.getLogger(__name__)


class _Service:
    """A listening socket served by one thread, one connection at a time, until :meth:`close`."""

    def __init__(self, host, port, name):
        self._listener = socket.create_server((host, port))
        self._listener.setblocking(False)
        self._wake_r, self._wake_w = socket.socketpair()
        self._closed = threading.Event()
        self.address = self._listener.getsockname()[:2]
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @property
    def url(self):
        """The pyserial URL of the service."""
        return f"socket://{self.address[0]}:{self.address[1]}"

    def _run(self):
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._closed.is_set():
                selector.select()
                try:
                    connection, _ = self._listener.accept()
                except BlockingIOError:
                    continue
                except OSError:
                    break
                with connection:
                    connection.setblocking(True)
                    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    try:
                        self._connected(connection)
                    except OSError as error:
                        logger.debug("%s: connection ended: %s", self._thread.name, error)
                    except Exception:
                        logger.exception("%s: connection dropped", self._thread.name)

    def _wait_readable(self, sockets):
        """The sockets of ``sockets`` that can be read, or None once the service is closing."""
        with selectors.DefaultSelector() as selector:
            for sock in sockets:
                selector.register(sock, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            ready = [key.fileobj for key, _ in selector.select()]
        if self._closed.is_set() or self._wake_r in ready:
            return None
        return ready

    def close(self):
        if self._closed.is_set():
            return
        self._closed.set()
        self._wake_w.send(b"\0")
        self._thread.join()
        for sock in (self._listener, self._wake_r, self._wake_w):
            sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


class Server(_Service):
    """A board (from ``make_board()``) served on TCP; see :func:`serve`.

    Attributes
    ----------
    board
        The board being served; replaced by :meth:`reset`.
    lock : threading.Lock
        Held while the board handles received bytes: hold it too to touch the board from another thread (to
        produce into or consume from a model's streams).
    address : (str, int)
    url : str
        ``socket://host:port``, for :meth:`qkdlink.host.board.Board.open`.
    """

    def __init__(self, make_board, *, host="127.0.0.1", port=0):
        if not callable(make_board):
            raise TypeError(f"make_board must be callable, not {make_board!r}")
        super().__init__(host, port, "board server")
        self._make_board = make_board
        self.lock = threading.Lock()
        self.board = make_board()
        self._thread.start()

    def reset(self):
        """Replace the board with a fresh one, as a reset of a real board does (the connection stays)."""
        with self.lock:
            self.board = self._make_board()

    def _connected(self, connection):
        while self._wait_readable([connection]) is not None:
            data = connection.recv(1 << 16)
            if not data:
                return
            with self.lock:
                reply = self.board.receive(data)
            if reply:
                connection.sendall(reply)


def serve(make_board, *, host="127.0.0.1", port=0):
    """Serve the board ``make_board()`` on TCP (port 0: any free port) from a thread; the :class:`Server`.

    The board is any object with ``receive(data) -> bytes``: it gets the bytes of each TCP read and its result is
    sent back. Connections are accepted one at a time.
    """
    return Server(make_board, host=host, port=port)


class FaultyLink(_Service):
    """A TCP proxy to ``address`` that damages and paces the bytes between host and board.

    Each byte, in each direction, is independently dropped (probability ``drop``), has one random bit flipped
    (``flip``), or is sent twice (``duplicate``). The faults of each direction come from their own generator
    seeded with ``seed``, one draw per byte, so a run's damage depends only on the bytes, not on their timing.
    With ``rate`` (bytes per second) each direction is paced like a serial line of that rate, and every byte is
    delivered ``latency`` seconds after it left the line (a USB adapter's polling).

    Attributes
    ----------
    address, url
        Where the host connects.
    faults : dict
        Bytes dropped, flipped and duplicated so far, per direction (``"to_board"``, ``"to_host"``).
    """

    def __init__(self, address, *, flip=0.0, drop=0.0, duplicate=0.0, seed=0, rate=None, latency=0.0,
                 host="127.0.0.1"):
        for name, value in (("flip", flip), ("drop", drop), ("duplicate", duplicate)):
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be a probability, not {value!r}")
        if rate is not None and not rate > 0:
            raise ValueError(f"rate must be a positive number of bytes per second, not {rate!r}")
        if not latency >= 0:
            raise ValueError(f"latency must be non-negative, not {latency!r}")
        super().__init__(host, 0, "faulty link")
        self._target = tuple(address)
        self._probabilities = (drop, flip, duplicate)
        self._seed = seed
        self._rate = rate
        self._latency = latency
        self._connections = 0
        self.faults = {direction: {"dropped": 0, "flipped": 0, "duplicated": 0}
                       for direction in ("to_board", "to_host")}
        self._thread.start()

    def _connected(self, host_side):
        self._connections += 1
        with socket.create_connection(self._target) as board_side:
            board_side.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pipes = {
                host_side: _Pipe(self, board_side, "to_board", [self._seed, 0, self._connections]),
                board_side: _Pipe(self, host_side, "to_host", [self._seed, 1, self._connections]),
            }
            try:
                while (ready := self._wait_readable(list(pipes))) is not None:
                    for sock in ready:
                        data = sock.recv(1 << 16)
                        if not data:
                            return
                        pipes[sock].put(data)
            finally:
                for pipe in pipes.values():
                    pipe.stop()

    def _damage(self, data, direction, rng):
        drop, flip, duplicate = self._probabilities
        if not (drop or flip or duplicate):
            return data
        draws = rng.random((len(data), 4))
        values = np.frombuffer(data, np.uint8).copy()
        flipped = draws[:, 1] < flip
        values[flipped] ^= (1 << (draws[flipped, 3] * 8).astype(np.uint8)).astype(np.uint8)
        dropped = draws[:, 0] < drop
        duplicated = (draws[:, 2] < duplicate) & ~dropped
        counts = self.faults[direction]
        counts["dropped"] += int(dropped.sum())
        counts["flipped"] += int(flipped.sum())
        counts["duplicated"] += int(duplicated.sum())
        return np.repeat(values, 1 + duplicated.astype(np.int64) - dropped.astype(np.int64)).tobytes()


class _Pipe:
    """One direction of a :class:`FaultyLink` connection: damage, then (with a rate) pace."""

    def __init__(self, link, destination, direction, seed):
        self._link = link
        self._destination = destination
        self._direction = direction
        self._rng = np.random.default_rng(seed)
        self._paced = link._rate is not None
        if self._paced:
            self._queue = deque()           # (time the first byte leaves the line, data)
            self._line_free = 0.0
            self._condition = threading.Condition()
            self._stopped = False
            self._thread = threading.Thread(target=self._deliver, name=f"faulty link {direction}", daemon=True)
            self._thread.start()

    def put(self, data):
        data = self._link._damage(data, self._direction, self._rng)
        if not data:
            return
        if not self._paced:
            self._destination.sendall(data)
            return
        with self._condition:
            start = max(time.monotonic(), self._line_free)
            self._line_free = start + len(data) / self._link._rate
            self._queue.append((start, data))
            self._condition.notify()

    def _deliver(self):
        rate, latency = self._link._rate, self._link._latency
        # Deliver in slices of about half a millisecond of line time, like a USB adapter's packets.
        quantum = max(1, int(rate * 5e-4))
        sent = 0
        while True:
            with self._condition:
                while not self._queue and not self._stopped:
                    self._condition.wait()
                if self._stopped:
                    return
                start, data = self._queue[0]
            arrived = int((time.monotonic() - latency - start) * rate)
            if arrived < min(len(data), sent + quantum):
                time.sleep(max(0.0, start + latency + min(len(data), sent + quantum) / rate - time.monotonic()))
                continue
            arrived = min(arrived, len(data))
            try:
                self._destination.sendall(data[sent:arrived])
            except OSError:
                return
            sent = arrived
            if sent == len(data):
                sent = 0
                with self._condition:
                    self._queue.popleft()

    def stop(self):
        if self._paced:
            with self._condition:
                self._stopped = True
                self._condition.notify()
            self._thread.join()
