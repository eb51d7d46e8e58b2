"""Forwarding an upstream HTTP stream (an LLM completion, say) to the client.

The leak this prevents: the browser tab closes, the handler's task is gone, and the upstream
request keeps running, and billing, until the upstream finishes on its own. Here the upstream
response is entered through the stream's :class:`~streamkit.StreamSender`, so whatever ends
the stream (the client leaving or stalling, ``max_duration``, a shutdown, an error), the
upstream response is closed in the producer's own task, shielded, before the end is reported.
A response closed before its body was read to the end takes its connection with it, so the
upstream server sees its client leave at once.

Every upstream wait is bounded: the request's timeouts are always set here, overriding both
the client's defaults and any in the request, because an unbounded upstream read holds a
stream, and everything it owns, for as long as the upstream likes.

Needs the ``proxy`` extra (``httpx`` and ``httpx-sse``).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, TypeAlias

import anyio

from ._backoff import Backoff
from ._checks import check_callable, check_count, check_duration, check_type
from ._content_encoding import decoded_body, unwind
from ._eventsource import (
    MAX_EVENT_SIZE,
    EventStream,
    as_request,
    default_ssl_context,
    last_event_id_header,
    reason_phrase,
    set_last_event_id,
)
from ._exceptions import UpstreamError, shown_url
from ._sender import Producer, StreamSender
from ._sse import ServerSentEvent, resumable_id, trusted_event
from ._sse_decoder import FrameTooLarge, SSEDecoder

if TYPE_CHECKING:
    import httpx
    import httpx_sse

__all__ = ["open_upstream", "upstream_bytes", "upstream_events"]

#: Maps an upstream event to what is sent downstream; ``None`` drops the event.
EventTransform: TypeAlias = "Callable[[httpx_sse.ServerSentEvent], ServerSentEvent | str | None]"


def _import_httpx() -> None:
    # Imported when first used, so that ``import streamkit`` works without the extra.
    try:
        import httpx  # noqa: F401
        import httpx_sse  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"streamkit's upstream proxy needs httpx and httpx-sse ({exc}); "
            "install them with: pip install 'streamkit[proxy]'"
        ) from exc


def _check_timeouts(connect_timeout: float, read_timeout: float) -> None:
    # None is refused too: an unbounded upstream read is the leak this module exists to stop.
    check_duration("connect_timeout", connect_timeout)
    check_duration("read_timeout", read_timeout)


def _as_request(
    upstream: httpx.Request | str, client: httpx.AsyncClient | None, accept: str | None = None
) -> httpx.Request:
    _import_httpx()
    return as_request(upstream, client=client, accept=accept, what="upstream")


@asynccontextmanager
async def open_upstream(
    upstream: httpx.Request | str,
    *,
    client: httpx.AsyncClient | None = None,
    connect_timeout: float = 10.0,
    read_timeout: float = 60.0,
) -> AsyncIterator[httpx.Response]:
    """Send *upstream* and yield its streamed response; on exit, abort it.

    Enter it through the producer's sender, so that the abort happens on every end::

        async def produce(send):
            response = await send.enter_async_context(open_upstream(request))
            async for chunk in response.aiter_bytes():
                await send(chunk)

    Leaving the block before the body was read to the end closes the response's connection,
    which the upstream server sees as its client disconnecting. A client made here is closed
    too; a *client* passed in stays open, for the next stream. (httpx's body iterators, left
    mid-way, are finalised later, and trio warns about each; :func:`upstream_events` and
    :func:`upstream_bytes` unwind them when the stream ends.)

    :param upstream: the request to send; a ``str`` is a URL to ``GET``, built by *client*
        when one is given (its ``base_url``, headers and cookies). Its timeouts are replaced
        by the two below.
    :param client: the client to send it with; by default one made for this request alone
        (a few milliseconds of CPU each time: pass a shared one under load).
    :param connect_timeout: seconds to wait for a connection, new or from the pool.
    :param read_timeout: seconds to wait for each piece of the upstream response, and for
        each write of the request body.
    :raises UpstreamError: the upstream answered with a status other than 2xx.
    :raises httpx.TimeoutException: a bound above was reached.
    :raises TypeError: *upstream* is neither a URL nor a request, or *client* is no
        ``httpx.AsyncClient``.
    :raises ValueError: a timeout is not a positive, finite number of seconds, or the URL
        is not http or https, or has no host, or a port outside 1 to 65535.
    """
    _check_timeouts(connect_timeout, read_timeout)
    request = _as_request(upstream, client)
    import httpx

    timeout = httpx.Timeout(
        connect=connect_timeout, read=read_timeout, write=read_timeout, pool=connect_timeout
    )
    request.extensions = {**request.extensions, "timeout": timeout.as_dict()}
    owned = client is None
    if client is None:
        # Loading the CA bundle takes tens of milliseconds: done once, and not in the loop.
        ssl_context = await anyio.to_thread.run_sync(default_ssl_context)
        http = httpx.AsyncClient(verify=ssl_context)
    else:
        http = client
    try:
        response = await http.send(request, stream=True)
        try:
            if not response.is_success:
                raise UpstreamError(
                    f"upstream {request.method} {shown_url(request.url)} answered "
                    f"{response.status_code} {reason_phrase(response)}, expected a 2xx status",
                    status_code=response.status_code,
                    url=str(request.url),
                )
            yield response
        finally:
            await response.aclose()
    finally:
        if owned:
            await http.aclose()


def _as_httpx_sse(event: ServerSentEvent, last_id: str) -> httpx_sse.ServerSentEvent:
    # What a transform is given, with or without resume: httpx-sse's event, whose id is the
    # last one in effect and whose defaults are filled in.
    import httpx_sse

    return httpx_sse.ServerSentEvent(
        event=event.event or "message", data=event.data or "", id=last_id, retry=event.retry
    )


def _forwardable(
    event: ServerSentEvent, request: httpx.Request, status_code: int, min_retry: int
) -> ServerSentEvent:
    """*event*, refused if its id is one no downstream resume could start from: sent on, a
    browser would send it back, and the server would not read it (see
    :func:`~streamkit.ServerSentEvent`); its ``retry`` raised to *min_retry* milliseconds
    (see :func:`_min_retry`)."""
    if event.id is not None and not resumable_id(event.id):
        raise UpstreamError(
            f"upstream {request.method} {shown_url(request.url)} sent the event id "
            f"{event.id!r:.80}, which no downstream client could resume from (a control "
            "character, a space at either end, or over 1024 characters)",
            status_code=status_code,
            url=str(request.url),
        )
    return _floored(event, min_retry)


def _floored(event: ServerSentEvent, min_retry: int) -> ServerSentEvent:
    """*event*, its ``retry`` raised to *min_retry* milliseconds if it is shorter."""
    if event.retry is not None and event.retry < min_retry:
        return trusted_event(event.data, event.event, event.id, min_retry)
    return event


def _copy(request: httpx.Request) -> httpx.Request:
    import httpx

    return httpx.Request(
        request.method,
        request.url,
        headers=request.headers,
        stream=request.stream,
        extensions=request.extensions,
    )


def _last_event_id_header(last_event_id: str) -> bytes | None:
    """*last_event_id* as a ``Last-Event-ID`` header's value; ``None`` for ``""``, none.

    :raises TypeError: it is not a ``str``.
    :raises ValueError: it holds a control character, which no header can carry.
    """
    check_type("last_event_id", last_event_id, str)
    if not last_event_id:
        return None
    value = last_event_id_header(last_event_id)
    if value is None:
        raise ValueError(
            "last_event_id holds a control character, which no Last-Event-ID header can "
            f"carry: {last_event_id!r:.80}"
        )
    return value


def _min_retry(backoff: Backoff) -> int:
    """The shortest ``retry`` sent on, in milliseconds: the shortest the proxy would obey
    itself. A browser obeys an upstream's ``retry: 0`` to the letter, and would reconnect the
    moment the stream ends, starting the upstream's work again, in a tight loop."""
    if not isinstance(backoff, Backoff):
        raise TypeError(f"backoff must be a Backoff, got {type(backoff).__name__}")
    return math.ceil(backoff.min_retry * 1000)


def upstream_events(
    upstream: httpx.Request | str,
    *,
    client: httpx.AsyncClient | None = None,
    connect_timeout: float = 10.0,
    read_timeout: float = 60.0,
    transform: EventTransform | None = None,
    resume: bool = False,
    backoff: Backoff = Backoff(max_reconnect_time=60.0),  # noqa: B008 (frozen, so shared)
    max_event_size: int = MAX_EVENT_SIZE,
    last_event_id: str | None = None,
) -> Producer[ServerSentEvent | str]:
    """A producer for an :class:`~streamkit.EventSourceResponse` that forwards an upstream
    event stream, event by event::

        return EventSourceResponse(upstream_events(
            httpx.Request("POST", LLM_URL, json=body), read_timeout=30.0))

    The upstream is aborted on every end of the downstream stream (see
    :func:`open_upstream`).

    :param upstream: see :func:`open_upstream`; ``Accept: text/event-stream`` is added.
    :param client: see :func:`open_upstream`.
    :param connect_timeout: see :func:`open_upstream`.
    :param read_timeout: see :func:`open_upstream`; with heartbeats upstream, it only needs
        to exceed their interval.
    :param transform: maps each upstream event (one a browser would dispatch: it has a
        ``data:`` line) to the item sent (``None`` drops it). By default each frame is sent
        on as it came, with the fields it carried, including a frame holding only an id or a
        ``retry`` (but a ``retry`` under *backoff*'s ``min_retry`` is raised to it);
        comments (the upstream's heartbeats) are not.
    :param resume: when the upstream connection ends (closed, reset, or silent for
        *read_timeout*) without a 204, connect again with ``Last-Event-ID`` and go on: the
        downstream client sees one unbroken stream. A ``Last-Event-ID`` in *upstream*'s
        headers is where the first connection resumes. Only events a browser would dispatch
        are forwarded in this mode, each with the last id in effect; a frame holding only
        an id or a ``retry`` is applied to the upstream connection, not sent on. A body
        *upstream* streams from an async iterator is read whole first, to be sent on each
        connection.
    :param backoff: with *resume*, when to reconnect and when to give up (by default after
        a minute without a working upstream connection). Its ``min_retry`` is the shortest
        ``retry`` sent on, with or without *resume* (0.1 s by default): a browser told
        ``retry: 0`` would reconnect, and start the upstream's work again, the moment each
        stream ends.
    :param max_event_size: the most characters one upstream event may hold while it
        arrives (16 MiB by default).
    :param last_event_id: the id the upstream resumes after, sent as the ``Last-Event-ID`` of
        its first request (UTF-8, as a browser sends it); with *resume*, the next requests
        send the last id forwarded. To forward the downstream client's own resume, pass
        ``streamkit.last_event_id(request.headers)``: ``None`` when it sent none, or one no
        event id could be. ``None`` (the default) keeps *upstream*'s own ``Last-Event-ID``
        header, if it has one; ``""`` sends none. (Copied into *upstream*'s headers
        instead, a downstream client's id beyond ASCII fails: httpx encodes a ``str``
        header as ASCII.)
    :raises UpstreamError: (in the stream) the upstream's status is not 2xx (a 204 ends
        the stream as complete, the WHATWG word to stop), its body is not
        ``text/event-stream`` or in a ``Content-Encoding`` other than ``gzip`` and
        ``deflate``, an event grew past *max_event_size* (counted decoded), or an event's id
        is one no downstream client could resume from.
    :raises ReconnectError: (in the stream) with *resume*, the *backoff* gave up.
    :raises TypeError: *upstream* is neither a URL nor a request, *client* is no
        ``httpx.AsyncClient``, *transform* is not callable, *resume* is no ``bool``,
        *backoff* is not a :class:`~streamkit.client.Backoff`, or *last_event_id* is not a
        ``str``.
    :raises ValueError: a timeout is not a positive, finite number of seconds, the URL is
        not http or https (or has no host, or a port outside 1 to 65535), or
        *last_event_id* holds a control character.
    """
    _check_timeouts(connect_timeout, read_timeout)
    check_count("max_event_size", max_event_size)
    # Here, not at the first event, after the stream's 200.
    check_callable("transform", transform, optional=True)
    check_type("resume", resume, bool)
    min_retry = _min_retry(backoff)
    request = _as_request(upstream, client, "text/event-stream")
    if last_event_id is not None:
        # Refused here, before the stream starts; set on a copy, as the caller's request may
        # be sent for other clients too, each with an id of its own.
        request = _copy(request)
        set_last_event_id(request, _last_event_id_header(last_event_id))
    if resume:
        return _resuming_events(
            request,
            client=client,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            transform=transform,
            backoff=backoff,
            max_event_size=max_event_size,
            last_event_id=last_event_id,
        )

    async def produce(send: StreamSender[ServerSentEvent | str]) -> None:
        response = await send.enter_async_context(
            open_upstream(
                request,
                client=client,
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
            )
        )
        if response.status_code == 204:
            return  # the upstream's word to stop, as with resume: nothing to forward
        content_type = response.headers.get("content-type", "")
        if content_type.partition(";")[0].strip().lower() != "text/event-stream":
            raise UpstreamError(
                f"upstream {request.method} {shown_url(request.url)} sent {content_type!r}, "
                "expected 'text/event-stream'",
                status_code=response.status_code,
                url=str(request.url),
            )
        chunks = decoded_body(response)
        send.push_async_callback(unwind, chunks)
        decoder = SSEDecoder(max_size=max_event_size)
        last_id = ""  # the last id in effect, which a transform is given
        async for chunk in chunks:
            try:
                frames = decoder.feed(chunk)
                too_large = None
            except FrameTooLarge as exc:
                frames, too_large = exc.frames, exc
            for frame in frames:
                if transform is None:
                    if frame.data is not None or frame.id is not None or frame.retry is not None:
                        await send(_forwardable(frame, request, response.status_code, min_retry))
                    continue
                if frame.id is not None:
                    last_id = frame.id
                if frame.data is not None:
                    item = transform(_as_httpx_sse(frame, last_id))
                    if item is not None:
                        await send(item)
            if too_large is not None:
                raise UpstreamError(
                    f"upstream {request.method} {shown_url(request.url)} sent a body that "
                    f"cannot be read: {too_large}",
                    status_code=response.status_code,
                    url=str(request.url),
                ) from too_large

    return produce


def _resuming_events(
    request: httpx.Request,
    *,
    client: httpx.AsyncClient | None,
    connect_timeout: float,
    read_timeout: float,
    transform: EventTransform | None,
    backoff: Backoff,
    max_event_size: int,
    last_event_id: str | None,
) -> Producer[ServerSentEvent | str]:
    min_retry = _min_retry(backoff)

    async def produce(send: StreamSender[ServerSentEvent | str]) -> None:
        # Entered through the sender: whatever ends the downstream stream, the upstream
        # connection (or the wait before the next one) ends with it, in this task.
        stream = await send.enter_async_context(
            EventStream(
                request,
                client=client,
                # Given as it was, not read back from the header: httpx would decode it
                # with the other headers' encoding, Latin-1 if one of them is not UTF-8.
                last_event_id=last_event_id,
                heartbeat_interval=read_timeout,
                missed_heartbeats=1,
                connect_timeout=connect_timeout,
                backoff=backoff,
                max_event_size=max_event_size,
            )
        )
        checked: str | None = None  # each event carries the last id: checked once
        async for event in stream:
            if transform is None:
                if event.id is not checked:
                    # A 2xx: the stream follows nothing else, and does not keep which.
                    _forwardable(event, request, 200, min_retry)
                    checked = event.id
                await send(_floored(event, min_retry))
                continue
            item = transform(_as_httpx_sse(event, event.id or ""))
            if item is not None:
                await send(item)

    return produce


def upstream_bytes(
    upstream: httpx.Request | str,
    *,
    client: httpx.AsyncClient | None = None,
    connect_timeout: float = 10.0,
    read_timeout: float = 60.0,
) -> Producer[bytes]:
    """A producer for a :class:`~streamkit.StreamResponse` that forwards an upstream body as
    it arrives, decoded from ``gzip`` or ``deflate`` 64 KiB at a time (another
    ``Content-Encoding`` is refused: nothing bounds what it decodes to).

    The upstream is aborted on every end of the downstream stream (see
    :func:`open_upstream`).

    :param upstream: see :func:`open_upstream`.
    :param client: see :func:`open_upstream`.
    :param connect_timeout: see :func:`open_upstream`.
    :param read_timeout: see :func:`open_upstream`.
    :raises UpstreamError: (in the stream) the upstream's status is not 2xx, or its
        ``Content-Encoding`` is not ``gzip`` or ``deflate``.
    :raises TypeError: *upstream* is neither a URL nor a request, or *client* is no
        ``httpx.AsyncClient``.
    :raises ValueError: a timeout is not a positive, finite number of seconds, or the URL
        is not http or https, or has no host, or a port outside 1 to 65535.
    """
    _check_timeouts(connect_timeout, read_timeout)
    request = _as_request(upstream, client)

    async def produce(send: StreamSender[bytes]) -> None:
        response = await send.enter_async_context(
            open_upstream(
                request,
                client=client,
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
            )
        )
        chunks = decoded_body(response)
        send.push_async_callback(unwind, chunks)
        async for chunk in chunks:
            await send(chunk)

    return produce
