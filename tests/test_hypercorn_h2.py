"""The repair of hypercorn's HTTP/2 stream buffer: found needed by probing hypercorn's own
buffer, applied to the servers streamkit runs and to no other."""

from __future__ import annotations

import importlib.metadata
from typing import Any

import hypercorn.protocol
import hypercorn.protocol.h2 as hypercorn_h2
import pytest
from hypercorn.config import Config

from streamkit._hypercorn_h2 import (
    CHECKED_RELEASES,
    _BoundedH2Protocol,
    _BoundedStreamBuffer,
    _ProbeEvent,
    bound_h2_streams,
    h2_streams_bounded,
    writer_released_at_zero_window,
)

RELEASE = importlib.metadata.version("hypercorn")


@pytest.mark.skipif(not RELEASE.startswith(CHECKED_RELEASES), reason=f"hypercorn {RELEASE}")
def test_the_probe_finds_the_fault_in_the_checked_release() -> None:
    assert writer_released_at_zero_window(hypercorn_h2.StreamBuffer)


def test_the_repaired_buffer_keeps_the_writer_waiting_at_a_zero_window() -> None:
    assert not writer_released_at_zero_window(_BoundedStreamBuffer)


class _Context:
    """The one part of hypercorn's worker context a protocol uses when made."""

    event_class = _ProbeEvent


def test_only_the_servers_streamkit_runs_get_the_repair() -> None:
    ours, theirs = Config(), Config()
    applies = RELEASE.startswith(CHECKED_RELEASES)
    assert bound_h2_streams(ours) is applies
    assert h2_streams_bounded(ours) is applies
    assert not h2_streams_bounded(theirs)

    def made_for(config: Config) -> type:
        # What hypercorn's connections call when they start HTTP/2.
        make: Any = vars(hypercorn.protocol)["H2Protocol"]
        return type(make(None, config, _Context(), None, None, False, None, None, None))

    assert made_for(ours) is (_BoundedH2Protocol if applies else hypercorn_h2.H2Protocol)
    assert made_for(theirs) is hypercorn_h2.H2Protocol
