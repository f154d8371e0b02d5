"""The classical channel between Alice and Bob, as each side's endpoint sees it.

Alice and Bob exchange :class:`~qkdlink.host.messages.Message` objects and nothing else. An endpoint encodes
what it sends and decodes what it receives, so the in-process channel exercises the same bytes a network channel
carries; the TCP channel with Wegman-Carter authentication implements the same interface.
"""

import queue

from .messages import Message, ProtocolError


__all__ = ["Endpoint", "LocalChannel", "ChannelClosed"]


class ChannelClosed(ProtocolError):
    """The peer went away or did not answer in time."""


class Endpoint:
    """One side of a channel: :meth:`send` and :meth:`receive` messages, counting what goes through."""

    def __init__(self, name):
        self.name = name
        self.messages_sent = 0
        self.bytes_sent = 0

    def send(self, message):
        data = message.encode()
        self.messages_sent += 1
        self.bytes_sent += len(data)
        self._send_bytes(data)

    def receive(self, kind=None, *, timeout=60.0):
        """The next message; with ``kind``, raise :class:`ProtocolError` unless it is of that kind.

        A peer's abort message is raised as :class:`ProtocolError` carrying its reason.
        """
        try:
            message = Message.decode(self._receive_bytes(timeout))
        except ValueError as error:
            raise ProtocolError(f"{self.name}: malformed message from the peer: {error}") from None
        if message.kind == "abort" and kind != "abort":
            raise ProtocolError(f"the peer aborted: {message['reason']}")
        return message if kind is None else message.expect(kind)

    def _send_bytes(self, data):
        raise NotImplementedError

    def _receive_bytes(self, timeout):
        raise NotImplementedError


class _QueueEndpoint(Endpoint):
    def __init__(self, name, inbox, outbox):
        super().__init__(name)
        self._inbox = inbox
        self._outbox = outbox

    def _send_bytes(self, data):
        self._outbox.put(data)

    def _receive_bytes(self, timeout):
        try:
            return self._inbox.get(timeout=timeout)
        except queue.Empty:
            raise ChannelClosed(f"{self.name}: no message from the peer within {timeout} s") from None


class LocalChannel:
    """An in-process channel: :meth:`pair` gives Alice's and Bob's endpoints, joined by two queues."""

    @staticmethod
    def pair():
        to_alice, to_bob = queue.Queue(), queue.Queue()
        return _QueueEndpoint("alice", to_alice, to_bob), _QueueEndpoint("bob", to_bob, to_alice)
