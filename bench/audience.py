"""The broker benchmark's client: thousands of SSE subscribers and a few HTTP requests, all
on non-blocking sockets driven by one ``selectors`` loop in this process.

Each subscriber records, for every event it receives, the time from the server's stamp (the
event's data begins with the server's ``time.time_ns()``, taken just before it was
published) to the moment the kernel queued the bytes that brought the event's line on the
subscriber's socket (``SO_TIMESTAMPNS``, on Linux; elsewhere, the read itself): both are
``CLOCK_REALTIME``, one clock for every process. Over loopback that moment is the server's
write, so the figure is publish-to-socket, the server's own, whatever the time this one loop
takes to get round to the socket. A read that takes several events stamps them all with
the last one's arrival, which overstates the earlier ones.

A stalled subscriber connects and asks like the others, then never reads: its receive buffer
is as small as the kernel allows and its MSS is clamped to an Ethernet-sized one, as over a
real network. The kernel then holds about 30 to 45 KB for it before the server's write
blocks; over loopback's own MSS (64 KiB) it would hold about 3 MiB.
"""

from __future__ import annotations

import errno
import json
import platform
import re
import selectors
import socket
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Audience", "Request", "Subscriber"]

HEADER_END = b"\r\n\r\n"
STAMP = re.compile(rb"data: (\d+) ")
#: The longest the loop waits for a socket before it looks at its condition again, in seconds.
POLL = 0.05
#: Linux's ``SO_TIMESTAMPNS`` (also the type of the message that carries the stamp), which
#: Python's socket module does not name: 35 on the architectures with the generic socket
#: numbers, ``None`` where this does not know it (the read's own time is used there).
SO_TIMESTAMPNS = (
    35 if sys.platform == "linux" and platform.machine() in {"x86_64", "aarch64", "i686"} else None
)
#: Room for the one control message a read asks for: a ``struct timespec``.
_STAMP_SPACE = socket.CMSG_SPACE(16) if SO_TIMESTAMPNS is not None else 0


def _connect(
    port: int, *, receive_buffer: int | None = None, mss: int | None = None
) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    if mss is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, mss)
    if SO_TIMESTAMPNS is not None:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.setblocking(False)
    code = sock.connect_ex(("127.0.0.1", port))
    if code not in (0, errno.EINPROGRESS):
        raise OSError(code, f"connect: {errno.errorcode.get(code, code)}")
    return sock


def _request(method: str, target: str) -> bytes:
    """A request; all but the event streams' close their connection once answered."""
    if target == "/events":
        return b"GET /events HTTP/1.1\r\nhost: bench\r\naccept: text/event-stream\r\n\r\n"
    return (
        f"{method} {target} HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n"
        "content-length: 0\r\n\r\n"
    ).encode()


class Subscriber:
    """One ``GET /events`` stream."""

    __slots__ = ("closed", "events", "farewell", "head", "pending", "sock", "stalled")

    def __init__(self, sock: socket.socket, *, stalled: bool = False) -> None:
        self.sock = sock
        self.stalled = stalled
        self.head: bytes | None = b""  # None once the response head has arrived
        self.pending = b""  # the start of a line not yet complete
        self.events = 0
        self.closed = False  # the server ended the connection
        self.farewell = False  # a stalled one was sent streamkit's slow-subscriber event


class Request:
    """One request with ``connection: close``; its JSON answer once :attr:`done`."""

    __slots__ = ("answer", "data", "done", "sock", "target")

    def __init__(self, sock: socket.socket, target: str) -> None:
        self.sock = sock
        self.target = target
        self.data = bytearray()
        self.done = False
        self.answer: dict[str, Any] = {}

    def finish(self) -> None:
        head, _, body = bytes(self.data).partition(HEADER_END)
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"{self.target} answered {head[:80]!r}")
        if b"transfer-encoding: chunked" in head.lower():
            body = body.split(b"\r\n", 1)[1].rsplit(b"\r\n0\r\n", 1)[0]
        self.answer = json.loads(body)
        self.done = True


class Audience:
    """Subscribers of one server (or of workers sharing one port), read as events arrive.

    :param port: the server's port.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.selector = selectors.DefaultSelector()
        self.subscribers: list[Subscriber] = []
        self.stalled: list[Subscriber] = []
        #: nanoseconds from stamp to arrival, of every event read since the last take
        self.latencies: list[int] = []
        #: events received so far, by every reading subscriber together
        self.delivered = 0
        self.requests: set[Request] = set()
        self._get = _request("GET", "/events")
        self._buffer = bytearray(1 << 18)

    # -- opening and closing ------------------------------------------------------------

    def open(self, count: int, *, window: int = 256, within: float = 120.0) -> None:
        """Open *count* more subscribers, at most *window* waiting for their response head at
        a time; return once every one has its head (which is not yet its subscription)."""
        deadline = time.monotonic() + within
        waiting: set[Subscriber] = set()
        to_open = count
        while to_open or waiting:
            while to_open and len(waiting) < window:
                subscriber = Subscriber(_connect(self.port))
                self.subscribers.append(subscriber)
                self.selector.register(subscriber.sock, selectors.EVENT_WRITE, subscriber)
                waiting.add(subscriber)
                to_open -= 1
            self._step(deadline)
            waiting = {subscriber for subscriber in waiting if subscriber.head is not None}

    def open_stalled(self, count: int, *, receive_buffer: int = 1024, mss: int = 1460) -> None:
        """Open *count* subscribers that send their request and never read."""
        for _ in range(count):
            sock = _connect(self.port, receive_buffer=receive_buffer, mss=mss)
            subscriber = Subscriber(sock, stalled=True)
            self.stalled.append(subscriber)
            self.selector.register(sock, selectors.EVENT_WRITE, subscriber)

    def close(self, subscribers: list[Subscriber]) -> None:
        """Close *subscribers*."""
        for subscriber in subscribers:
            if subscriber.sock.fileno() in self.selector.get_map():
                self.selector.unregister(subscriber.sock)
            subscriber.sock.close()
            subscriber.closed = True
        gone = set(map(id, subscribers))
        self.subscribers = [s for s in self.subscribers if id(s) not in gone]
        self.stalled = [s for s in self.stalled if id(s) not in gone]

    def close_all(self) -> None:
        """Close every subscriber, and every request not yet answered."""
        self.close(self.subscribers + self.stalled)
        for request in self.requests:
            self.selector.unregister(request.sock)
            request.sock.close()
        self.requests.clear()

    def drain_stalled(self, *, within: float) -> int:
        """Read what the stalled subscribers were sent, for up to *within* seconds; return
        how many of them the server had closed (their stream ended: end of file or reset)."""
        for subscriber in self.stalled:
            if not subscriber.closed:
                self.selector.register(subscriber.sock, selectors.EVENT_READ, subscriber)
        self.pump(lambda: all(subscriber.closed for subscriber in self.stalled), within=within)
        return sum(subscriber.closed for subscriber in self.stalled)

    # -- requests -----------------------------------------------------------------------

    def start(self, method: str, target: str) -> Request:
        """Send a request; it is answered while the loop runs."""
        request = Request(_connect(self.port), target)
        self.selector.register(request.sock, selectors.EVENT_WRITE, (request, method))
        self.requests.add(request)
        return request

    def call(self, method: str, target: str, *, within: float = 60.0) -> dict[str, Any]:
        """Send a request and run the loop until it is answered; its answer."""
        request = self.start(method, target)
        if not self.pump(lambda: request.done, within=within):
            raise TimeoutError(f"{method} {target}: no answer within {within} s")
        return request.answer

    # -- the loop -----------------------------------------------------------------------

    def pump(self, condition: Callable[[], bool], *, within: float) -> bool:
        """Read whatever arrives until *condition* holds (checked between steps) or *within*
        seconds have passed; return whether it held."""
        deadline = time.monotonic() + within
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            # Waits the time left as read once here: _step reading the clock again could find
            # the deadline passed (a loaded machine) and raise, where this returns.
            self._select(min(remaining, POLL))
        return True

    def pump_for(self, seconds: float) -> None:
        """Read whatever arrives for *seconds*."""
        self.pump(lambda: False, within=seconds)

    def settle(self, *, quiet: float = 1.0, within: float = 60.0) -> None:
        """Read until nothing has arrived for *quiet* seconds (or *within* have passed)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            before = self.delivered
            self.pump_for(quiet)
            if self.delivered == before:
                return

    def received(self, total: int) -> bool:
        """Whether every reading subscriber has received *total* events so far."""
        return all(subscriber.events >= total for subscriber in self.subscribers)

    def take_latencies(self) -> list[int]:
        """The latencies recorded since the last take, and start afresh."""
        latencies, self.latencies = self.latencies, []
        return latencies

    def _step(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the benchmark client's deadline passed")
        self._select(min(remaining, 1.0))

    def _select(self, timeout: float) -> None:
        """Handle what the sockets have ready within *timeout* seconds."""
        for key, mask in self.selector.select(timeout):
            data = key.data
            if isinstance(data, Subscriber):
                if mask & selectors.EVENT_WRITE:
                    self._connected(data.sock, self._get)
                    if data.stalled:  # read only once drained
                        self.selector.unregister(data.sock)
                    else:
                        self.selector.modify(data.sock, selectors.EVENT_READ, data)
                else:
                    self._read(data)
            else:
                request, method = data
                if mask & selectors.EVENT_WRITE:
                    self._connected(request.sock, _request(method, request.target))
                    self.selector.modify(request.sock, selectors.EVENT_READ, data)
                else:
                    self._answer(request)

    def _connected(self, sock: socket.socket, message: bytes) -> None:
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            raise OSError(code, f"connect: {errno.errorcode.get(code, code)}")
        sock.send(message)

    def _answer(self, request: Request) -> None:
        try:
            chunk = request.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        if chunk:
            request.data += chunk
            return
        self.selector.unregister(request.sock)
        request.sock.close()
        self.requests.discard(request)
        request.finish()

    def _read(self, subscriber: Subscriber) -> None:
        try:
            size, messages, _, _ = subscriber.sock.recvmsg_into([self._buffer], _STAMP_SPACE)
        except (BlockingIOError, InterruptedError):
            return
        except ConnectionError:
            size, messages = 0, []
        now = _arrival(messages)
        if not size:
            subscriber.closed = True
            self.selector.unregister(subscriber.sock)
            return
        data = subscriber.pending + self._buffer[:size]
        if subscriber.head is not None:
            subscriber.head += data
            if HEADER_END not in subscriber.head:
                subscriber.pending = b""
                return
            head, _, data = subscriber.head.partition(HEADER_END)
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"GET /events answered {head[:80]!r}")
            subscriber.head = None
        cut = data.rfind(b"\n") + 1
        subscriber.pending = bytes(data[cut:])
        stamps = STAMP.findall(data, 0, cut)
        subscriber.events += len(stamps)
        if subscriber.stalled:
            subscriber.farewell = subscriber.farewell or b"event: slow-subscriber" in data
        else:
            self.delivered += len(stamps)
            self.latencies.extend(now - int(stamp) for stamp in stamps)


def _arrival(messages: list[tuple[int, int, bytes]]) -> int:
    """When the kernel queued the last of the bytes a read took (the ``SO_TIMESTAMPNS`` among
    its control *messages*), in nanoseconds of ``CLOCK_REALTIME``; the time now without it."""
    for level, kind, data in messages:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            seconds, nanoseconds = struct.unpack("qq", data[:16])
            return int(seconds) * 1_000_000_000 + int(nanoseconds)
    return time.time_ns()
