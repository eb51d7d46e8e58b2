"""``streamkit.run``'s arguments, refused where it is called, naming them, before anything is
served or bound (each case also gives a port no socket can take, so none can serve); and
what the command line makes of its flags."""

from __future__ import annotations

import socket
from typing import Any

import pytest

import streamkit
import streamkit._run
from streamkit import App
from streamkit._serve import bind_socket

UNBINDABLE = "127.0.0.1:99999"


@pytest.mark.parametrize(
    ("arguments", "error", "match"),
    [
        ({"app": 5}, TypeError, r"app must be an ASGI application \(callable\), got int: 5"),
        ({"bind": 8000}, TypeError, r"bind must be a str, got int: 8000"),
        ({"log_level": "LOUD"}, ValueError, r"log_level must be one of .*INFO.*, got 'LOUD'"),
        ({"log_level": True}, TypeError, r"log_level must be a level name or an int, got bool"),
    ],
)
def test_a_bad_argument_is_refused_naming_it(
    arguments: dict[str, Any], error: type[Exception], match: str
) -> None:
    arguments = {"app": App(), "bind": UNBINDABLE, **arguments}
    with pytest.raises(error, match=match):
        streamkit.run(**arguments)


@pytest.mark.parametrize(("flag", "expected"), [("2.5", 2.5), ("off", None)])
def test_the_stalled_connection_timeout_flag_takes_seconds_or_off(
    monkeypatch: pytest.MonkeyPatch, flag: str, expected: float | None
) -> None:
    given: dict[str, Any] = {}
    monkeypatch.setattr(streamkit._run, "run", lambda app, **options: given.update(options))
    assert streamkit._run.main(["run", "service:app", "--stalled-connection-timeout", flag]) == 0
    assert given["stalled_connection_timeout"] == expected


@pytest.mark.skipif(not hasattr(socket, "TCP_USER_TIMEOUT"), reason="Linux's socket option")
@pytest.mark.parametrize(("timeout", "milliseconds"), [(1.5, 1500), (None, 0)])
def test_the_listening_socket_aborts_stalled_connections_unless_turned_off(
    timeout: float | None, milliseconds: int
) -> None:
    with bind_socket("127.0.0.1:0", stalled_connection_timeout=timeout) as sock:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == milliseconds
