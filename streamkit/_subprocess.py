"""Streaming a command's output, with the command stopped on every end of the stream.

The leak this prevents: the client leaves, the handler's task is gone, and ``tail -f`` (or a
long export, or a model run) keeps running, now an orphan; or it is killed but never waited
for, and stays a zombie. Here the command runs in a session of its own, entered through the
stream's :class:`~streamkit.StreamSender`, so whatever ends the stream, its whole process
group is sent ``SIGTERM``, given ``stop_grace_period`` to exit, then ``SIGKILL``, and the
command is waited for, in the producer's own task and shielded, before the end is reported.

On platforms without process groups (Windows), only the command itself is signalled.
"""

from __future__ import annotations

import codecs
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
from anyio.abc import Process

from ._checks import check_callable, check_count, check_duration, check_path, check_type
from ._exceptions import ProcessExitError
from ._sender import Producer, StreamSender, shielded_cleanup

__all__ = ["open_subprocess", "subprocess_lines"]

Command = str | Sequence[str]

# SIGKILL cannot be caught, so the exit follows at once; the bound is for a process stuck in
# the kernel (uninterruptible I/O), which nothing from user space can hurry.
_REAP_TIMEOUT = 5.0


def _signal_group(process: Process, number: signal.Signals) -> None:
    killpg = getattr(os, "killpg", None)
    try:
        if killpg is not None:
            # The group outlives its leader while any member is left; its id is the leader's
            # pid, which the kernel does not hand out again while the group exists.
            killpg(process.pid, number)
        elif process.returncode is None:
            process.send_signal(number)
    except ProcessLookupError:
        pass  # everyone in it has exited already


async def _stop(process: Process, stop_grace_period: float) -> None:
    try:
        if process.returncode is None:
            _signal_group(process, signal.SIGTERM)
            with anyio.move_on_after(stop_grace_period):
                await process.wait()
    finally:
        # Also when the cleanup above was cut short: members that ignored SIGTERM, or that
        # outlived a leader which exited on its own, are killed, and the leader is reaped
        # (an unreaped child stays a zombie for as long as this process lives).
        _signal_group(process, getattr(signal, "SIGKILL", signal.SIGTERM))
        with shielded_cleanup(_REAP_TIMEOUT):
            await process.aclose()


def _check_options(
    command: object, cwd: object, env: object, stderr: object, stop_grace_period: object
) -> None:
    if not isinstance(command, str | Sequence) or isinstance(command, bytes | bytearray):
        raise TypeError(
            f"command must be a str (for the shell) or a sequence of str, "
            f"got {type(command).__name__}: {command!r:.200}"
        )
    if not command:
        raise ValueError(f"command must name a program, got {command!r}")
    if isinstance(command, str):
        if "\0" in command:
            raise ValueError(f"command must not hold a NUL character, got {command!r:.200}")
    else:
        if not all(isinstance(argument, str | os.PathLike) for argument in command):
            raise TypeError(f"command's arguments must be str or os.PathLike, got {command!r:.200}")
        # The system refuses these only as the command starts: after the stream's 200.
        if not os.fspath(command[0]):
            raise ValueError(f"command must name a program, got {command!r:.200}")
        if any(_holds_nul(argument) for argument in command):
            raise ValueError(
                f"command's arguments must not hold a NUL character, got {command!r:.200}"
            )
    check_path("cwd", cwd, optional=True)
    if env is not None:
        _check_environment(env)
    if stderr == subprocess.PIPE:
        raise ValueError(
            "stderr must be subprocess.DEVNULL, subprocess.STDOUT or None, got subprocess.PIPE "
            "(a pipe nobody reads fills up and stalls the command)"
        )
    if stderr not in (subprocess.DEVNULL, subprocess.STDOUT, None):
        raise TypeError(
            f"stderr must be subprocess.DEVNULL, subprocess.STDOUT or None, got {stderr!r:.200}"
        )
    check_duration("stop_grace_period", stop_grace_period)


def _holds_nul(value: str | os.PathLike[str] | os.PathLike[bytes]) -> bool:
    text = os.fspath(value)
    return "\0" in text if isinstance(text, str) else b"\0" in text


def _check_environment(env: object) -> None:
    """Refuse what the system would refuse as the command starts, after the stream's 200:
    a name or value that is no text, a name that is empty or holds ``=``, a NUL anywhere."""
    if not isinstance(env, Mapping):
        raise TypeError(f"env must be a Mapping or None, got {type(env).__name__}: {env!r:.200}")
    for name, value in env.items():
        if not isinstance(name, str):
            raise TypeError(f"env's names must be str, got {type(name).__name__}: {name!r:.80}")
        if not name or "=" in name or "\0" in name:
            raise ValueError(
                f"env's names must not be empty nor hold '=' or a NUL, got {name!r:.80}"
            )
        if not isinstance(value, str | os.PathLike):
            raise TypeError(
                f"env's value for {name!r:.80} must be a str or os.PathLike, "
                f"got {type(value).__name__}: {value!r:.80}"
            )
        if _holds_nul(value):
            raise ValueError(
                f"env's value for {name!r:.80} must not hold a NUL character, got {value!r:.80}"
            )


@asynccontextmanager
async def open_subprocess(
    command: Command,
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    stderr: int | None = subprocess.DEVNULL,
    stop_grace_period: float = 2.0,
) -> AsyncIterator[Process]:
    """Start *command* with its output piped, and stop it, its children included, on exit.

    Enter it through the producer's sender, so that the stop happens on every end::

        async def produce(send):
            process = await send.enter_async_context(open_subprocess(["journalctl", "-f"]))
            async for chunk in process.stdout:
                await send(chunk)

    The command runs in a new session (its own process group), with standard input from
    ``/dev/null``. On exit the group gets ``SIGTERM``; if the command has not exited
    *stop_grace_period* seconds later, ``SIGKILL``; then it is waited for. The group gets
    ``SIGKILL`` in any case, so nothing the command started outlives the stream.

    :param command: the program and its arguments, or a ``str`` for the shell.
    :param cwd: the working directory.
    :param env: the environment; by default this process's.
    :param stderr: where standard error goes: ``subprocess.DEVNULL``, ``subprocess.STDOUT``
        (into the output), or ``None`` (inherited). A pipe nobody reads would fill and stall
        the command, so ``subprocess.PIPE`` is refused.
    :param stop_grace_period: seconds between ``SIGTERM`` and ``SIGKILL``; entered through a
        stream's sender, at most what is left of its ``cleanup_timeout``.
    :raises TypeError: an argument is of the wrong type.
    :raises ValueError: *command* is empty or holds a NUL character, an *env* name is empty
        or holds ``=``, an *env* value holds a NUL character, *stderr* is
        ``subprocess.PIPE``, or *stop_grace_period* is not a positive, finite number of
        seconds.
    :raises OSError: the command could not be started.
    """
    _check_options(command, cwd, env, stderr, stop_grace_period)
    process = await anyio.open_process(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr,
        cwd=cwd,
        env=env,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        await _stop(process, stop_grace_period)


_CR = ord("\r")


class LineSplitter:
    """Splits bytes into text lines; pure, no I/O.

    :param max_line_length: a line longer than this many bytes is cut into pieces of at most
        it, between characters (UTF-8), so a command that never writes a newline cannot grow
        the buffer without bound.
    :param encoding: how the bytes are decoded; bytes that do not decode become U+FFFD.
    """

    def __init__(self, *, max_line_length: int = 65536, encoding: str = "utf-8") -> None:
        check_count("max_line_length", max_line_length)
        self._max = max_line_length
        self._encoding = encoding
        self._utf8 = codecs.lookup(encoding).name == "utf-8"
        self._buffer = bytearray()

    def _decode(self, text: bytes | bytearray) -> str:
        return text.decode(self._encoding, errors="replace")

    def _cut(self, lines: list[str], start: int, stop: int) -> int:
        """Append the pieces of ``buffer[start:stop]`` longer than the line length allows;
        return where the rest, which fits, starts."""
        buffer = self._buffer
        while stop - start > self._max:
            end = start + self._max
            if self._utf8:
                # Back to the first byte of a character (a continuation byte is 0b10xxxxxx).
                while end > start and buffer[end] & 0xC0 == 0x80:
                    end -= 1
                if end == start:  # no character starts there: not UTF-8, cut anyway
                    end = start + self._max
            lines.append(self._decode(buffer[start:end]))
            start = end
        return start

    def feed(self, chunk: bytes) -> list[str]:
        """The lines *chunk* completes, without their line endings (``\n`` or ``\r\n``)."""
        buffer = self._buffer
        buffer += chunk
        lines: list[str] = []
        start = 0
        while (end := buffer.find(b"\n", start)) >= 0:
            stop = end - 1 if end > start and buffer[end - 1] == _CR else end
            start = self._cut(lines, start, stop)
            lines.append(self._decode(buffer[start:stop]))
            start = end + 1
        # The rest waits for its newline, up to the line length; a \r at its end may be
        # the start of a \r\n.
        stop = len(buffer) - (1 if len(buffer) > start and buffer[-1] == _CR else 0)
        start = self._cut(lines, start, stop)
        del buffer[:start]
        return lines

    def flush(self) -> list[str]:
        """The last line, if the output did not end with a newline."""
        # A \r held back for a \n that never came is no line ending: it is kept, and the
        # line is cut to the length like any other.
        lines: list[str] = []
        start = self._cut(lines, 0, len(self._buffer))
        if start < len(self._buffer):
            lines.append(self._decode(self._buffer[start:]))
        self._buffer = bytearray()
        return lines


def subprocess_lines(
    command: Command,
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    stderr: int | None = subprocess.DEVNULL,
    stop_grace_period: float = 2.0,
    max_line_length: int = 65536,
    transform: Callable[[str], Any] | None = None,
    check: bool = True,
) -> Producer[Any]:
    """A producer that sends each line *command* writes to standard output, as it arrives::

        return EventSourceResponse(subprocess_lines(["tail", "-F", "/var/log/app.log"]))

    Each line is sent without its line ending; for a :class:`~streamkit.StreamResponse`, put
    it back with ``transform=lambda line: line + "\\n"``. The command is stopped on every end
    of the stream (see :func:`open_subprocess`). The stream completes once the command has
    closed its output and exited.

    :param command: see :func:`open_subprocess`.
    :param cwd: see :func:`open_subprocess`.
    :param env: see :func:`open_subprocess`.
    :param stderr: see :func:`open_subprocess`.
    :param stop_grace_period: see :func:`open_subprocess`.
    :param max_line_length: a line longer than this many bytes is sent in pieces of it, so
        a command that never writes a newline cannot grow the buffer without bound.
    :param transform: maps each line to the item sent; by default the line itself.
    :param check: a non-zero exit status ends the stream with
        :class:`~streamkit.resources.ProcessExitError` (an SSE or NDJSON stream then sends its error
        event or item).
    :raises TypeError: an argument is of the wrong type (a ``transform`` that is not
        callable, a *command* that is neither a ``str`` nor a sequence of them, an *env*
        value that is no ``str``, ...).
    :raises ValueError: *command* is empty or holds a NUL character, an *env* name is empty
        or holds ``=``, an *env* value holds a NUL character, *stderr* is
        ``subprocess.PIPE``, *stop_grace_period* is not a positive, finite number of
        seconds, or *max_line_length* is below 1.
    """
    # Refused now, not once the stream has started, after its 200.
    _check_options(command, cwd, env, stderr, stop_grace_period)
    check_callable("transform", transform, optional=True)
    check_type("check", check, bool)
    LineSplitter(max_line_length=max_line_length)
    convert: Callable[[str], Any] = (lambda line: line) if transform is None else transform

    async def produce(send: StreamSender[Any]) -> None:
        process = await send.enter_async_context(
            open_subprocess(
                command, cwd=cwd, env=env, stderr=stderr, stop_grace_period=stop_grace_period
            )
        )
        assert process.stdout is not None
        splitter = LineSplitter(max_line_length=max_line_length)
        async for chunk in process.stdout:
            for line in splitter.feed(chunk):
                await send(convert(line))
        for line in splitter.flush():
            await send(convert(line))
        returncode = await process.wait()
        if check and returncode != 0:
            raise ProcessExitError(
                f"command {command!r} exited with status {returncode}",
                command=command,
                returncode=returncode,
            )

    return produce
