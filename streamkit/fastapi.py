"""FastAPI path operations that stream with streamkit; needs the ``fastapi`` extra (FastAPI).

A path operation that *returns* a streamkit response needs nothing from here: FastAPI sends a
returned response as it is. This module serves the other style, ``fastapi.sse``'s, where the
path operation is an async generator and ``response_class`` says how its items are sent::

    app = FastAPI()
    app.router.route_class = StreamingRoute

    @app.get("/ticks", response_class=EventSourceResponse.with_options(send_timeout=5.0))
    async def ticks(start: int = 0) -> AsyncIterator[Tick]:
        ...

:func:`mount_app` mounts a :class:`~streamkit.App` and describes its stream routes in the
OpenAPI document, which FastAPI leaves mounted applications out of.

Without :class:`StreamingRoute`, FastAPI hands the response class a generator of its own that
iterates the path operation's: when the client leaves while the path operation waits at a
``yield``, closing FastAPI's generator does not close the path operation's, whose ``finally``
is then left to the garbage collector (it runs late, or not at all), outside ``cleanup_timeout``
and after the stream's end was reported.
"""

try:
    import fastapi as _fastapi  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in a subprocess without FastAPI
    raise ImportError(
        f"streamkit.fastapi needs FastAPI ({exc}); install it with: "
        "pip install 'streamkit[fastapi]'"
    ) from exc

from ._fastapi import StreamingRoute as StreamingRoute
from ._fastapi import mount_app as mount_app

__all__ = ("StreamingRoute", "mount_app")
