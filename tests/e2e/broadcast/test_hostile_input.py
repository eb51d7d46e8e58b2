"""Hostile requests to topic routes through real hypercorn, on asyncio and trio, with each
broker: a topic name from the URL that no topic may have, a ``Last-Event-ID`` that is no id,
a path made to forge log lines. Each is a clean answer, never a 500 or a silent start.
"""

from __future__ import annotations

import json
import logging
from contextlib import AsyncExitStack
from typing import Any
from urllib.parse import quote

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from support.brokers import AnyBroker, MakeBroker, until

from streamkit import App, EndReason, StreamSender
from streamkit.broadcast import RESET_EVENT, RedisBroker, topic_response
from streamkit.testing import open_server, open_stream

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


def topic_app(broker: AnyBroker) -> Starlette:
    async def events(request: Request) -> Response:
        topic = request.path_params.get("topic", request.query_params.get("name", ""))
        return topic_response(broker, topic, heartbeat_interval=None)

    return Starlette(routes=[Route("/topics/{topic}", events), Route("/topic", events)])


@pytest.mark.parametrize(
    "quoted",
    ["a%00b", "a%0Ab", "a%7Fb", "a%09b", "x" * 300],
    ids=["NUL", "LF", "DEL", "TAB", "300-characters"],
)
async def test_a_topic_no_topic_may_have_is_a_clean_400_naming_the_rule(
    make_broker: MakeBroker, quoted: str
) -> None:
    broker = make_broker()
    async with broker, open_server(topic_app(broker)) as server:
        async with open_stream(server, f"/topics/{quoted}") as client:
            assert client.status == 400
            with anyio.fail_after(5):
                body = (await client.read_all()).decode()
        assert "a topic must be 1 to 256 characters" in body
        assert broker.statistics().subscribers == 0


async def test_the_empty_topic_is_a_clean_400(make_broker: MakeBroker) -> None:
    broker = make_broker()
    async with broker, open_server(topic_app(broker)) as server:
        async with open_stream(server, "/topic?name=") as client:
            assert client.status == 400
            with anyio.fail_after(5):
                assert b"a topic must be" in await client.read_all()


async def test_an_app_route_that_subscribes_to_a_bad_topic_ends_with_an_error_event(
    make_broker: MakeBroker,
) -> None:
    broker = make_broker()
    app = App(heartbeat_interval=None)

    @app.sse("/topic")
    async def events(request: Request, send: StreamSender[Any]) -> None:
        async with broker.subscribe(request.query_params["name"]) as subscription:
            async for event in subscription:
                await send(event)

    async with broker, open_server(app) as server:
        async with open_stream(server, "/topic?name=a%0Ab") as client:
            assert client.status == 200
            with anyio.fail_after(5):
                event = await client.read_event()
                assert event.event == "error"
                assert await client.read_all() == b""
        await server.wait_ended(EndReason.ERROR, within=5.0)


@pytest.mark.parametrize(
    ("header", "echoed"),
    [
        ("1-0\tx", "1-0\tx"),
        ("a\tb", "a\tb"),
        # One no reader takes (over 1024 characters) is not sent back: a client would have
        # the server send out whatever it put in the header, up to the server's header limit.
        ("9" * 1025, None),
        ("9" * 8000, None),
    ],
    ids=["TAB-after-an-id", "TAB", "1025-characters", "8000-characters"],
)
async def test_a_discarded_last_event_id_gets_an_invalid_reset(
    make_broker: MakeBroker, header: str, echoed: str | None
) -> None:
    broker = make_broker()
    async with broker, open_server(topic_app(broker)) as server:
        latest = await broker.publish("t", "before")
        async with open_stream(server, "/topics/t", headers={"last-event-id": header}) as client:
            with anyio.fail_after(5):
                reset = await client.read_event()
            assert reset.event == RESET_EVENT
            assert reset.data is not None
            assert json.loads(reset.data) == {"reason": "invalid", "last_event_id": echoed}
            assert reset.id == latest
            await until(lambda: broker.statistics().subscribers == 1)
            after = await broker.publish("t", "after")
            with anyio.fail_after(5):
                event = await client.read_event()
            assert (event.id, event.data) == (after, "after")


async def test_a_path_cannot_forge_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    app = App(heartbeat_interval=None)

    @app.sse("/sse/{name}")
    async def events(request: Request, send: StreamSender[Any]) -> None:
        await send("hello")

    forged = "INFO streamkit: stream admin ended: completed"
    path = "/sse/x%0D%0A" + forged.replace(" ", "%20").replace(":", "%3A") + "%E2%80%A8%C2%85"
    with caplog.at_level(logging.INFO, logger="streamkit"):
        async with open_server(app) as server, open_stream(server, path) as client:
            assert client.status == 200
            with anyio.fail_after(5):
                await client.read_all()
            await server.wait_ended(EndReason.COMPLETED, within=5.0)
    lines = [record.getMessage() for record in caplog.records if record.name == "streamkit"]
    ends = [line for line in lines if "ended" in line]
    assert len(ends) == 1, lines
    assert ends[0].isprintable(), ends[0]
    assert "/sse/x\\r\\nINFO streamkit" in ends[0]
    assert "\\u2028\\x85 ended: completed" in ends[0]


def resume_cases() -> list[Any]:
    """``(header, expected)``: a ``Last-Event-ID`` made from the ids of events 0 to 4 of
    topic ``t`` (``{1}``: the id of event 1), and what the client is sent before the next
    live event: the events it missed, or a reset's reason."""
    return [
        pytest.param(None, [], id="absent"),
        pytest.param("", [], id="empty"),
        pytest.param("{1}", ["2", "3", "4"], id="exact"),
        pytest.param("{4}", [], id="the-newest"),
        pytest.param("000{1}", ["2", "3", "4"], id="leading-zeros"),
        # Another topic's or deployment's: an id in the history's range that no event has.
        pytest.param("{absent}", ["unknown"], id="no-event-has-it"),
        pytest.param("99999999999999-0", ["unknown"], id="far-in-the-future"),
        pytest.param("1-0", ["trimmed"], id="older-than-the-history"),
        pytest.param("9" * 1024, ["invalid"], id="1024-digits"),
        pytest.param("{1}".upper() + "X", ["invalid"], id="an-id-and-more"),
        pytest.param("1-0x", ["invalid"], id="hex-sequence"),
        pytest.param("-1-0", ["invalid"], id="negative"),
    ]


@pytest.mark.parametrize(("header", "expected"), resume_cases())
async def test_a_last_event_id_resumes_exactly_or_is_told_it_cannot(
    make_broker: MakeBroker, header: str | None, expected: list[str]
) -> None:
    broker = make_broker()
    async with broker, open_server(topic_app(broker)) as server:
        ids = [await broker.publish("t", str(index)) for index in range(5)]
        milliseconds, sequence = ids[2].split("-")
        absent = f"{milliseconds}-{int(sequence) + 1000}"
        headers = {}
        if header is not None:
            headers["last-event-id"] = header.format(*ids, absent=absent)
        async with open_stream(server, "/topics/t", headers=headers) as client:
            assert client.status == 200
            await until(lambda: broker.statistics().subscribers == 1)
            received = []
            with anyio.fail_after(5):
                for _ in expected:  # before the next publish, which a reset would cover
                    event = await client.read_event()
                    if event.event == RESET_EVENT:
                        assert event.data is not None
                        received.append(json.loads(event.data)["reason"])
                        assert event.id == ids[-1]  # the newest event: what follows is live
                    else:
                        assert event.id == ids[int(event.data or "")]
                        received.append(event.data)
                assert received == expected
                # Then the next event, and nothing before it: no duplicate, no reset.
                after = await broker.publish("t", "after")
                event = await client.read_event()
            assert (event.event, event.id, event.data) == (None, after, "after")


async def test_topic_names_like_patterns_or_key_separators_are_topics_of_their_own(
    make_broker: MakeBroker,
) -> None:
    # Redis key names are taken as they are (a key is no pattern in XADD, XREAD or XRANGE):
    # a topic named like a glob or holding the prefix's separator reaches no other topic.
    topics = ["ab", "a*", "a?", "[a]b", "a:b", "{a}", "a b", "a%2Fb", "é"]
    broker = make_broker()
    async with broker, open_server(topic_app(broker)) as server, AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                open_stream(server, "/topic?name=" + quote(topic, safe=""))
            )
            for topic in topics
        ]
        await until(lambda: broker.statistics().subscribers == len(topics))
        ids = [await broker.publish(topic, topic) for topic in topics]
        for client, topic, published in zip(clients, topics, ids, strict=True):
            with anyio.fail_after(5):
                event = await client.read_event()
            assert (event.id, event.data) == (published, topic)
            await broker.publish(topic, "end")
            with anyio.fail_after(5):
                assert (await client.read_event()).data == "end"  # nothing else between
        if isinstance(broker, RedisBroker):
            from coredis import Redis

            async with Redis.from_url(broker.url, decode_responses=True) as redis:
                keys = await redis.keys(broker.key_prefix + "*")
            # One stream per topic published to, named by the topic as it is, the prefix's
            # own key, the last id given out (no topic is empty), and each publish's
            # receipt, for a while, named with a line break no topic holds.
            receipts = [key for key in keys if key.startswith(broker.key_prefix + "\n")]
            expected = [broker.key_prefix + topic for topic in ["", *topics]]
            assert sorted(set(keys) - set(receipts)) == sorted(expected)
            assert len(receipts) == 2 * len(topics)
