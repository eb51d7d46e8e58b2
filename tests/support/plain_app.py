"""An ASGI app to name on a command line (``support.plain_app:app``) where what it serves does
not matter: an instance, which ``streamkit run`` serves, where the class is refused."""

from starlette.applications import Starlette

app = Starlette()
