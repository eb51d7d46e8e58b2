"""Aborting the connection of a client that stopped reading, under a server that streamkit does
not run.

When a write has been stuck for ``send_timeout``, the stream gives up on it and ends. The server
still holds the connection and the bytes it could not send: uvicorn's transport waits for them
to drain before it closes, and hypercorn's trio worker shields the write itself, so neither
lets the connection go while the client stays connected without reading, and neither exits on
shutdown while it does. :func:`streamkit.serve` bounds that with ``TCP_USER_TIMEOUT`` on its
listening socket; a foreign server's socket is not streamkit's to configure.

So the connection (HTTP/1 only: an HTTP/2 connection carries other streams) is found among
the process's open descriptors, by its two addresses as the
ASGI scope gives them, and shut down for both directions with a zero linger: the server's
stuck write then fails as if the kernel had aborted the connection, and its close resets it.
The server's own descriptor is left for the server to close. Listing the descriptors costs a
few system calls each, so one thread does it, once for every abort asked for meanwhile: a
thousand clients stalling together cost one pass, not a thousand. Where the descriptors cannot be
listed, or a middleware rewrote the client address (trusted proxy headers), nothing is found
and the server's own grace period bounds the connection instead.

:func:`abort_accepted` does the same for every connection still open on a server's address
once the server has stopped: hypercorn's asyncio worker sees a connection only once its TLS
handshake is done, so one whose client never finished it outlived the server, descriptor and
all, until its handshake timed out.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import stat
import struct
import threading
from collections.abc import Collection, Iterator, Sequence

__all__ = ["abort_accepted", "abort_connection", "abort_connection_soon", "abort_connections"]

logger = logging.getLogger("streamkit")

#: A connection by its two addresses: (the server's, the client's).
Addresses = tuple[tuple[str, int], tuple[str, int]]

_FAMILIES = (socket.AF_INET, socket.AF_INET6)


def _descriptors() -> Sequence[int]:
    for directory in ("/proc/self/fd", "/dev/fd"):
        try:
            return [int(name) for name in os.listdir(directory)]
        except (OSError, ValueError):
            continue
    return ()


def _addresses(sock: socket.socket) -> Addresses | None:
    if sock.family not in _FAMILIES or sock.type != socket.SOCK_STREAM:
        return None
    local, peer = sock.getsockname(), sock.getpeername()
    return (local[0], local[1]), (peer[0], peer[1])


def _connections() -> Iterator[tuple[socket.socket, Addresses]]:
    """Each TCP connection of the process, as a duplicate of its descriptor (the server's
    stays the server's to close), with its addresses."""
    for descriptor in _descriptors():
        try:
            if not stat.S_ISSOCK(os.fstat(descriptor).st_mode):
                continue
            sock = socket.socket(fileno=os.dup(descriptor))
        except OSError:
            continue  # closed meanwhile, or not a socket this platform can wrap
        with sock:
            try:
                addresses = _addresses(sock)
            except OSError:
                continue  # not connected (a listening socket), or gone meanwhile
            if addresses is not None:
                yield sock, addresses


def _abort(sock: socket.socket) -> bool:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        return False  # gone meanwhile
    return True


def abort_connections(targets: Collection[Addresses]) -> set[Addresses]:
    """Shut down each TCP connection of *targets* that this process holds; return those found.

    Blocking (it lists every descriptor of the process): run it in a thread.
    """
    found: set[Addresses] = set()
    for sock, addresses in _connections():
        if addresses in targets and addresses not in found and _abort(sock):
            found.add(addresses)
            logger.info("connection of %s:%d aborted: the client stopped reading", *addresses[1])
    return found


def abort_accepted(server: tuple[str, int]) -> int:
    """Shut down every TCP connection this process holds on *server*, the address a server
    that has stopped listened on (any of the host's addresses, for ``0.0.0.0`` or ``::``);
    return how many. Blocking, as :func:`abort_connections`."""
    host, port = server
    anywhere = host in ("0.0.0.0", "::", "")
    aborted = 0
    for sock, (local, _) in _connections():
        if local[1] == port and (anywhere or local[0] == host) and _abort(sock):
            aborted += 1
    return aborted


def abort_connection(server: tuple[str, int], client: tuple[str, int]) -> bool:
    """Shut down the TCP connection between *server* (the local address) and *client* (the
    peer), if this process holds it; true if it was found. Blocking, as
    :func:`abort_connections`."""
    return bool(abort_connections({(server, client)}))


class _Aborter:
    """The thread that aborts connections, a batch per pass over the descriptors."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.requests: queue.SimpleQueue[Addresses] = queue.SimpleQueue()
        thread = threading.Thread(target=self._run, name="streamkit-abort")
        thread.daemon = True
        thread.start()

    def _run(self) -> None:
        while True:
            batch = {self.requests.get()}
            while True:
                try:
                    batch.add(self.requests.get_nowait())
                except queue.Empty:
                    break
            try:
                abort_connections(batch)
            except Exception:
                logger.exception("aborting stalled connections failed")


_aborter: _Aborter | None = None
_aborter_lock = threading.Lock()


def abort_connection_soon(server: tuple[str, int], client: tuple[str, int]) -> None:
    """Have the connection between *server* and *client* aborted, from a thread, shortly."""
    global _aborter
    with _aborter_lock:
        # A forked child has the object, but not the thread.
        if _aborter is None or _aborter.pid != os.getpid():
            _aborter = _Aborter()
        aborter = _aborter
    aborter.requests.put((server, client))
