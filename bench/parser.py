"""The client's event-stream parser against httpx-sse's: ``python -m bench.parser``.

Both parse the same bodies, already in memory, cut in 4 KiB chunks as a socket read hands
them over; no I/O, so the figure is the parsing alone: events per second of CPU time
(``time.process_time``: one thread, so per core). httpx-sse's pipeline is the one its
``EventSource.aiter_sse`` runs: an incremental UTF-8 decoder, its line decoder, its event
decoder. streamkit's is :class:`streamkit.client.SSEDecoder`, then the same with the
client's own step (the last id carried onto each event, as
:class:`streamkit.client.EventStream` yields them). The implementations take turns, five
rounds, best round reported.
"""

from __future__ import annotations

import argparse
import codecs
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

from httpx_sse._decoders import SSEDecoder as HttpxSSEDecoder
from httpx_sse._decoders import SSELineDecoder

from streamkit._eventsource import MAX_EVENT_SIZE
from streamkit.client import Backoff, EventStream, SSEDecoder

CHUNK = 4096
ROUNDS = 5


def _small(n: int) -> bytes:
    payload = '{"n": %d, "token": "hello", "done": false, "model": "m-1"}'
    return b"".join(
        b"id: %d\nevent: tick\ndata: %s\n\n" % (i, (payload % i).encode()) for i in range(n)
    )


def _multiline(n: int) -> bytes:
    lines = b"".join(b"data: line %d of a multi-line event, 32 bytes\n" % j for j in range(8))
    return b"".join(b"id: %d\n%s\n" % (i, lines) for i in range(n))


def _large(n: int) -> bytes:
    return b"".join(b"id: %d\ndata: %s\n\n" % (i, b"x" * 1024) for i in range(n))


BODIES: dict[str, Callable[[int], bytes]] = {
    "small (id, event, 60-byte data)": _small,
    "8 data lines of 32 bytes": _multiline,
    "one 1 KiB data line": _large,
}


def parse_streamkit(chunks: list[bytes]) -> int:
    decoder = SSEDecoder()
    return sum(len(decoder.feed(chunk)) for chunk in chunks)


def parse_streamkit_client(chunks: list[bytes]) -> int:
    stream = EventStream(
        "http://bench.invalid/",
        client=None,
        last_event_id=None,
        heartbeat_interval=15.0,
        missed_heartbeats=3,
        connect_timeout=10.0,
        backoff=Backoff(),
        max_event_size=MAX_EVENT_SIZE,
    )
    stream._begin()
    return sum(len(stream._parse(chunk)) for chunk in chunks)


def parse_httpx_sse(chunks: list[bytes]) -> int:
    text = codecs.getincrementaldecoder("utf-8")()
    lines = SSELineDecoder()
    decoder = HttpxSSEDecoder()
    count = 0
    for chunk in chunks:
        for line in lines.decode(text.decode(chunk)):
            if decoder.decode(line.rstrip("\n")) is not None:
                count += 1
    return count


PARSERS: dict[str, Callable[[list[bytes]], int]] = {
    "streamkit SSEDecoder": parse_streamkit,
    "streamkit client (decoder + last id)": parse_streamkit_client,
    "httpx-sse 0.4": parse_httpx_sse,
}


def measure(events: int) -> dict[str, dict[str, float]]:
    """Events per CPU second, for each body and parser: the best of the rounds."""
    figures: dict[str, dict[str, float]] = {}
    for body_name, make in BODIES.items():
        body = make(events)
        chunks = [body[i : i + CHUNK] for i in range(0, len(body), CHUNK)]
        best = dict.fromkeys(PARSERS, 0.0)
        for _ in range(ROUNDS):
            for name, parse in PARSERS.items():
                started = time.process_time()
                parsed = parse(chunks)
                elapsed = time.process_time() - started
                if parsed != events:
                    raise AssertionError(f"{name} parsed {parsed} events of {events}")
                best[name] = max(best[name], events / elapsed)
        figures[body_name] = best
    return figures


def markdown(figures: dict[str, dict[str, float]]) -> str:
    names = list(PARSERS)
    rows = [
        "| body | " + " | ".join(names) + " | streamkit / httpx-sse |",
        "|---|" + "---:|" * (len(names) + 1),
    ]
    for body, by_parser in figures.items():
        ratio = by_parser["streamkit SSEDecoder"] / by_parser["httpx-sse 0.4"]
        cells = " | ".join(f"{by_parser[name]:,.0f}" for name in names)
        rows.append(f"| {body} | {cells} | {ratio:.2f}x |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.parser", description=__doc__)
    parser.add_argument("--events", type=int, default=100_000, help="events per body")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    arguments = parser.parse_args(argv)
    figures = measure(arguments.events)
    print(
        f"Events parsed per CPU second ({arguments.events:,} events a body, {CHUNK}-byte "
        f"chunks, best of {ROUNDS}; Python {platform.python_version()})\n"
    )
    print(markdown(figures))
    if arguments.json is not None:
        arguments.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
