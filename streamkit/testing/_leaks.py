"""Leak checks: the file descriptors, child processes and tasks a test left behind.

A stream whose cleanup did not run leaves something open: the upstream socket, the
subprocess, the task that was meant to end with it. These checks compare what exists after a
test with what existed before, give what is new a grace period to go away (a closing task
needs the event loop to run, a killed child needs to be reaped) and name whatever stays.

File descriptors are read from ``/proc/self/fd`` and child processes from ``/proc``, so those
two checks work on Linux only; elsewhere they find nothing. Tasks come from
:func:`anyio.get_running_tasks`, so they can be checked only inside the event loop.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import time
from collections.abc import AsyncIterator, Collection, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from types import CoroutineType
from typing import Any

import anyio

from .._checks import check_duration, check_type
from .._exceptions import LeakError
from .._faults import recorded_faults
from .._loop import TIMERS_TASK

__all__ = ["ResourceSnapshot", "open_leak_check"]

_TCP_STATES = {
    "01": "ESTABLISHED",
    "02": "SYN_SENT",
    "03": "SYN_RECV",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0A": "LISTEN",
    "0B": "CLOSING",
}
# No event tells when a descriptor is closed or a child reaped, so the wait polls, this often.
_POLL_INTERVAL = 0.01


@dataclass(frozen=True, slots=True, kw_only=True)
class ResourceSnapshot:
    """What the process holds at one instant.

    :param file_descriptors: each open descriptor's number and what it refers to.
    :param child_processes: each child's process id and its description.
    :param tasks: each running task's id and its description; empty when taken outside the
        event loop.
    :param faults: the producer faults streamkit has logged lately (a cleanup cut short by
        the cancellation, a cancellation refused), by serial number.
    """

    file_descriptors: Mapping[int, str] = field(default_factory=dict)
    child_processes: Mapping[int, str] = field(default_factory=dict)
    tasks: Mapping[int, str] = field(default_factory=dict)
    faults: Mapping[int, str] = field(default_factory=dict)

    @classmethod
    def take(cls, *, tasks: bool = True) -> ResourceSnapshot:
        """Take a snapshot now; *tasks* needs a running event loop (the current task is left
        out).

        :raises TypeError: *tasks* is not a ``bool``.
        """
        check_type("tasks", tasks, bool)
        return cls(
            file_descriptors=_file_descriptors(),
            child_processes=_child_processes(),
            tasks=_tasks() if tasks else {},
            faults=recorded_faults(),
        )

    def leaked_since(self, before: ResourceSnapshot) -> LeakError | None:
        """What exists now and did not in *before*, as the error to raise; ``None`` if nothing."""
        descriptors = tuple(
            f"file descriptor {number}: {_describe_descriptor(target)}"
            for number, target in sorted(self.file_descriptors.items())
            if before.file_descriptors.get(number) != target
        )
        children = tuple(
            f"child process {description}"
            for pid, description in sorted(self.child_processes.items())
            if pid not in before.child_processes
        )
        tasks = tuple(
            f"task {description}"
            for number, description in self.tasks.items()
            if number not in before.tasks
        )
        newest = max(before.faults, default=0)
        faults = tuple(
            f"producer fault: {description}"
            for number, description in sorted(self.faults.items())
            if number > newest
        )
        if not (descriptors or children or tasks or faults):
            return None
        counts = [
            f"{len(found)} {one if len(found) == 1 else many}"
            for found, one, many in (
                (descriptors, "file descriptor", "file descriptors"),
                (children, "child process", "child processes"),
                (tasks, "task", "tasks"),
                (faults, "producer fault", "producer faults"),
            )
            if found
        ]
        lines = "\n".join(f"  {line}" for line in (*descriptors, *children, *tasks, *faults))
        return LeakError(
            f"leaked {', '.join(counts)}:\n{lines}",
            file_descriptors=descriptors,
            child_processes=children,
            tasks=tasks,
            faults=faults,
        )


@asynccontextmanager
async def open_leak_check(*, within: float = 1.0, tasks: bool = True) -> AsyncIterator[None]:
    """Fail if the block leaves file descriptors, child processes or tasks behind.

    What is new after the block has *within* seconds to go away; what is left then is named
    in the error. The check is skipped when the block raises: that error says more.

    ::

        async with open_leak_check():
            async with open_server(app) as server:
                ...

    :param within: seconds allowed for resources to be released after the block.
    :param tasks: whether to check tasks too (it sees every task in the event loop, so a task
        a fixture started during the block counts).
    :raises LeakError: something the block opened was still there after *within* seconds.
    :raises ValueError: *within* is not a positive, finite number of seconds (on entering).
    :raises TypeError: *within* is not a number, or *tasks* not a ``bool`` (on entering).
    """
    __tracebackhide__ = True  # pytest: show the leak, not this frame
    check_duration("within", within)
    check_type("tasks", tasks, bool)
    before = ResourceSnapshot.take(tasks=tasks)
    yield
    deadline = anyio.current_time() + within
    while (leak := ResourceSnapshot.take(tasks=tasks).leaked_since(before)) is not None:
        if anyio.current_time() >= deadline:
            raise leak
        await anyio.sleep(_POLL_INTERVAL)


def wait_released(
    before: ResourceSnapshot, *, within: float, serving: Collection[str] = ()
) -> None:
    """Block until every descriptor and child process new since *before* is gone.

    For synchronous teardown, outside any event loop: tasks are not checked.

    :param serving: the addresses (``host:port``) of servers that go on serving: the sockets
        they hold, their ends of connections the test left, are theirs to close once the event
        loop runs again, and are not counted.

    :raises LeakError: something was still there after *within* seconds.
    :raises ValueError: *within* is not a positive, finite number of seconds.
    :raises TypeError: *before* is not a :class:`ResourceSnapshot`, or *within* not a number.
    """
    __tracebackhide__ = True
    check_type("before", before, ResourceSnapshot)
    check_duration("within", within)
    deadline = time.monotonic() + within
    while (
        leak := _without_served(ResourceSnapshot.take(tasks=False), serving).leaked_since(before)
    ) is not None:
        if time.monotonic() >= deadline:
            raise leak
        time.sleep(_POLL_INTERVAL)


def _without_served(snapshot: ResourceSnapshot, serving: Collection[str]) -> ResourceSnapshot:
    """*snapshot* without the sockets whose local address is one of *serving*."""
    if not serving:
        return snapshot
    kept = {
        number: target
        for number, target in snapshot.file_descriptors.items()
        if not (target.startswith("socket:[") and _local_address(number, target) in serving)
    }
    return replace(snapshot, file_descriptors=kept)


def _local_address(number: int, target: str) -> str | None:
    """The local address (``host:port``) of the TCP socket open as descriptor *number*.

    A connection that was reset has left the kernel's table of TCP connections: the socket
    itself still knows the address it was bound to.
    """
    found = _socket(target[len("socket:[") : -1])
    if found is not None:
        return found[0]
    try:
        with socket.socket(fileno=os.dup(number)) as sock:
            if sock.family not in (socket.AF_INET, socket.AF_INET6):
                return None
            host, port = sock.getsockname()[:2]
    except OSError:
        return None  # closed meanwhile, or no socket of ours to ask
    return f"[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{host}:{port}"


def _file_descriptors() -> dict[int, str]:
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return {}
    found = {}
    for name in names:
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
            if target == os.devnull and _is_libuv_reserve(name):
                continue
        except OSError:
            continue  # closed meanwhile: the listing's own descriptor, for one
        found[int(name)] = target
    return found


def _is_libuv_reserve(name: str) -> bool:
    """Whether descriptor *name*, open on ``/dev/null``, is libuv's reserve. uvloop's loop
    opens ``/dev/null`` read-only on its first stream, the first server's or connection's, and
    holds it for its life (to close it, accept and drop a connection when the process runs out
    of descriptors): the loop's, not the test's, whatever block that first stream was in."""
    if "uvloop" not in sys.modules:
        return False
    with open(f"/proc/self/fdinfo/{name}") as info:
        flags = next(line for line in info if line.startswith("flags:")).split()[1]
    return int(flags, 8) & os.O_ACCMODE == os.O_RDONLY


def _child_processes() -> dict[int, str]:
    try:
        entries = [entry for entry in os.listdir("/proc") if entry.isdigit()]
    except OSError:
        return {}
    parent = os.getpid()
    found = {}
    for entry in entries:
        try:
            with open(f"/proc/{entry}/stat") as stat_file:
                stat = stat_file.read()
            # The command name is in parentheses and may hold spaces or parentheses itself.
            command_name = stat[stat.index("(") + 1 : stat.rindex(")")]
            state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
            if int(ppid) != parent:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline_file:
                argv = cmdline_file.read().split(b"\0")
        except (OSError, ValueError):
            continue  # it exited meanwhile
        command = b" ".join(arg for arg in argv if arg).decode(errors="replace") or command_name
        zombie = " (exited, never reaped)" if state == "Z" else ""
        found[int(entry)] = f"{entry}{zombie}: {command}"
    return found


def _tasks() -> dict[int, str]:
    current = anyio.get_current_task().id
    return {
        task.id: f"{task.name!r}{_where(task.coro)}"
        for task in anyio.get_running_tasks()
        if task.id != current and task.name != TIMERS_TASK
    }


def _where(coro: Any) -> str:
    """What a task runs and where it is suspended: the deepest frame of its await chain
    that is not in the event loop's own code, which says little about whose task it is."""
    frames = []
    while isinstance(coro, CoroutineType) and coro.cr_frame is not None:
        frames.append(coro.cr_frame)
        coro = coro.cr_await
    if not frames:
        return ""
    libraries = tuple(
        os.path.dirname(module.__file__)
        for module in (sys.modules.get(name) for name in ("anyio", "asyncio", "trio"))
        if module is not None and module.__file__
    )
    own = [frame for frame in frames if not frame.f_code.co_filename.startswith(libraries)]
    first, last = (own[0], own[-1]) if own else (frames[-1], frames[-1])
    running = "" if first is last else f" running {first.f_code.co_qualname},"
    code = last.f_code
    return f"{running} suspended in {code.co_qualname} ({code.co_filename}:{last.f_lineno})"


def _describe_descriptor(target: str) -> str:
    if target.startswith("socket:[") and target.endswith("]"):
        described = _describe_socket(target[len("socket:[") : -1])
        if described:
            return f"{target} {described}"
    return target


def _describe_socket(inode: str) -> str | None:
    found = _socket(inode)
    if found is None:
        return None
    local, remote, state = found
    return f"(TCP {local} -> {remote}, {state})"


def _socket(inode: str) -> tuple[str, str, str] | None:
    """A TCP socket's local and remote addresses (``host:port``) and its state."""
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            with open(f"/proc/self/net/{table}") as file:
                rows = file.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            columns = row.split()
            if len(columns) > 9 and columns[9] == inode:
                local, remote = (_address(column, family) for column in columns[1:3])
                return local, remote, _TCP_STATES.get(columns[3], columns[3])
    return None


def _address(column: str, family: socket.AddressFamily) -> str:
    """An address as /proc/net/tcp writes it: host bytes as 32-bit words in host order."""
    host, port = column.split(":")
    words = [int(host[index : index + 8], 16) for index in range(0, len(host), 8)]
    packed = struct.pack(f"={len(words)}I", *words)
    text = socket.inet_ntop(family, packed)
    return f"[{text}]:{int(port, 16)}" if family == socket.AF_INET6 else f"{text}:{int(port, 16)}"
