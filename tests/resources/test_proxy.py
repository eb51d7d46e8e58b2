"""open_upstream's bounds and failures, against an in-process transport.

Forwarding, and the upstream being released on every end, are tested against a real upstream
server in tests/e2e/test_resources_proxy.py.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from streamkit.resources import UpstreamError, open_upstream, upstream_bytes, upstream_events

pytestmark = pytest.mark.anyio


def recording_client(status: int = 200) -> tuple[httpx.AsyncClient, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, content=b"body")

    # No timeouts of its own: the ones open_upstream sets must apply regardless.
    client = httpx.AsyncClient(transport=httpx.MockTransport(handle), timeout=None)
    return client, seen


async def test_every_request_is_bounded_even_on_a_client_without_timeouts() -> None:
    client, seen = recording_client()
    request = httpx.Request("GET", "http://upstream/", extensions={"timeout": {"read": None}})
    async with (
        client,
        open_upstream(request, client=client, connect_timeout=1.5, read_timeout=7.0) as response,
    ):
        assert await response.aread() == b"body"
    assert seen[0].extensions["timeout"] == {
        "connect": 1.5,
        "read": 7.0,
        "write": 7.0,
        "pool": 1.5,
    }


async def test_the_response_is_closed_and_a_given_client_left_open() -> None:
    client, _ = recording_client()
    async with client:
        async with open_upstream("http://upstream/", client=client) as response:
            pass
        assert response.is_closed
        assert not client.is_closed


async def test_a_status_other_than_2xx_is_an_upstream_error() -> None:
    client, _ = recording_client(status=503)
    async with client:
        with pytest.raises(UpstreamError, match="answered 503 Service Unavailable") as caught:
            async with open_upstream("http://upstream/v1", client=client):
                pass
    assert caught.value.status_code == 503
    assert caught.value.url == "http://upstream/v1"


@pytest.mark.parametrize("bad", [None, 0, -1.0, float("nan"), float("inf")])
@pytest.mark.parametrize("name", ["connect_timeout", "read_timeout"])
def test_timeouts_must_be_bounded(name: str, bad: float | None) -> None:
    for make in (upstream_events, upstream_bytes):
        with pytest.raises((ValueError, TypeError), match=name):
            make("http://upstream/", **{name: bad})  # type: ignore[arg-type]


def test_upstream_must_be_a_url_or_a_request() -> None:
    with pytest.raises(TypeError, match="got bytes: b'http://x/'"):
        upstream_events(b"http://x/")  # type: ignore[arg-type]


@pytest.mark.parametrize("target", ["ftp://x/v1", "x/v1", "ws://x/v1"])
def test_upstream_must_be_an_http_url(target: str) -> None:
    for make in (upstream_events, upstream_bytes):
        with pytest.raises(ValueError, match=f"must be an http or https URL, got '{target}'"):
            make(target)


@pytest.mark.parametrize(
    ("target", "named"),
    [
        ("http:///v1", "upstream has no host: 'http:///v1'"),
        ("http://127.0.0.1:70000/v1", "upstream has the port 70000, not one of 1 to 65535"),
    ],
)
def test_upstream_must_be_a_url_a_connection_could_reach(target: str, named: str) -> None:
    for make in (upstream_events, upstream_bytes):
        with pytest.raises(ValueError, match=re.escape(named)):
            make(target)


def test_an_upstream_request_asks_only_for_the_codings_the_proxy_decodes() -> None:
    # What client.build_request() makes where brotli and zstandard are installed.
    request = httpx.Request("POST", "http://llm.test/v1", headers={"accept-encoding": "br, gzip"})
    for make in (upstream_events, upstream_bytes):
        make(request)
        assert request.headers["accept-encoding"] == "gzip"


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"transform": "upper"}, TypeError, r"^transform must be callable, got str: 'upper'$"),
        ({"resume": "no"}, TypeError, r"^resume must be a bool, got str: 'no'$"),
        ({"client": "http://x/"}, TypeError, r"^client must be an AsyncClient or None, got str"),
    ],
)
def test_bad_options_are_refused_where_the_producer_is_made(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    # Not once the stream has started, after its 200, at its first event.
    for upstream in ("http://upstream/", httpx.Request("GET", "http://upstream/")):
        with pytest.raises(error, match=message):
            upstream_events(upstream, **options)


@pytest.mark.parametrize("upstream", ["http://upstream/", httpx.Request("GET", "http://upstream/")])
def test_a_client_that_is_no_httpx_client_is_refused_where_it_is_given(
    upstream: str | httpx.Request,
) -> None:
    with pytest.raises(TypeError, match=r"^client must be an AsyncClient or None, got Client"):
        upstream_bytes(upstream, client=httpx.Client())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("bad", "error"),
    [(b"6", TypeError), (6, TypeError), ("a\x01b", ValueError), ("a\nb", ValueError)],
)
def test_a_last_event_id_no_header_can_carry_is_refused_naming_it(
    bad: object, error: type[Exception]
) -> None:
    for resume in (True, False):
        with pytest.raises(error, match=f"last_event_id .*{re.escape(repr(bad))}"):
            upstream_events("http://upstream/", resume=resume, last_event_id=bad)  # type: ignore[arg-type]


def test_a_last_event_id_leaves_the_callers_request_as_it_was() -> None:
    # It may be sent for other clients too, each with an id of its own.
    request = httpx.Request("GET", "http://upstream/", headers={"last-event-id": "5"})
    for resume in (True, False):
        upstream_events(request, resume=resume, last_event_id="\u00e9-6")
        upstream_events(request, resume=resume, last_event_id="")
    assert request.headers.get_list("last-event-id") == ["5"]
