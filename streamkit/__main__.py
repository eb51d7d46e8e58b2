"""``python -m streamkit run MODULE:APP``: see :func:`streamkit._run.main`."""

from ._run import main

# Guarded: worker processes started with the spawn method import this module again.
if __name__ == "__main__":
    raise SystemExit(main())
