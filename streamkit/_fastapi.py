"""FastAPI path operations that stream with streamkit (the implementation of
``streamkit.fastapi``, which says what it is for). Needs FastAPI."""

from __future__ import annotations

import inspect
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, get_args, get_origin

from fastapi import FastAPI
from fastapi.dependencies.utils import get_stream_item_type, get_typed_annotation
from fastapi.exceptions import ResponseValidationError
from fastapi.routing import APIRoute
from fastapi.utils import create_model_field
from starlette.responses import Response
from starlette.routing import Route, compile_path

from ._app import App
from ._checks import check_status_code, check_type
from ._json import encode_by_alias
from ._responses import EventSourceResponse, NDJSONResponse, StreamResponse
from ._routes import StreamEndpoint
from ._sender import StreamSender
from ._sse import ServerSentEvent, event_from_item

if TYPE_CHECKING:
    from fastapi._compat import ModelField  # what create_model_field makes

__all__ = ["StreamingRoute", "mount_app"]


def _signature(endpoint: Callable[..., Any]) -> inspect.Signature:
    """*endpoint*'s signature, its annotations evaluated where it was defined."""
    try:
        return inspect.signature(endpoint, eval_str=True)
    except NameError:
        # A name its module does not hold (imported under TYPE_CHECKING, an alias made in a
        # factory): each annotation is read on its own, as FastAPI reads them, so the others
        # are still types. Left a string, an annotation would be read again by FastAPI in
        # this module, the wrapper's, where BackgroundTasks or Request is not a name.
        signature = inspect.signature(endpoint)
        namespace = getattr(inspect.unwrap(endpoint), "__globals__", {})
        return signature.replace(
            parameters=[
                parameter.replace(annotation=get_typed_annotation(parameter.annotation, namespace))
                for parameter in signature.parameters.values()
            ],
            return_annotation=get_typed_annotation(signature.return_annotation, namespace),
        )


def _stream_class(response_class: object) -> type[StreamResponse[Any]] | None:
    value = getattr(response_class, "value", response_class)  # FastAPI's Default(...) holder
    if isinstance(value, type) and issubclass(value, StreamResponse):
        return value
    return None


#: The parameter that hands FastAPI's injected Response to a path operation taking none.
_RESPONSE_PARAMETER = "_streamkit_response"


def _responding(
    endpoint: Callable[..., Any],
    response_class: type[StreamResponse[Any]],
    status_code: int | None,
    item_field: ModelField | None,
    serialization: dict[str, Any],
) -> Callable[..., Any]:
    """An async function taking *endpoint*'s parameters that returns its generator as a
    *response_class* response, for FastAPI to send as it is; its items validated and
    serialized by *item_field*, if given, with *serialization*'s options (see
    :func:`_as_declared`).

    Sent as FastAPI sends its own generator path operations: with the route's *status_code*,
    or the one set on the injected ``Response`` (by a dependency), and that ``Response``'s
    headers and cookies. FastAPI injects one ``Response`` for the whole request, so it is
    the endpoint's own ``Response`` parameter if it takes one.
    """
    signature = _signature(endpoint)
    parameters = list(signature.parameters.values())
    injected = next((p.name for p in parameters if _is_response(p.annotation)), _RESPONSE_PARAMETER)
    if injected == _RESPONSE_PARAMETER:
        # Keyword-only, before a **kwargs if there is one.
        at = len(parameters)
        if parameters and parameters[-1].kind is inspect.Parameter.VAR_KEYWORD:
            at -= 1
        parameters.insert(
            at, inspect.Parameter(injected, inspect.Parameter.KEYWORD_ONLY, annotation=Response)
        )

    async def respond(*args: Any, **kwargs: Any) -> Response:
        sub_response: Response = (
            kwargs.pop(injected) if injected == _RESPONSE_PARAMETER else kwargs[injected]
        )
        status = sub_response.status_code or status_code
        content = endpoint(*args, **kwargs)
        if item_field is not None:
            events = issubclass(response_class, EventSourceResponse)
            content = _as_declared(content, item_field, serialization, events=events)
        response = (
            response_class(content)
            if status is None
            else response_class(content, status_code=status)
        )
        response.headers.raw.extend(sub_response.headers.raw)
        if isinstance(response, EventSourceResponse | NDJSONResponse) and not response.json_encoder:
            # No encoder of the user's: models go by their aliases, as FastAPI sends its own
            # generators' items and as the OpenAPI document names their fields.
            response.json_encoder = encode_by_alias
        return response

    # No __wrapped__: FastAPI would follow it back to a generator function. The annotations
    # are evaluated here, where the endpoint's module is known.
    respond.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=parameters, return_annotation=response_class
    )
    for name in ("__module__", "__name__", "__qualname__", "__doc__"):
        setattr(respond, name, getattr(endpoint, name, None))
    return respond


async def _as_declared(
    generator: AsyncGenerator[Any, None],
    field: ModelField,
    serialization: dict[str, Any],
    *,
    events: bool,
) -> AsyncGenerator[Any, None]:
    """*generator*'s items as FastAPI sends its own generators' items: validated as the
    declared type and serialized as it (by alias, without what it does not declare: a
    subclass's fields, a dict's other keys). An event stream's events (a ServerSentEvent, a
    dict of event fields) are sent as they are. *serialization* holds the route's
    ``response_model_*`` options (``exclude_none``, ``by_alias``, ...) as FastAPI applies them.

    Closing this generator closes *generator*, wherever it waits, so its cleanup runs then.

    :raises ResponseValidationError: an item is not of the declared type.
    """
    async with aclosing(generator):
        async for item in generator:
            if events and (isinstance(item, ServerSentEvent) or _is_event_dict(item)):
                yield item
                continue
            value, errors = field.validate(item, {}, loc=("response",))
            if errors:
                raise ResponseValidationError(errors=errors, body=item)
            data = field.serialize(value, mode="json", **serialization)
            # Data for certain: a model with fields named as an event's is no event.
            yield ServerSentEvent(data=data) if events else data


#: The route's ``response_model_*`` options FastAPI serializes its generators' items with.
_SERIALIZATION = (
    "include",
    "exclude",
    "by_alias",
    "exclude_unset",
    "exclude_defaults",
    "exclude_none",
)


def _is_event_dict(item: object) -> bool:
    return isinstance(item, dict) and event_from_item(item).data is not item


def _is_response(annotation: object) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, Response)


class StreamingRoute(APIRoute):
    """A FastAPI route class for async generator path operations whose ``response_class`` is
    a streamkit response: the generator is the stream's content, run, ended and cleaned up by
    streamkit as for a returned response. Set it as ``app.router.route_class`` or
    ``APIRouter(route_class=StreamingRoute)``; other routes are FastAPI's as usual.

    A path operation annotated as returning a streamkit response (``-> EventSourceResponse``)
    is documented with its media type without ``response_class=``.

    The stream's options are the response class's: ``response_class=EventSourceResponse``, or
    ``EventSourceResponse.with_options(heartbeat_interval=5.0, on_end=...)`` for others.

    Where the generator's return annotation names its items (``AsyncIterator[Tick]``), each
    item of an event or NDJSON stream is validated and serialized as that type, as FastAPI
    sends its own generators' items (by alias, leaving out what the type does not declare);
    one that is not a ``Tick`` ends the stream with FastAPI's ``ResponseValidationError``.
    An event stream's events (a :class:`~streamkit.ServerSentEvent`, a dict of event fields)
    are sent as they are.

    In the OpenAPI document, the route's items are described as ``itemSchema`` where the
    generator's return annotation names them (``AsyncIterator[Tick]``): for an event stream,
    an event whose ``data`` holds the item as JSON (as ``fastapi.sse`` describes its own),
    for NDJSON the item itself. A generator of :class:`~streamkit.ServerSentEvent` is
    described as events of any data.

    :raises TypeError: the path operation is a plain (sync) generator function with a
        streamkit ``response_class``: a thread cannot be cancelled when the client leaves;
        or an async generator's ``status_code`` is not an ``int``.
    :raises ValueError: an async generator's ``status_code`` is one no stream can be sent
        with (see :class:`~streamkit.StreamResponse`).
    """

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        response_class = _stream_class(kwargs.get("response_class"))
        if response_class is None and not inspect.isasyncgenfunction(endpoint):
            # A path operation annotated as returning a stream response is documented as one.
            returned = _stream_class(_signature(endpoint).return_annotation)
            if returned is not None and not isinstance(kwargs.get("response_class"), type):
                kwargs["response_class"] = returned
        item_type = None
        if response_class is not None and inspect.isgeneratorfunction(endpoint):
            raise TypeError(
                f"path operation {endpoint.__qualname__} at {path!r} is a sync generator; "
                f"a {response_class.__name__} needs an async generator (async def ... yield)"
            )
        streaming = response_class is not None and inspect.isasyncgenfunction(endpoint)
        documented = False
        if streaming:
            assert response_class is not None
            if kwargs.get("status_code") is not None:
                check_status_code(kwargs["status_code"])  # here, not at each request
            item_type = get_stream_item_type(_signature(endpoint).return_annotation)
            documented = item_type not in (None, Any, ServerSentEvent, str)
            # The items of a JSON stream are sent as the declared type, as FastAPI sends its
            # own generators'; a bytes stream's are its bytes.
            json_items = issubclass(response_class, EventSourceResponse | NDJSONResponse)
            field = (
                create_model_field(name="StreamItem", type_=item_type, mode="serialization")
                if documented and json_items
                else None
            )
            serialization = {
                option: kwargs[f"response_model_{option}"]
                for option in _SERIALIZATION
                if f"response_model_{option}" in kwargs
            }
            endpoint = _responding(
                endpoint, response_class, kwargs.get("status_code"), field, serialization
            )
        super().__init__(path, endpoint, **kwargs)
        if not streaming:
            return
        assert response_class is not None
        if documented:
            # Registered as the stream's item (an included router's copy of the route keeps
            # it too), so FastAPI puts the models it names in the components.
            self.stream_item_type = item_type
            self.stream_item_field = create_model_field(
                name="StreamItem_" + self.unique_id, type_=item_type, mode="serialization"
            )
        self._document(response_class, item_type if documented else None)

    def _document(self, response_class: type[StreamResponse[Any]], item_type: Any) -> None:
        # Through openapi_extra, which FastAPI carries to an included router's copy of the
        # route (its is_sse_stream, it computes again, from a path operation that is no longer
        # a generator).
        if issubclass(response_class, EventSourceResponse):
            schema = _event_schema(None if item_type is None else _item_schema(item_type))
        elif issubclass(response_class, NDJSONResponse) and item_type is not None:
            schema = _item_schema(item_type)
        else:
            return
        status = str(self.status_code or _default_status(response_class))
        content = {response_class.media_type: {"itemSchema": schema}}
        extra = {"responses": {status: {"content": content}}}
        self.openapi_extra = _merged(self.openapi_extra or {}, extra)


def _default_status(response_class: type[StreamResponse[Any]]) -> int:
    """The status *response_class* sends unless told otherwise: its ``__init__``'s default,
    which FastAPI documents a route without a ``status_code`` under (one of ``with_options``
    sends its own); 200, as FastAPI reads it, if a subclass's names none."""
    parameter = inspect.signature(response_class.__init__).parameters.get("status_code")
    default = getattr(parameter, "default", None)
    return default if isinstance(default, int) else 200


def _item_schema(item_type: Any) -> dict[str, Any]:
    """The JSON schema of *item_type*, its models referred to in the components (where
    FastAPI puts them, named as Pydantic names them)."""
    from pydantic import TypeAdapter  # FastAPI depends on it

    # As a list's items, so that a model is a reference too, as FastAPI writes its own.
    schema = TypeAdapter(list[item_type]).json_schema(
        mode="serialization", ref_template="#/components/schemas/{model}"
    )
    items: dict[str, Any] = schema["items"]  # the $defs: FastAPI's, from stream_item_field
    return items


def _event_schema(data_schema: dict[str, Any] | None) -> dict[str, Any]:
    """One event of an event stream; its ``data`` holds JSON of *data_schema*, if given."""
    data: dict[str, Any] = {"type": "string"}
    schema: dict[str, Any] = {"type": "object"}
    if data_schema is not None:
        data |= {"contentMediaType": "application/json", "contentSchema": data_schema}
        schema["required"] = ["data"]
    schema["properties"] = {
        "data": data,
        "event": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer", "minimum": 0},
    }
    return schema


def _merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


#: What a path parameter's Starlette convertor says its type is; others are strings.
_CONVERTOR_TYPES = {"IntegerConvertor": int, "FloatConvertor": float}


def _item_type(endpoint: StreamEndpoint) -> Any:
    """The item type an App route's handler names: ``AsyncIterator[Item]`` returned by a
    generator, or ``send: StreamSender[Item]`` taken by a producer; ``Any`` if neither."""
    parameters = list(_signature(endpoint.handler).parameters.values())
    if endpoint.generator:
        annotation = _signature(endpoint.handler).return_annotation
        return get_stream_item_type(annotation) or Any
    annotation = parameters[1].annotation if len(parameters) > 1 else None
    if get_origin(annotation) is StreamSender and get_args(annotation):
        return get_args(annotation)[0]
    return Any


def _sent_as_described(item_type: Any) -> bool:
    """Whether an App, which sends a model by its fields' names, sends *item_type* as the
    components describe it, by its fields' aliases: whether no model in it has an alias."""
    from pydantic import TypeAdapter

    adapter = TypeAdapter(list[item_type])
    by_name = adapter.json_schema(mode="serialization", by_alias=False)
    return by_name == adapter.json_schema(mode="serialization", by_alias=True)


def _documenting(path: str, item_type: Any) -> Callable[..., Any]:
    """A generator function with *path*'s parameters, yielding *item_type*, that stands for an
    App route in FastAPI's OpenAPI document; it is never called."""

    async def documented(**params: Any) -> AsyncIterator[Any]:  # pragma: no cover
        raise AssertionError("served by the mounted App")
        yield

    convertors = compile_path(path)[2]
    parameters = [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            annotation=_CONVERTOR_TYPES.get(type(convertor).__name__, str),
        )
        for name, convertor in convertors.items()
    ]
    documented.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        parameters, return_annotation=AsyncIterator[item_type]
    )
    return documented


def mount_app(api: FastAPI, path: str, app: App, *, name: str | None = None) -> None:
    """Mount a :class:`~streamkit.App` in *api* at *path*, and describe its stream routes in
    *api*'s OpenAPI document, which FastAPI leaves mounted applications out of.

    Each stream route is described as :class:`StreamingRoute` describes a path operation,
    with the item type its handler names: the ``AsyncIterator[Item]`` a generator returns, or
    the ``StreamSender[Item]`` a producer takes. An item holding a Pydantic model with an
    alias is described without its schema: the App sends a model by its fields' names, the
    schema FastAPI keeps names their aliases. The description is a route placed after the
    mount, which the mount always matches first: the App serves every request.

    FastAPI must still run the App's lifespan: ``FastAPI(lifespan=app.lifespan)``.

    :param api: the FastAPI application.
    :param path: where to mount the App, such as ``/streams``.
    :param app: the App.
    :param name: the mount's name, for ``url_path_for``.
    :raises TypeError: *api* is not a FastAPI application, *path* not a ``str``, *app*
        not an :class:`~streamkit.App` (mount a Starlette application with ``api.mount``)
        or *name* not a ``str``.
    :raises ValueError: *path* does not start with ``/``.
    """
    check_type("api", api, FastAPI)
    check_type("path", path, str)
    if not path.startswith("/"):
        raise ValueError(f"path must start with '/', got {path!r}")
    check_type("app", app, App)
    check_type("name", name, str, optional=True)
    api.mount(path, app, name=name)
    prefix = path.rstrip("/")
    for route in app.router.routes:
        endpoint = getattr(route, "endpoint", None)
        if not (isinstance(route, Route) and isinstance(endpoint, StreamEndpoint)):
            continue
        full_path = prefix + route.path
        response_class = endpoint.response_class
        media_type = endpoint.arguments.get("media_type")
        if media_type and media_type != response_class.media_type:
            # Described with the route's own media type (a bytes route's).
            response_class = type(
                response_class.__name__, (response_class,), {"media_type": media_type}
            )
        item_type = _item_type(endpoint)
        if item_type is not Any and not _sent_as_described(item_type):
            item_type = Any  # no item schema rather than a wrong one
        for method in sorted(endpoint.route.methods):  # one each: FastAPI's operation ids
            api.router.routes.append(
                StreamingRoute(
                    full_path,
                    _documenting(full_path, item_type),
                    response_class=response_class,
                    methods=[method],
                    name=endpoint.route.name,
                )
            )
