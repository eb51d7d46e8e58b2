"""``python -m streamkit.demo``: see :func:`streamkit.demo.main`."""

from ._main import main

main()
