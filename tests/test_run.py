"""``streamkit.run``'s arguments, refused where it is called, naming them, before anything is
served or bound (each case also gives a port no socket can take, so none can serve)."""

from __future__ import annotations

from typing import Any

import pytest

import streamkit
from streamkit import App

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
