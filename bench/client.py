"""The client side: raw sockets, no HTTP library, nothing that could be slower than the server.

A stream is read with ``recv_into`` into one reused buffer; events are counted as SSE frame
terminators (a blank line, ``\\n\\n``), which neither HTTP/1.1 chunk framing nor any event
the apps send can fake. Thousands of streams are driven with one ``selectors`` loop.
"""

from __future__ import annotations

import errno
import json
import selectors
import socket
import time
from typing import Any

__all__ = ["Fleet", "Stream", "control"]

TERMINATOR = b"\n\n"
HEADER_END = b"\r\n\r\n"
#: How a chunked body ends: the end of the last data chunk, then the empty chunk.
LAST_CHUNK = b"\r\n0\r\n\r\n"


def request(path: str, *, close: bool = False) -> bytes:
    connection = "Connection: close\r\n" if close else ""
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n{connection}\r\n"
    ).encode()


def control(port: int, path: str, *, timeout: float = 70.0) -> dict[str, Any]:
    """One control request (``/_bench/...``) on a connection of its own; the JSON answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request(path, close=True))
        data = bytearray()
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = bytes(data).partition(HEADER_END)
    if not head.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(f"control request {path!r} answered {head[:80]!r}")
    result: dict[str, Any] = json.loads(body)
    return result


def _check_status(head: bytes, path: str) -> None:
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"GET {path} answered {head[:80]!r}")


class Stream:
    """One stream on a blocking socket.

    :param port: the server's port.
    :param path: the request path.
    :param receive_buffer: ``SO_RCVBUF`` to ask for before connecting (a small one makes a
        client that stops reading stall the server sooner).
    """

    def __init__(self, port: int, path: str, *, receive_buffer: int | None = None) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(30.0)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(request(path))
        self.bytes = 0
        self.events = 0
        self._last = 0
        self._buffer = bytearray(1 << 20)

    def read_head(self) -> None:
        """Read the response head, counting whatever body came with it."""
        data = b""
        while HEADER_END not in data:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError(f"GET {self.path}: connection closed before the head")
            data += chunk
        head, _, body = data.partition(HEADER_END)
        _check_status(head, self.path)
        self._count(body, len(body))

    def _count(self, data: bytes | bytearray, size: int) -> None:
        self.bytes += size
        self.events += data.count(TERMINATOR, 0, size)
        if self._last == 0x0A and size and data[0] == 0x0A:
            self.events += 1  # a terminator split across two reads
        if size:
            self._last = data[size - 1]

    def read_for(self, duration: float) -> None:
        """Read as fast as possible for *duration* seconds."""
        buffer, recv_into, count = self._buffer, self.sock.recv_into, self._count
        deadline = time.monotonic() + duration
        while time.monotonic() < deadline:
            size = recv_into(buffer)
            if not size:
                raise RuntimeError(f"GET {self.path}: the server ended the stream")
            count(buffer, size)

    def read_to_end(self) -> None:
        """Read until the response's body ends (its last, empty chunk) or the connection."""
        buffer, recv_into, count = self._buffer, self.sock.recv_into, self._count
        tail = b""
        while size := recv_into(buffer):
            count(buffer, size)
            tail = (tail + buffer[max(0, size - len(LAST_CHUNK)) : size])[-len(LAST_CHUNK) :]
            if tail == LAST_CHUNK:
                return

    def read_events(self, count: int) -> None:
        """Read until *count* events in all have arrived."""
        while self.events < count:
            size = self.sock.recv_into(self._buffer)
            if not size:
                raise RuntimeError(f"GET {self.path}: the server ended the stream")
            self._count(self._buffer, size)

    def drain(self) -> None:
        """Take what has already arrived, without waiting, so a close sends FIN, not RST."""
        _drain(self.sock)

    def close(self) -> float:
        """Close the socket; return the ``time.monotonic()`` just before."""
        closed_at = time.monotonic()
        self.sock.close()
        return closed_at


def _drain(sock: socket.socket) -> None:
    # A socket with a timeout waits for data even when asked not to (MSG_DONTWAIT), so
    # make it non-blocking for this.
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass  # nothing more has arrived, or already reset: closing is all that is left
    finally:
        sock.settimeout(timeout)


class _Conn:
    __slots__ = ("events", "head", "last", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.head = b""  # until the head has arrived
        self.events = -1  # -1: the head has not arrived yet
        self.last = 0


class Fleet:
    """Many streams at once on non-blocking sockets, driven by one selector."""

    def __init__(self, port: int, path: str) -> None:
        self.port = port
        self.path = path
        self.selector = selectors.DefaultSelector()
        self.conns: list[_Conn] = []
        self._request = request(path)
        self._buffer = bytearray(65536)

    def open(self, count: int, *, window: int = 256, within: float = 120.0) -> None:
        """Open *count* more streams, at most *window* being set up at a time, and return
        once each has received its first event."""
        deadline = time.monotonic() + within
        pending = 0
        to_open = count
        while to_open or pending:
            while to_open and pending < window:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                code = sock.connect_ex(("127.0.0.1", self.port))
                if code not in (0, errno.EINPROGRESS):
                    raise OSError(code, f"connect: {errno.errorcode.get(code, code)}")
                conn = _Conn(sock)
                self.conns.append(conn)
                self.selector.register(sock, selectors.EVENT_WRITE, conn)
                pending += 1
                to_open -= 1
            pending -= self._step(deadline)

    def _step(self, deadline: float) -> int:
        """Wait for and handle socket events once; return how many streams had their first
        event in it."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"{self.path}: the fleet's deadline passed")
        reached = 0
        for key, mask in self.selector.select(min(remaining, 1.0)):
            conn: _Conn = key.data
            if mask & selectors.EVENT_WRITE:
                code = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    raise OSError(code, f"connect: {errno.errorcode.get(code, code)}")
                conn.sock.send(self._request)
                self.selector.modify(conn.sock, selectors.EVENT_READ, conn)
                continue
            before = conn.events
            self._read(conn)
            if before < 1 <= conn.events:
                reached += 1
        return reached

    def _read(self, conn: _Conn) -> None:
        try:
            size = conn.sock.recv_into(self._buffer)
        except (BlockingIOError, InterruptedError):
            return
        if not size:
            raise RuntimeError(f"GET {self.path}: the server closed a stream")
        data: bytes | bytearray = self._buffer
        if conn.events < 0:
            conn.head += self._buffer[:size]
            if HEADER_END not in conn.head:
                return
            head, _, data = conn.head.partition(HEADER_END)
            _check_status(head, self.path)
            conn.head = b""
            conn.events = 0
            size = len(data)
            if not size:
                return
        # Counted in place: thousands of streams ticking keep this loop busy.
        conn.events += data.count(TERMINATOR, 0, size)
        if conn.last == 0x0A and data[0] == 0x0A:
            conn.events += 1
        conn.last = data[size - 1]

    def pump_for(self, duration: float) -> int:
        """Read whatever arrives for *duration* seconds; return how many events did."""
        before = self.events()
        deadline = time.monotonic() + duration
        while time.monotonic() < deadline:
            try:
                self._step(deadline)
            except TimeoutError:
                break
        return self.events() - before

    def events(self) -> int:
        """Events received so far, on every stream together."""
        return sum(max(conn.events, 0) for conn in self.conns)

    def close_all(self) -> tuple[float, float]:
        """Close every stream as fast as possible (having taken what they already received,
        so each close is a FIN); return the ``time.monotonic()`` of the first and last close."""
        for conn in self.conns:
            self.selector.unregister(conn.sock)
            _drain(conn.sock)
        first = time.monotonic()
        for conn in self.conns:
            conn.sock.close()
        last = time.monotonic()
        self.conns.clear()
        return first, last

    def __len__(self) -> int:
        return len(self.conns)
