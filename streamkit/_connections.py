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
The server's own descriptor is left for the server to close. Where the descriptors cannot be
listed, or a middleware rewrote the client address (trusted proxy headers), nothing is found
and the server's own grace period bounds the connection instead.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import struct
from collections.abc import Sequence

__all__ = ["abort_connection"]

logger = logging.getLogger("streamkit")

_FAMILIES = (socket.AF_INET, socket.AF_INET6)


def _descriptors() -> Sequence[int]:
    for directory in ("/proc/self/fd", "/dev/fd"):
        try:
            return [int(name) for name in os.listdir(directory)]
        except (OSError, ValueError):
            continue
    return ()


def _same(address: object, expected: tuple[str, int]) -> bool:
    return isinstance(address, tuple) and tuple(address[:2]) == expected


def abort_connection(server: tuple[str, int], client: tuple[str, int]) -> bool:
    """Shut down the TCP connection between *server* (the local address) and *client* (the
    peer), if this process holds it; true if it was found.

    Blocking (it lists every descriptor of the process): run it in a worker thread.
    """
    for descriptor in _descriptors():
        try:
            if not stat.S_ISSOCK(os.fstat(descriptor).st_mode):
                continue
            # A duplicate: the server's descriptor stays the server's to close.
            sock = socket.socket(fileno=os.dup(descriptor))
        except OSError:
            continue  # closed meanwhile, or not a socket this platform can wrap
        with sock:
            try:
                if sock.family not in _FAMILIES or sock.type != socket.SOCK_STREAM:
                    continue
                if not (_same(sock.getsockname(), server) and _same(sock.getpeername(), client)):
                    continue
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                continue  # not connected (a listening socket), or gone meanwhile
            logger.info("connection of %s:%d aborted: the client stopped reading", *client)
            return True
    return False
