"""The classical channel between Alice and Bob, as each side's endpoint sees it.

Alice and Bob exchange :class:`~qkdlink.host.messages.Message` objects and nothing else. An endpoint encodes
what it sends and decodes what it receives, so the in-process channel exercises the same bytes a network channel
carries. Two transports implement :class:`Endpoint`:

- :class:`LocalChannel`: two queues in one process (simulations, the demo); authenticated if given pads.
- :class:`TCPEndpoint`: a TCP connection between two nodes (:func:`connect`, :func:`listen`), always
  authenticated.

Authentication (:mod:`qkdlink.host.auth`) turns each encoded message into a frame, ``flag (1 byte) | sequence
number (8 bytes) | message``, and a tagged message's frame ends with its Wegman-Carter tag (16 bytes), which also
covers the untagged messages sent since the previous tag; on TCP each frame is preceded by its length (4 bytes,
little-endian). :meth:`Endpoint.send` tags a message unless told otherwise, and :meth:`Endpoint.receive` accepts only
tagged messages unless told otherwise; :attr:`Endpoint.unverified` counts the peer's messages received and still
waiting for their tag. A TCP session starts with a handshake:

1. Each side sends a *hello*, unauthenticated: ``b"QKDL"``, version (1 byte), its role (1-byte length and UTF-8),
   and how many bytes of each pad stream it has ever used (8 bytes each, in the order of
   :data:`~qkdlink.host.auth.STREAMS`).
2. A side that is behind on a stream discards pad bytes until it is where the peer is: a message sent but never
   received, or pad taken just before a crash, leaves the sides apart, and no pad byte may serve twice. A side
   more than ``max_skip`` bytes behind refuses: that is more than lost messages explain (the pads diverged, or the
   hello is forged to make us waste key).
3. Each side sends, authenticated as the first message of its direction (with a fresh hash key), both hellos as
   it saw them; each checks that the peer saw the same. A forged hello fails here.

Failures: :class:`ChannelClosed` when the peer went away or did not answer in time, :class:`AuthenticationFailed`
when a frame is not genuine (its ``kind``: ``"tag"``, ``"sequence"``, ``"truncated"``, ``"malformed"``,
``"untagged"``, ``"oversize"``, ``"handshake"``), :class:`~qkdlink.host.auth.PadExhausted` when a pad stream runs out. Each is counted in the
endpoint's :attr:`Endpoint.failures` and logged. An authentication failure or an exhausted pad ends the endpoint
for good (it refuses further use; the block in progress aborts and nothing from it enters a key); a TCP endpoint
ends on any failure, closing the connection so that the peer learns at once, because after a failed read it can
no longer tell where the next frame starts. A new connection is a new session.
"""

import collections
import logging
import queue
import select
import selectors
import socket
import struct
import threading
import time

from .messages import Message, ProtocolError


__all__ = ["Endpoint", "LocalChannel", "TCPEndpoint", "Listener", "connect", "listen",
           "ChannelClosed", "AuthenticationFailed", "MAX_FRAME"]


logger = logging.getLogger(__name__)


MAX_FRAME = 1 << 30                 # bytes: the largest frame accepted (a block's detections fit many times)
MAX_SKIP = 4096                     # pad bytes a side may discard at a handshake: some 200 lost tags
HANDSHAKE_TIMEOUT = 10.0            # seconds
SEND_TIMEOUT = 60.0                 # seconds for the peer to take one frame

_LENGTH = struct.Struct("<I")
_INTERRUPT = object()               # in a local endpoint's inbox: wake the waiting thread
_MAGIC = b"QKDL"
_VERSION = 1
_POSITION = struct.Struct("<Q")
_READ_CHUNK = 1 << 20


class ChannelClosed(ProtocolError):
    """The peer went away or did not answer in time, or the channel can no longer be trusted.

    Attributes
    ----------
    kind : str
        What happened, for the failure counters: ``"closed"``, ``"timeout"``, ``"lost"`` (a connection error), or
        a subclass's kinds.
    fatal : bool
        Whether the endpoint refuses further use after it.
    """

    fatal = False

    def __init__(self, message, *, kind="closed"):
        super().__init__(message)
        self.kind = kind


class AuthenticationFailed(ChannelClosed):
    """A frame from the peer is not genuine: forged, altered, replayed, reordered, reflected or cut short.

    ``kind`` says which check failed: ``"tag"``, ``"sequence"``, ``"truncated"``, ``"malformed"``,
    ``"untagged"``, ``"oversize"`` or ``"handshake"``. The endpoint refuses further use.
    """

    fatal = True

    def __init__(self, message, *, kind):
        super().__init__(message, kind=kind)


class Endpoint:
    """One side of a channel: :meth:`send` and :meth:`receive` messages, counting what goes through.

    Sending and receiving may happen in two threads at once; two threads must not both send (or both receive) if
    the order of their messages matters to the peer.

    Attributes
    ----------
    name : str
        The side, ``"alice"`` or ``"bob"``; it starts every error message.
    authenticator : qkdlink.host.auth.Authenticator or None
        Seals what is sent and checks what is received; ``None`` on an unauthenticated local channel.
    messages_sent, bytes_sent, messages_received, bytes_received : int
        Messages and their encoded bytes (without framing and tags).
    failures : collections.Counter
        Failures seen, by ``kind``.
    failure : ChannelClosed or None
        What ended this endpoint, if anything did.
    """

    _fragile = False                # whether any failure ends the endpoint (TCP: the stream loses its framing)

    def __init__(self, name, authenticator=None):
        self.name = name
        self.authenticator = authenticator
        self.messages_sent = 0
        self.bytes_sent = 0
        self.messages_received = 0
        self.bytes_received = 0
        self.failures = collections.Counter()
        self.failure = None
        self._send_lock = threading.Lock()
        self._receive_lock = threading.Lock()

    @property
    def pad_consumed(self):
        """Authentication pad bytes taken in this session, per stream (empty without authentication)."""
        return {} if self.authenticator is None else dict(self.authenticator.pad_consumed)

    @property
    def unverified(self):
        """The peer's messages received whose tag has not come yet (0 without authentication)."""
        return 0 if self.authenticator is None else self.authenticator.unverified

    def send(self, message, *, tagged=True):
        """Send ``message``; untagged, it is authenticated by the next tagged message this side sends, and the
        peer must not release anything that depends on it before that."""
        data = message.encode()
        with self._send_lock:
            self._check_usable()
            self._check_size(len(data))
            try:
                self._send_frame(data if self.authenticator is None else
                                 self.authenticator.seal(data, tagged=tagged))
            except ChannelClosed as error:
                self._failed(error)
                raise
            self.messages_sent += 1
            self.bytes_sent += len(data)

    def receive(self, kind=None, *, timeout=60.0, untagged=False):
        """The next message; with ``kind``, raise :class:`ProtocolError` unless it is of that kind.

        The message must come tagged unless ``untagged``: then it may wait for a later tag, and nothing that
        depends on it may be released before :attr:`unverified` is 0. A peer's abort message is raised as
        :class:`ProtocolError` carrying its reason.
        """
        message = self._receive(timeout, untagged)
        if message.kind == "abort" and kind != "abort":
            raise ProtocolError(f"the peer aborted: {message['reason']}")
        return message if kind is None else message.expect(kind)

    def skip_until(self, kind, *, timeout=60.0, limit=1 << 20):
        """Receive messages until one of ``kind``, which must come tagged (:meth:`expect_verified`); returns
        ``(message, aborts)``, ``aborts`` the peer's abort messages among those skipped. For the end of a block,
        when what is still in flight no longer matters; :class:`ProtocolError` after ``limit`` others."""
        aborts = []
        for _ in range(limit):
            message = self._receive(timeout, untagged=True)
            if message.kind == kind:
                self.expect_verified(f"the {kind} message")
                return message, aborts
            if message.kind == "abort" and len(aborts) < 16:
                aborts.append(message)
        raise ProtocolError(f"{self.name}: no {kind} message from the peer among {limit} messages")

    def expect_verified(self, what="the last message"):
        """Raise :class:`AuthenticationFailed`, ending the endpoint, if any message received waits for its tag:
        for a message received untagged-or-not before its kind was known, when that kind must come tagged."""
        if self.authenticator is not None:
            with self._receive_lock:
                self._guard(self.authenticator.expect_verified, what)

    def _guard(self, call, *args):
        try:
            return call(*args)
        except ChannelClosed as error:
            self._failed(error)
            raise

    def _receive(self, timeout, untagged):
        with self._receive_lock:
            self._check_usable()
            try:
                frame = self._receive_frame(timeout)
                data = frame if self.authenticator is None else self.authenticator.open(frame, untagged=untagged)
            except ChannelClosed as error:
                self._failed(error)
                raise
            self.messages_received += 1
            self.bytes_received += len(data)
        try:
            return Message.decode(data)
        except ValueError as error:
            raise ProtocolError(f"{self.name}: malformed message from the peer: {error}") from None

    def close(self):
        """End the endpoint; further use raises :class:`ChannelClosed`. From another thread than one waiting on
        the endpoint, :meth:`interrupt` first: it wakes that thread, which can then close."""
        if self.failure is None:
            self.failure = ChannelClosed(f"{self.name}: closed by this side", kind="closed")
        self._close_transport()

    def interrupt(self):
        """Wake a thread waiting on this endpoint, from another thread: its wait ends with :class:`ChannelClosed`
        (kind ``"closed"``) and the endpoint is of no further use; the peer learns that the channel closed."""
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def _check_usable(self):
        if self.failure is not None:
            error = AuthenticationFailed if isinstance(self.failure, AuthenticationFailed) else ChannelClosed
            raise error(f"{self.name}: the channel refuses further use after: {self.failure}",
                        kind=self.failure.kind)

    def _check_size(self, nbytes):
        pass

    def _failed(self, error):
        self.failures[error.kind] += 1
        if error.fatal or self._fragile:
            if self.failure is None:
                self.failure = error
            if isinstance(error, AuthenticationFailed) or error.kind == "pad exhausted":
                logger.error("%s", error)
            else:
                (logger.info if error.kind == "closed" else logger.warning)("%s", error)
            self._close_transport()
        else:
            logger.info("%s", error)

    def _close_transport(self):
        pass

    def _send_frame(self, frame):
        raise NotImplementedError

    def _receive_frame(self, timeout):
        raise NotImplementedError


class _QueueEndpoint(Endpoint):
    def __init__(self, name, inbox, outbox, authenticator=None):
        super().__init__(name, authenticator)
        self._inbox = inbox
        self._outbox = outbox

    def _send_frame(self, frame):
        self._outbox.put(frame)

    def _receive_frame(self, timeout):
        try:
            frame = self._inbox.get(timeout=timeout)
        except queue.Empty:
            raise ChannelClosed(f"{self.name}: no message from the peer within {timeout} s",
                                kind="timeout") from None
        if frame is _INTERRUPT:
            self._inbox.put(_INTERRUPT)         # for any later wait too
            raise ChannelClosed(f"{self.name}: interrupted by this side", kind="closed")
        return frame

    def interrupt(self):
        if self.failure is None:
            self.failure = ChannelClosed(f"{self.name}: interrupted by this side", kind="closed")
        self._inbox.put(_INTERRUPT)
        self._outbox.put(_INTERRUPT)            # the peer's next wait ends as if the connection closed


class LocalChannel:
    """An in-process channel: :meth:`pair` gives Alice's and Bob's endpoints, joined by two queues."""

    @staticmethod
    def authenticated_pair(pad_bytes, *, rekey_interval=None):
        """Alice's and Bob's endpoints, every message authenticated with a fresh pre-shared secret of
        ``pad_bytes`` a direction, drawn from the operating system: even a seeded simulation must not derive a
        secret from its seed (tags never change a key, so the simulation stays reproducible)."""
        import secrets
        from .auth import PadPool
        secret = secrets.token_bytes(2 * pad_bytes)
        return LocalChannel.pair(pads=(PadPool.from_secret(secret), PadPool.from_secret(secret)),
                                 rekey_interval=rekey_interval)

    @staticmethod
    def pair(*, pads=None, rekey_interval=None):
        """Alice's and Bob's endpoints.

        Parameters
        ----------
        pads : (pad, pad), optional
            Alice's and Bob's pad sources (:class:`~qkdlink.host.auth.PadPool`), with the same contents at the
            same positions: every message is then authenticated as on TCP. Without pads, nothing is.
        rekey_interval : int, optional
            Tags per direction between fresh hash keys (:data:`qkdlink.host.auth.REKEY_INTERVAL`).
        """
        to_alice, to_bob = queue.Queue(), queue.Queue()
        authenticators = (None, None)
        if pads is not None:
            from . import auth
            options = {} if rekey_interval is None else {"rekey_interval": rekey_interval}
            authenticators = tuple(auth.Authenticator(pad, role, **options) for pad, role in zip(pads, auth.ROLES))
        return (_QueueEndpoint("alice", to_alice, to_bob, authenticators[0]),
                _QueueEndpoint("bob", to_bob, to_alice, authenticators[1]))


class TCPEndpoint(Endpoint):
    """One side of an authenticated TCP connection to the peer; made by :func:`connect` and
    :meth:`Listener.accept`, which run the handshake of the module docstring.

    Attributes
    ----------
    peer : tuple
        The peer's address.
    pad_skipped : dict
        Pad bytes discarded at the handshake to catch up with the peer, per stream.
    max_frame : int
        The largest frame accepted or sent, in bytes.
    send_timeout : float
        Seconds the peer has to take one frame.
    """

    _fragile = True

    def __init__(self, sock, name, *, max_frame=MAX_FRAME, send_timeout=SEND_TIMEOUT):
        super().__init__(name)
        self.max_frame = max_frame
        self.send_timeout = send_timeout
        self.pad_skipped = {}
        self._sock = sock
        self._interrupted = False
        self._close_lock = threading.Lock()
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)      # many small questions and answers
            sock.setblocking(False)
            self.peer = sock.getpeername()
        except OSError as error:
            self._close_transport()
            raise ChannelClosed(f"{name}: connection lost: {error}", kind="lost") from None

    def __repr__(self):
        return f"<TCPEndpoint {self.name} peer={self.peer} {'failed' if self.failure else 'open'}>"

    def _start(self, pad, role, *, rekey_interval, timeout, max_skip):
        """The handshake (module docstring); on any failure the endpoint is closed and the error raised."""
        from . import auth
        try:
            positions = [pad.position(stream) for stream in auth.STREAMS]
            hello = _MAGIC + bytes([_VERSION, len(role)]) + role.encode() + b"".join(
                _POSITION.pack(position) for position in positions)
            self._send_frame(hello)
            peer_hello = bytes(self._receive_frame(timeout))
            peer_role, peer_positions = self._parse_hello(peer_hello, auth)
            if peer_role == role or peer_role not in auth.ROLES:
                raise AuthenticationFailed(f"{self.name}: the peer says it is {peer_role!r}; one side must be alice "
                                           f"and the other bob", kind="handshake")
            for stream, mine, theirs in zip(auth.STREAMS, positions, peer_positions):
                if theirs - mine > max_skip:
                    raise AuthenticationFailed(
                        f"{self.name}: the peer is {theirs - mine} bytes ahead on the {stream} pad, more than the "
                        f"{max_skip} that lost messages explain: the pads diverged, or the hello is forged",
                        kind="handshake")
            for stream, theirs in zip(auth.STREAMS, peer_positions):
                self.pad_skipped[stream] = auth.skip_to(pad, stream, theirs, max_skip=max_skip)
                if self.pad_skipped[stream]:
                    logger.warning("%s: discarded %d bytes of the %s pad to catch up with the peer", self.name,
                                   self.pad_skipped[stream], stream)
            options = {} if rekey_interval is None else {"rekey_interval": rekey_interval}
            self.authenticator = auth.Authenticator(pad, role, **options)
            hellos = {role: hello, peer_role: peer_hello}
            transcript = b"confirm" + b"".join(_LENGTH.pack(len(hellos[r])) + hellos[r] for r in auth.ROLES)
            self._send_frame(self.authenticator.seal(transcript))
            if self.authenticator.open(self._receive_frame(timeout)) != transcript:
                raise AuthenticationFailed(f"{self.name}: the peer saw other hellos than this side: the handshake "
                                           f"was tampered with", kind="handshake")
        except ChannelClosed as error:
            self._failed(error)
            raise
        except BaseException:
            self.close()
            raise
        logger.info("%s: authenticated session with %s", self.name, self.peer)

    def _parse_hello(self, hello, auth):
        size = len(_MAGIC) + 2
        if len(hello) < size or hello[:len(_MAGIC)] != _MAGIC or hello[len(_MAGIC)] != _VERSION:
            raise AuthenticationFailed(f"{self.name}: the peer's hello is not a qkdlink version {_VERSION} hello",
                                       kind="handshake")
        length = hello[size - 1]
        if len(hello) != size + length + _POSITION.size * len(auth.STREAMS):
            raise AuthenticationFailed(f"{self.name}: the peer's hello has {len(hello)} bytes", kind="handshake")
        try:
            peer_role = hello[size:size + length].decode()
        except UnicodeDecodeError:
            raise AuthenticationFailed(f"{self.name}: the peer's role is not UTF-8", kind="handshake") from None
        positions = [_POSITION.unpack_from(hello, size + length + _POSITION.size * index)[0]
                     for index in range(len(auth.STREAMS))]
        return peer_role, positions

    def _check_size(self, nbytes):
        overhead = self.authenticator.OVERHEAD if self.authenticator is not None else 0
        if nbytes + overhead > self.max_frame:
            raise ValueError(f"{self.name}: a {nbytes}-byte message does not fit in a frame of at most "
                             f"{self.max_frame} bytes")

    def _send_frame(self, frame):
        data = memoryview(_LENGTH.pack(len(frame)) + frame)     # one write for a small frame
        deadline = time.monotonic() + self.send_timeout
        while data:
            try:
                sent = self._socket().send(data)
            except (BlockingIOError, InterruptedError):
                if not self._wait(selectors.EVENT_WRITE, deadline):
                    raise ChannelClosed(f"{self.name}: the peer did not take a {len(frame)}-byte frame within "
                                        f"{self.send_timeout} s", kind="timeout") from None
                continue
            except OSError as error:
                raise ChannelClosed(f"{self.name}: connection lost: {error}", kind="lost") from None
            data = data[sent:]

    def _receive_frame(self, timeout):
        deadline = time.monotonic() + timeout
        header = self._read(_LENGTH.size, deadline, timeout, frame_bytes=None)
        (length,) = _LENGTH.unpack(header)
        if length > self.max_frame:
            raise AuthenticationFailed(f"{self.name}: authentication failed: the peer announces a frame of {length} "
                                       f"bytes, more than the {self.max_frame} accepted", kind="oversize")
        return self._read(length, deadline, timeout, frame_bytes=length)

    def _read(self, count, deadline, timeout, *, frame_bytes):
        """``count`` bytes; ``frame_bytes`` is None while reading a frame's length, else the frame's length."""
        buffer = bytearray()
        while len(buffer) < count:
            try:
                chunk = self._socket().recv(min(count - len(buffer), _READ_CHUNK))
            except (BlockingIOError, InterruptedError):
                if not self._wait(selectors.EVENT_READ, deadline):
                    if frame_bytes is None and not buffer:
                        raise ChannelClosed(f"{self.name}: no message from the peer within {timeout} s",
                                            kind="timeout") from None
                    raise ChannelClosed(f"{self.name}: a frame was still incomplete after {timeout} s",
                                        kind="timeout") from None
                continue
            except OSError as error:
                raise ChannelClosed(f"{self.name}: connection lost: {error}", kind="lost") from None
            if not chunk:
                if self._interrupted:
                    raise ChannelClosed(f"{self.name}: interrupted by this side", kind="closed")
                if frame_bytes is None and not buffer:
                    raise ChannelClosed(f"{self.name}: the peer closed the connection", kind="closed")
                got = len(buffer) + (0 if frame_bytes is None else _LENGTH.size)
                total = "?" if frame_bytes is None else _LENGTH.size + frame_bytes
                raise AuthenticationFailed(f"{self.name}: authentication failed: frame truncated, the connection "
                                           f"closed after {got} of {total} bytes", kind="truncated")
            buffer += chunk
        return buffer

    def _socket(self):
        sock = self._sock
        if sock is None:
            raise ChannelClosed(f"{self.name}: the connection was closed", kind="closed")
        return sock

    def _wait(self, events, deadline):
        """Whether the socket is ready for ``events`` before ``deadline``."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self._socket(), events)
                return bool(selector.select(remaining))
        except (ValueError, OSError):           # closed by another thread meanwhile
            raise ChannelClosed(f"{self.name}: the connection was closed", kind="closed") from None

    def interrupt(self):
        # A shutdown without the close: closing the socket could take the wake-up away from a thread waiting in
        # select, which would then sleep to its time-out.
        self._interrupted = True
        with self._close_lock:
            sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _close_transport(self):
        with self._close_lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)     # the peer (and a thread of ours waiting to read) learns now
            except OSError:
                pass
            sock.close()


class Listener:
    """A listening TCP socket that accepts the peer's connections (:func:`listen`)."""

    def __init__(self, host="127.0.0.1", port=0, *, backlog=4):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.create_server((host, port), family=family, backlog=backlog)

    @property
    def address(self):
        """``(host, port)`` listened on; the port is the one chosen if 0 was asked for."""
        return self._sock.getsockname()[:2]

    def __repr__(self):
        return f"<Listener {self.address}>"

    def accept(self, *, role, pad, timeout=HANDSHAKE_TIMEOUT, rekey_interval=None, max_skip=MAX_SKIP,
               max_frame=MAX_FRAME, send_timeout=SEND_TIMEOUT):
        """Wait up to ``timeout`` seconds for the peer, run the handshake and return the :class:`TCPEndpoint`.

        Parameters as for :func:`connect`. Raises :class:`ChannelClosed` if no peer connects in time.
        """
        self._sock.settimeout(timeout)
        try:
            sock, _ = self._sock.accept()
        except TimeoutError:
            raise ChannelClosed(f"{role}: no peer connected to {self.address} within {timeout} s",
                                kind="timeout") from None
        except OSError as error:
            raise ChannelClosed(f"{role}: cannot accept a connection: {error}", kind="closed") from None
        endpoint = TCPEndpoint(sock, role, max_frame=max_frame, send_timeout=send_timeout)
        endpoint._start(pad, role, rekey_interval=rekey_interval, timeout=timeout, max_skip=max_skip)
        return endpoint

    def pending(self, timeout=0.0):
        """Whether a connection waits to be accepted, within ``timeout`` seconds: then :meth:`accept` blocks no
        longer than the handshake."""
        readable, _, _ = select.select([self._sock], [], [], timeout)
        return bool(readable)

    def close(self):
        self._sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def listen(host="127.0.0.1", port=0, *, backlog=4):
    """A :class:`Listener` on ``host:port`` (port 0: any free port, see :attr:`Listener.address`)."""
    return Listener(host, port, backlog=backlog)


def connect(host, port, *, role, pad, timeout=HANDSHAKE_TIMEOUT, rekey_interval=None, max_skip=MAX_SKIP,
            max_frame=MAX_FRAME, send_timeout=SEND_TIMEOUT):
    """Connect to the peer at ``host:port``, run the handshake and return the :class:`TCPEndpoint`.

    Parameters
    ----------
    role : str
        This side, ``"alice"`` or ``"bob"``; the peer must be the other.
    pad
        This side's pad source (:class:`~qkdlink.host.auth.PadPool`, :class:`~qkdlink.host.auth.StorePad`); it
        needs ``take`` and ``position``.
    timeout : float
        Seconds for the connection and for each step of the handshake.
    rekey_interval : int, optional
        Tags per direction between fresh hash keys (:data:`qkdlink.host.auth.REKEY_INTERVAL`).
    max_skip : int
        The most pad bytes this side discards to catch up with the peer.
    max_frame : int
        The largest frame accepted or sent.
    send_timeout : float
        Seconds the peer has to take one frame.

    Raises
    ------
    ChannelClosed
        The peer cannot be reached or went away; :class:`AuthenticationFailed` if the handshake fails.
    """
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as error:
        raise ChannelClosed(f"{role}: cannot connect to {host}:{port}: {error}", kind="closed") from None
    endpoint = TCPEndpoint(sock, role, max_frame=max_frame, send_timeout=send_timeout)
    endpoint._start(pad, role, rekey_interval=rekey_interval, timeout=timeout, max_skip=max_skip)
    return endpoint
