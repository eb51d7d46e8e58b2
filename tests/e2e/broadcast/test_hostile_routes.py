"""Fuzzed requests to a topic route through real hypercorn, on asyncio and trio, with each
broker: any topic name in the URL and any ``Last-Event-ID`` a client can send are answered
400 naming the rule, or served without an error event. Never a 500.
"""

from __future__ import annotations

import json
from urllib.parse import quote

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from support.brokers import MakeBroker, until

from streamkit.broadcast import RESET_EVENT, topic_response
from streamkit.testing import open_server, open_stream

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

NAMES = st.text(st.characters(max_codepoint=0x10FFFF, exclude_categories=["Cs"]), max_size=12)
# What h11 lets a client send in a header value: visible ASCII, inner spaces and TABs.
HEADERS = (
    st.none()
    | st.from_regex(r"[!-~]([ \t!-~]{0,30}[!-~])?", fullmatch=True)
    | st.just("1-" + "9" * 1100)
)


@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    requests=st.lists(
        st.tuples(NAMES | st.text(min_size=255, max_size=258), HEADERS), min_size=1, max_size=4
    )
)
async def test_any_topic_and_last_event_id_is_a_400_or_a_clean_stream(
    make_broker: MakeBroker, requests: list[tuple[str, str | None]]
) -> None:
    broker = make_broker()

    async def events(request: Request) -> Response:
        return topic_response(broker, request.query_params["name"], heartbeat_interval=None)

    app = Starlette(routes=[Route("/topic", events)])
    async with broker, open_server(app) as server:
        for topic, header in requests:
            headers = {} if header is None else {"last-event-id": header}
            valid = 0 < len(topic) <= 256 and not any(c < " " or c == "\x7f" for c in topic)
            if valid:
                await broker.publish(topic, "before")
            path = "/topic?name=" + quote(topic, safe="")
            async with open_stream(server, path, headers=headers) as client:
                if not valid:
                    assert client.status == 400, (topic, client.status)
                    with anyio.fail_after(5):
                        assert b"a topic must be 1 to 256 characters" in await client.read_all()
                    continue
                assert client.status == 200
                await until(lambda: broker.statistics().subscribers == 1)
                await broker.publish(topic, "after")
                with anyio.fail_after(5):
                    while (event := await client.read_event()).data != "after":
                        assert event.event in (None, RESET_EVENT), event
                        if event.event == RESET_EVENT:
                            assert event.data is not None
                            reason = json.loads(event.data)["reason"]
                            assert reason in {"invalid", "unknown", "trimmed"}
            await until(lambda: broker.statistics().subscribers == 0)
