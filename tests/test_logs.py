"""Where streamkit's lines go: to stderr when the program set up nothing, through the program's
logging when it did; other libraries' loggers keep their levels."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROGRAM = """
import logging
import sys

from streamkit._logs import configure_run_logging, show_stream_ends

if sys.argv[1] == "configured":
    logging.basicConfig(level=logging.WARNING, format="program: %(message)s")
if sys.argv[1] == "run":
    configure_run_logging("INFO")
else:
    show_stream_ends()
show_stream_ends()  # twice: one handler, one line
logging.getLogger("streamkit").info("stream /x ended: completed")
logging.getLogger("httpx").info("HTTP Request: GET /")
"""


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("nothing", ["streamkit: stream /x ended: completed"]),
        ("run", ["streamkit: stream /x ended: completed"]),
        # The program's own logging decides: its root is at WARNING.
        ("configured", []),
    ],
)
def test_stream_ends_show_unless_the_program_configured_logging(
    setup: str, expected: list[str]
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM, setup],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    lines = result.stderr.splitlines()
    assert [line.split(" INFO ", 1)[-1] for line in lines] == expected
