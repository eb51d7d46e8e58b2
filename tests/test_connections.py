"""Aborting a connection found by its addresses: the one asked for, and no other."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from streamkit._connections import (
    abort_accepted,
    abort_connection,
    abort_connection_soon,
    abort_connections,
)


@pytest.fixture
def pairs() -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    """Two accepted connections to one listener: (server side, client side)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        made = []
        for _ in range(2):
            client = socket.create_connection(listener.getsockname())
            accepted, _ = listener.accept()
            made.append((accepted, client))
        yield made
        for accepted, client in made:
            accepted.close()
            client.close()


def test_the_matching_connection_is_shut_down_and_the_other_is_not(
    pairs: list[tuple[socket.socket, socket.socket]],
) -> None:
    (target, target_client), (other, other_client) = pairs
    assert abort_connection(target.getsockname(), target.getpeername())
    # The server's own descriptor is still open, and its writes now fail.
    assert target.fileno() >= 0
    with pytest.raises(BrokenPipeError):
        target.send(b"x")
    assert target_client.recv(10) == b""
    other.send(b"still here")
    assert other_client.recv(10) == b"still here"


def test_an_unknown_connection_is_not_found(
    pairs: list[tuple[socket.socket, socket.socket]],
) -> None:
    (accepted, _), _ = pairs
    host = accepted.getpeername()[0]
    assert not abort_connection(accepted.getsockname(), (host, 1))


def test_one_pass_aborts_every_connection_asked_for(
    pairs: list[tuple[socket.socket, socket.socket]],
) -> None:
    targets = {(accepted.getsockname(), accepted.getpeername()) for accepted, _ in pairs}
    assert abort_connections(targets) == targets
    for _, client in pairs:
        assert client.recv(10) == b""


def test_an_abort_asked_for_from_the_event_loop_happens_in_the_background(
    pairs: list[tuple[socket.socket, socket.socket]],
) -> None:
    (accepted, client), _ = pairs
    abort_connection_soon(accepted.getsockname(), accepted.getpeername())
    client.settimeout(5)  # the bound; it takes a pass over the descriptors
    assert client.recv(10) == b""


@pytest.mark.parametrize("bound", ["127.0.0.1", "0.0.0.0"])
def test_every_connection_accepted_on_an_address_is_aborted_and_no_other(bound: str) -> None:
    with (
        socket.create_server((bound, 0)) as listener,
        socket.create_server(("127.0.0.1", 0)) as elsewhere,
    ):
        port = listener.getsockname()[1]
        made = []
        for server in (listener, listener, elsewhere):
            client = socket.create_connection(("127.0.0.1", server.getsockname()[1]))
            made.append((server.accept()[0], client))
        try:
            # The clients' own connections to the port are not the server's: not aborted.
            assert abort_accepted((bound, port)) == 2
            for _, client in made[:2]:
                assert client.recv(10) == b""
            made[2][0].send(b"still here")
            assert made[2][1].recv(10) == b"still here"
        finally:
            for accepted, client in made:
                accepted.close()
                client.close()
