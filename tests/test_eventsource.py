"""The client's parsing of one connection's body, fed as a socket's reads would come."""

from __future__ import annotations

import tracemalloc

from streamkit._eventsource import NDJSONStream
from streamkit.client import Backoff


def test_an_ndjson_line_arriving_two_bytes_a_read_costs_about_its_size() -> None:
    # max_event_size counts bytes: a line sent two a read was kept as a bytes object each,
    # 35 bytes more a piece, some 20 times the bound.
    stream = NDJSONStream(
        "http://upstream.test/items",
        item_id=None,
        client=None,
        last_event_id=None,
        heartbeat_interval=1.0,
        missed_heartbeats=1,
        connect_timeout=1.0,
        backoff=Backoff(),
        max_event_size=10_000_000,
    )
    stream._begin()
    assert stream._parse(b'"') == []
    count = 100_000
    tracemalloc.start()
    try:
        for _ in range(count):
            assert stream._parse(bytes(bytearray(b"12"))) == []
        kept, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert kept / (2 * count) < 3
    # And the line is whole when it ends.
    assert stream._parse(b'"\n') == ["12" * count]
