"""Server-sent events framing, per the WHATWG ``text/event-stream`` format.

Pure functions over frozen values: nothing here does I/O or imports anyio. The one rule that
matters most: a value can never inject a field. ``data`` may hold any line breaks (it becomes
several ``data:`` lines), while an event name holding CR or LF is refused with a
:class:`ValueError` that names it. So is an id holding any control character, a space at
either end, or longer than :data:`MAX_LAST_EVENT_ID_LENGTH`: a browser sends the id back as
``Last-Event-ID``, which HTTP strips and the server ignores past those, so no resume could
start from it.

Data that is not a ``str`` is sent as JSON (a ``str`` is sent as it is, unlike ``fastapi.sse``,
which quotes it). A ``dict`` item whose keys are all event fields, sse-starlette's way of
writing an event, is read as one (:func:`event_from_item`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ._checks import check_count, check_text, show_number
from ._json import JSONEncoder, encode_json, shown

__all__ = [
    "EVENT_FIELDS",
    "MAX_RETRY_DIGITS",
    "ServerSentEvent",
    "encode_comment",
    "encode_data",
    "encode_event",
    "event_from_item",
    "is_event_name",
    "last_event_id",
    "read_last_event_id",
    "resumable_id",
    "trusted_event",
]

logger = logging.getLogger("streamkit")

#: The longest ``Last-Event-ID`` header accepted; longer ones are ignored.
MAX_LAST_EVENT_ID_LENGTH = 1024
#: The most digits a ``retry:`` (or a ``Retry-After``) may have to be obeyed: any number of
#: 19 digits is below 2 ** 64, a browser's bound. A client ignores a longer one, as a browser
#: ignores one that overflows, so an event may not carry one.
MAX_RETRY_DIGITS = 19
_RETRY_LIMIT = 10**MAX_RETRY_DIGITS

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


# init=False: its __init__ is below. The one a frozen dataclass generates sets each field
# through object.__setattr__: an event took 0.8 µs to make with it, 0.55 µs with this one, and
# a producer makes one per item.
@dataclass(frozen=True, slots=True, kw_only=True, init=False)
class ServerSentEvent:
    """One event of an event stream.

    :param data: the payload. A ``str`` is sent as it is: line breaks (CR, LF, CRLF) split it
        into ``data:`` lines, which the browser joins back with ``\\n``. Anything else (a
        ``dict``, a list, a number, a Pydantic model, a dataclass) is sent as JSON, encoded when
        the event is sent by the response's ``json_encoder``. ``None`` sends no ``data:`` line
        (an id- or retry-only frame, which a browser does not dispatch).
    :param event: the event name (``EventSource.addEventListener(name, ...)``).
    :param id: the event id, sent back by a reconnecting browser as ``Last-Event-ID``.
    :param retry: the reconnection delay to ask of the browser, in whole milliseconds.
    :param comment: a comment, ignored by browsers; useful to keep proxies from timing out.
    :raises ValueError: an event name contains CR or LF, an id contains a control character,
        starts or ends with a space, or is longer than 1024 characters (what a resume reads
        back), a field holds a lone surrogate (UTF-8 cannot carry it), or ``retry`` is
        negative or has more than 19 digits (which a client ignores).
    :raises TypeError: a field has the wrong type.
    """

    data: Any = None
    event: str | None = None
    id: str | None = None
    retry: int | None = None
    comment: str | None = None

    def __init__(
        self,
        *,
        data: Any = None,
        event: str | None = None,
        id: str | None = None,
        retry: int | None = None,
        comment: str | None = None,
    ) -> None:
        # Each field is set through its slot's own descriptor, which a frozen class's
        # __setattr__ does not stand in front of (see _set_field below the class).
        _set_data(self, data)
        _set_event(self, event)
        _set_id(self, id)
        _set_retry(self, retry)
        _set_comment(self, comment)
        if type(data) is str:
            if not data.isascii():  # check_text's own fast path, without the call
                check_text("SSE data", data)
        elif isinstance(data, str):
            check_text("SSE data", data)
        elif isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(
                f"SSE data must be a str or a value to send as JSON, got "
                f"{type(data).__name__}: {shown(data)}; decode bytes first"
            )
        if event is None and id is None and comment is None:
            pass  # data alone (the most common event): no other text to check
        else:
            self._check_fields()
        if retry is not None:
            check_count("SSE retry (milliseconds)", retry, least=0)
            if retry >= _RETRY_LIMIT:
                raise ValueError(
                    f"SSE retry (milliseconds) must have at most {MAX_RETRY_DIGITS} digits "
                    f"(a client ignores a longer one), got {show_number(retry)}"
                )

    def _check_fields(self) -> None:
        # Written out field by field, not looped over by name: an event with an id (a
        # broadcast's, a resumable stream's) is made once per item.
        event, id_, comment = self.event, self.id, self.comment
        if event is not None:
            _check_field("event", event)
            if not is_event_name(event):
                raise ValueError(f"SSE event name must not contain CR or LF: {shown(event)}")
        if id_ is not None:
            _check_field("id", id_)
            if not resumable_id(id_):
                raise ValueError(
                    "SSE id must hold no control character (CR, LF, NUL, TAB, ...), no space "
                    f"at either end and at most {MAX_LAST_EVENT_ID_LENGTH} characters, the "
                    f"Last-Event-ID a resume reads back: {shown(id_)}"
                )
        if comment is not None:
            _check_field("comment", comment)


def _check_field(name: str, value: object) -> None:
    if type(value) is not str and not isinstance(value, str):
        raise TypeError(
            f"SSE {name} must be a str or None, got {type(value).__name__}: {shown(value)}"
        )
    if not value.isascii():
        check_text(f"SSE {name}", value)


def is_event_name(text: str) -> bool:
    """Whether *text* can be sent as an event name: no line break, which would end its line
    and begin another field."""
    return "\r" not in text and "\n" not in text


def resumable_id(id_: str) -> bool:
    """Whether a resume can start from *id_*: a browser sends it back as ``Last-Event-ID``,
    and the server reads back the same id only if it holds no control character (see
    :func:`read_last_event_id`), no space at either end (HTTP drops them) and at most
    :data:`MAX_LAST_EVENT_ID_LENGTH` characters."""
    return (
        len(id_) <= MAX_LAST_EVENT_ID_LENGTH
        # isprintable() is False for every control character, and asks no regex; it is
        # False for some other characters too (U+2028, say), which the search then clears.
        and (id_.isprintable() or not _CONTROL.search(id_))
        and not (id_[:1] == " " or id_[-1:] == " ")
    )


def _set_field(name: str) -> Callable[[ServerSentEvent, Any], None]:
    """What sets the field *name* of an event: its slot's descriptor, bound to nothing."""
    return getattr(ServerSentEvent, name).__set__  # type: ignore[no-any-return]


_set_data = _set_field("data")
_set_event = _set_field("event")
_set_id = _set_field("id")
_set_retry = _set_field("retry")
_set_comment = _set_field("comment")
_new = object.__new__


def trusted_event(
    data: Any, event: str | None, id_: str | None, retry: int | None
) -> ServerSentEvent:
    """An event made without its checks, which cost more than what makes the values: for
    values valid by construction (a parsed line holds no line break and its id no NUL, a
    retry is read from digits, a broker's id is its own, fields checked already)."""
    frame: ServerSentEvent = _new(ServerSentEvent)
    _set_data(frame, data)
    _set_event(frame, event)
    _set_id(frame, id_)
    _set_retry(frame, retry)
    _set_comment(frame, None)
    return frame


def _field_lines(name: str, value: str) -> str:
    # Always "name: value": a parser drops one space after the colon, so a value that itself
    # starts with a space keeps it.
    if "\n" not in value and "\r" not in value:
        return f"{name}: {value}\n"  # one line: no split (a search of the text, in C)
    return "".join(f"{name}: {line}\n" for line in _LINE_BREAK.split(value))


#: The fields of an event, as a ``dict`` item names them.
EVENT_FIELDS = frozenset({"data", "event", "id", "retry", "comment"})


def event_from_item(item: object) -> ServerSentEvent:
    """The event an event stream's *item* stands for.

    A :class:`ServerSentEvent` is itself; a ``dict`` whose keys are all event fields (``data``,
    ``event``, ``id``, ``retry``, ``comment``) and that has ``data`` or ``event`` is that
    event (sse-starlette's item); anything else is the data of an unnamed event.

    :raises TypeError: a field of a ``dict`` event has the wrong type.
    :raises ValueError: a field of a ``dict`` event is invalid.
    """
    if isinstance(item, ServerSentEvent):
        return item
    if (
        isinstance(item, dict)
        and item
        and item.keys() <= EVENT_FIELDS
        and ("data" in item or "event" in item)
    ):
        return ServerSentEvent(**item)
    return ServerSentEvent(data=item)


def encode_event(event: ServerSentEvent, json_encoder: JSONEncoder | None = None) -> bytes:
    """Encode *event* as one UTF-8 event-stream frame, ending in a blank line.

    :param json_encoder: encodes data that is not a ``str``; by default the standard
        library's ``json``, which also takes Pydantic models and dataclasses.
    :raises TypeError: the data cannot be encoded as JSON; the message names it.
    :raises ValueError: the data holds a value JSON cannot carry; the message names it.
    """
    data = event.data
    if (
        type(data) is str
        and event.retry is None
        and event.comment is None
        and "\n" not in data
        and "\r" not in data
    ):
        # One line of data, with a name or an id or neither: a token, a broadcast's event.
        # One string made, its fields checked when the event was.
        name, id_ = event.event, event.id
        if name is None:
            return (f"data: {data}\n\n" if id_ is None else f"id: {id_}\ndata: {data}\n\n").encode()
        if id_ is None:
            return f"event: {name}\ndata: {data}\n\n".encode()
        return f"event: {name}\nid: {id_}\ndata: {data}\n\n".encode()
    if data is not None and not isinstance(data, str):
        try:
            data = encode_json(data, json_encoder)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"SSE data {exc}") from None
    parts = []
    if event.comment is not None:
        parts.append(_field_lines("", event.comment))
    if event.event is not None:
        parts.append(f"event: {event.event}\n")
    if event.id is not None:
        parts.append(f"id: {event.id}\n")
    if event.retry is not None:
        parts.append(f"retry: {event.retry}\n")
    if data is not None:
        parts.append(_field_lines("data", data))
    parts.append("\n")
    return "".join(parts).encode()


def encode_data(text: str) -> bytes:
    """Encode an unnamed event whose data is *text*: what ``encode_event`` makes of
    ``ServerSentEvent(data=text)``, without making the event.

    :raises ValueError: *text* holds a lone surrogate.
    """
    check_text("SSE data", text)
    if "\n" not in text and "\r" not in text:
        return f"data: {text}\n\n".encode()  # one line: one string made
    return (_field_lines("data", text) + "\n").encode()


def encode_comment(text: str) -> bytes:
    """Encode a comment-only frame (what a heartbeat sends).

    :raises ValueError: *text* holds a lone surrogate.
    """
    check_text("comment", text)
    return (_field_lines("", text) + "\n").encode()


def last_event_id(headers: Mapping[str, str]) -> str | None:
    """The ``Last-Event-ID`` a reconnecting client sent, or ``None``.

    A browser sends back the id it was sent, UTF-8 encoded; ASGI servers hand header bytes
    over decoded as latin-1, so they are decoded again here and a non-ASCII id round-trips.
    A value longer than :data:`MAX_LAST_EVENT_ID_LENGTH`, holding a control character or
    bytes that are not UTF-8 is ignored (logged at DEBUG): it could not have come from an id
    this server sent.

    :param headers: the request's headers, such as ``request.headers``.
    """
    return read_last_event_id(headers)[0]


def read_last_event_id(headers: Mapping[str, str]) -> tuple[str | None, str | None]:
    """The ``Last-Event-ID`` as :func:`last_event_id` reads it, and the header it ignored."""
    value = headers.get("last-event-id")
    if value is None:
        return None, None
    if not value.isascii():
        try:
            value = value.encode("latin-1").decode()
        except UnicodeError:
            logger.debug("ignoring a Last-Event-ID header that is not UTF-8: %.80r", value)
            return None, value
    if len(value) > MAX_LAST_EVENT_ID_LENGTH or _CONTROL.search(value):
        logger.debug("ignoring an invalid Last-Event-ID header: %.80r", value)
        return None, value
    return value, None
