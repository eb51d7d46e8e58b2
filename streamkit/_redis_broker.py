"""A broker on Redis Streams, for topics shared by many server processes.

Each topic is one stream: ``XADD ... MAXLEN ~ history_size`` appends an event (Redis trims in
whole blocks, so somewhat more is kept) and refreshes the topic's expiry; the SSE id of an
event is its stream entry id. A publish runs one script (``EVALSHA``) that appends all its
events: one command a burst, where a transaction of ``XADD`` commands paid the client's
per-command cost for each event, more than the fan-out of that event to a hundred
subscribers. The events go as one JSON argument and the ids come back as one string, since
the client's cost per argument and per item of a reply is much of the rest.

One reader per broker, on a connection of its own, waits in ``XREAD BLOCK`` on every topic
that has a subscriber in this process and fans each entry out to them. It takes a burst's
first entries with that read and the rest with a script whose reply is one JSON text; once
bursts come, the read and the script go together, in one round trip. It keeps its own
position per topic, so after a lost connection (a Redis restart) it reads on from where it
was and nothing is skipped.

The client is coredis, which runs on anyio and so on asyncio and trio alike; it is imported
only when a :class:`RedisBroker` is made (``pip install streamkit[redis]``).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import uuid
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager, AsyncExitStack
from typing import TYPE_CHECKING, Any, Self

import anyio

from ._checks import check_count, check_duration
from ._hub import TopicHub
from ._sse import ServerSentEvent, is_event_name, trusted_event
from ._topics import (
    DEFAULT_MAX_EVENT_SIZE,
    Entry,
    EventKey,
    HistoryPage,
    ResetReason,
    SlowSubscriberPolicy,
    check_topic,
    events_fields,
    format_event_id,
    parse_event_id,
)

#: Appends events to a topic's stream: ``KEYS[1]`` the stream, ``KEYS[2]`` the key prefix's
#: clock (the last id given out under the prefix, to any topic: the prefix alone, which no
#: topic's key is, as a topic is never empty), ``KEYS[3]`` this publish's receipt; ``ARGV``
#: the history's size, the expiry in milliseconds (0: none), a JSON array of each event as its
#: name (``null``: none) and data, and how many milliseconds the receipt is kept. Returns the
#: entries' ids, in order, in one string separated by spaces. Atomic, as a transaction is.
#:
#: The receipt holds that reply: the same publish run again (the client sends a command again
#: once its connection was lost, and cannot know whether it ran) appends nothing, and is
#: answered the same ids.
#:
#: The ids are the clock's, not each stream's own (``XADD *``): two topics appended to in one
#: millisecond both began at MILLISECONDS-0, and a client resuming one topic from an id of
#: the other's went on from the wrong event, what came before it silently skipped. A stream
#: ahead of the clock (appended to before it was kept) goes on from its own last id. The
#: clock expires with the streams: one that is gone starts again from Redis's time.
_APPEND = """
local key, clock, receipt = KEYS[1], KEYS[2], KEYS[3]
local done = redis.call('GET', receipt)
if done then
  return done
end
local size, ttl = ARGV[1], tonumber(ARGV[2])
local events = cjson.decode(ARGV[3])
local function split(id)
  local dash = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1))
end
local ms, seq = 0, -1
local last = redis.call('GET', clock)
if last then
  ms, seq = split(last)
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
if now > ms then
  ms, seq = now, -1
end
local ids = {}
for _, event in ipairs(events) do
  local fields = {'d', event[2]}
  if event[1] ~= cjson.null then
    fields[3], fields[4] = 'e', event[1]
  end
  seq = seq + 1
  local id = string.format('%d-%d', ms, seq)
  local added = redis.pcall('XADD', key, 'MAXLEN', '~', size, id, unpack(fields))
  if type(added) == 'table' and added.err then
    added = redis.call('XADD', key, 'MAXLEN', '~', size, '*', unpack(fields))
    ms, seq = split(added)
  end
  ids[#ids + 1] = added
end
redis.call('SET', clock, string.format('%d-%d', ms, seq))
if ttl > 0 then
  redis.call('PEXPIRE', key, ttl)
  redis.call('PEXPIRE', clock, ttl)
end
local reply = table.concat(ids, ' ')
redis.call('SET', receipt, reply, 'PX', ARGV[4])
return reply
"""

#: After the key prefix, the name of a publish's receipt: no topic's name holds a line break.
_RECEIPT = "\npublished "
#: How long a publish's receipt is kept: past the 20 s a publish may take in all, the
#: client's retries included (see _COMMAND_DEADLINE).
_RECEIPT_MILLISECONDS = 30_000

#: Reads on from where a read stopped: ``KEYS`` the streams, ``ARGV[1]`` how many entries to
#: read from each, ``ARGV[2]`` on the id of the last entry read from each (read again: a range
#: that includes it works on any Redis with streams). Returns, as one JSON text, an array of
#: each stream's entries as one flat array: id, data and name (``null``: none) of each. One
#: reply item for a whole burst, and no object made per entry but its strings: the client's
#: cost per item of a reply is what a burst read with ``XREAD`` pays per entry.
_READ_ON = """
local found = {}
for i, key in ipairs(KEYS) do
  local flat = {}
  for _, entry in ipairs(redis.call('XRANGE', key, ARGV[i + 1], '+', 'COUNT', ARGV[1])) do
    local fields, data, name = entry[2], '', cjson.null
    for j = 1, #fields, 2 do
      if fields[j] == 'd' then
        data = fields[j + 1]
      elseif fields[j] == 'e' then
        name = fields[j + 1]
      end
    end
    flat[#flat + 1] = entry[1]
    flat[#flat + 1] = data
    flat[#flat + 1] = name
  end
  found[i] = flat
end
return cjson.encode(found)
"""

if TYPE_CHECKING:
    from coredis import Redis
    from coredis.commands.script import Script
    from coredis.connection import BaseConnection
    from coredis.response.types import StreamEntry

__all__ = ["RedisBroker"]

logger = logging.getLogger("streamkit")

#: How long one ``XREAD`` blocks; the reader then reads again, at once.
_BLOCK_MILLISECONDS = 5000
#: The most entries the blocking read takes from a topic; a topic that had as many may hold
#: more, which the reader takes with ``_READ_ON`` (up to ``read_batch`` in all).
_WAKE_COUNT = 2
#: The first and the longest pause before the reader retries a failed read.
_RETRY_DELAYS = (0.05, 2.0)
#: The longest a command on the shared connections runs shielded (see :func:`_uncut`);
#: coredis's own timeouts (5 s to connect, 10 s to read) end it sooner.
_COMMAND_DEADLINE = 20.0


def _uncut() -> AbstractContextManager[anyio.CancelScope]:
    """The scope a command on the shared connections (publishing, reading the history) runs
    in: shielded, with its own deadline. coredis (6.9) loses a pool slot for good to each
    command a cancellation cuts short: after ``max_connections`` (64) of them, from clients
    that left while their subscription began or a publish that was cancelled, every publish
    and subscribe waited for ever. Shielded, the command ends and its connection goes back;
    the cancellation is raised at the caller's next checkpoint."""
    return anyio.fail_after(_COMMAND_DEADLINE, shield=True)


class RedisBroker(TopicHub):
    """A broker whose topics are Redis Streams, shared by every server that uses the same
    Redis. Enter it for the application's lifetime (``async with broker:`` in the lifespan):
    that starts its reader, which runs until the block exits.

    :param url: the Redis server, such as ``redis://localhost:6379/0``.
    :param key_prefix: put before a topic's name to make its Redis key. The prefix alone is
        the key of the last event id given out under it: ids are unique across its topics.
    :param history_size: events kept per topic, at least (``MAXLEN ~``).
    :param history_ttl: a topic's stream expires once nothing was published to it for this
        many seconds; ``None`` keeps it.
    :param read_batch: the most entries the reader takes from one topic at a time.
    :param subscriber_buffer: see :class:`~streamkit.broadcast.SlowSubscriberPolicy`.
    :param slow_subscriber_policy: see :class:`~streamkit.broadcast.SlowSubscriberPolicy`.
    :param max_catching_up: see :class:`~streamkit.broadcast.SlowSubscriberPolicy`.
    :param max_event_size: the most bytes (UTF-8) an event's data and name may hold; a larger
        one is refused where it is published, before anything is sent to Redis (1 MiB).
    :raises TypeError: a size or duration is not a number.
    :raises ValueError: a size or duration is out of range.
    :raises ModuleNotFoundError: coredis is not installed.
    """

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        *,
        key_prefix: str = "streamkit:topic:",
        history_size: int = 1000,
        history_ttl: float | None = 86400.0,
        read_batch: int = 512,
        subscriber_buffer: int = 64,
        slow_subscriber_policy: SlowSubscriberPolicy = SlowSubscriberPolicy.CATCH_UP,
        max_catching_up: int = 16,
        max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
    ) -> None:
        # Here, not on entering: a missing coredis fails where the broker is made, and the
        # pipelines the reader reads bursts with (see _read_with_rest) are not imported in the
        # middle of the first burst, which that held up by a millisecond.
        import coredis.patterns.pipeline  # noqa: F401

        super().__init__(
            subscriber_buffer=subscriber_buffer,
            slow_subscriber_policy=slow_subscriber_policy,
            max_catching_up=max_catching_up,
        )
        check_count("history_size", history_size)
        check_count("read_batch", read_batch)
        check_duration("history_ttl", history_ttl, optional=True)
        check_count("max_event_size", max_event_size)
        self.url = url
        self.key_prefix = key_prefix
        self.history_size = history_size
        self.history_ttl = history_ttl
        self.read_batch = read_batch
        self.max_event_size = max_event_size
        self._client: Redis[str] | None = None
        self._append_script: Script[str] | None = None
        self._read_on_script: Script[str] | None = None
        self._stack: AsyncExitStack | None = None
        self._positions: dict[str, EventKey] = {}
        self._topics_changed = anyio.Event()
        # The reader's read under way (a token), and the Redis client id of its connection:
        # a newly watched topic has it read again at once, CLIENT UNBLOCK ending its wait.
        self._reading: object | None = None
        self._reader_id: int | None = None
        self._unblock_refused = False
        self._run_id: object = None  # the server the reader reads from, as Redis names it
        # The reader may talk to a server it has not asked about: it made a connection since
        # it last asked which server it reads from, or it never asked.
        self._reader_connected = True
        # The last read was of a burst: the next one reads on in its round trip.
        self._bursts = False
        # Names each publish's receipt (see _APPEND): this broker's, and its count.
        self._publisher = uuid.uuid4().hex
        self._publishes = 0

    def _connect(self, *, stream_timeout: float) -> Redis[str]:
        from coredis import Redis

        return Redis.from_url(
            self.url, decode_responses=True, stream_timeout=stream_timeout, connect_timeout=5.0
        )

    async def __aenter__(self) -> Self:
        if self._stack is not None:
            raise RuntimeError(f"{self!r} is entered already")
        async with AsyncExitStack() as stack:
            client = await stack.enter_async_context(self._connect(stream_timeout=10.0))
            # The reader's own client: a blocked XREAD holds its connection, which a shared
            # pool would hand to no one else, and cancelling it closes that connection.
            reader = self._connect(stream_timeout=_BLOCK_MILLISECONDS / 1000 + 10.0)
            # Each connection it makes says so (see _read_forever): coredis makes the pool
            # from the URL, and the class the pool makes connections of is where to hear it.
            pool = reader.connection_pool
            pool.connection_class = _reporting_connections(
                pool.connection_class, self._note_reader_connected
            )
            reader = await stack.enter_async_context(reader)
            self._read_on_script = reader.register_script(_READ_ON)
            task_group = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(task_group.cancel_scope.cancel)
            task_group.start_soon(self._read_forever, reader)
            self._append_script = client.register_script(_APPEND)
            self._client, self._stack = client, stack.pop_all()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        stack, self._stack = self._stack, None
        self._close_subscriptions()
        if stack is not None:
            # Not in a shielded scope of its own: the task groups inside it (the reader's,
            # coredis's) must be exited from the scope they were entered in.
            await stack.aclose()
        self._client = self._append_script = self._read_on_script = None
        self._positions.clear()

    def __repr__(self) -> str:
        return f"RedisBroker({self.url!r}, key_prefix={self.key_prefix!r})"

    def _redis(self) -> Redis[str]:
        if self._client is None:
            raise RuntimeError(f"enter {self!r} (async with broker:) before using it")
        return self._client

    def _key(self, topic: str) -> str:
        return self.key_prefix + topic

    async def publish(self, topic: str, event: ServerSentEvent | str) -> str:
        """Append *event* to *topic*'s stream (``XADD``) and refresh its expiry; every
        broker reading the topic delivers it to its subscribers.

        :param topic: the topic's name.
        :param event: the data, or an event with data and perhaps an event name.
        :returns: the stream entry id, which is the event's SSE id.
        :raises ValueError: the topic name is invalid, or the event carries an id, retry or
            comment, or no data, or is over ``max_event_size``.
        :raises coredis.exceptions.RedisError: Redis could not be reached or refused it.
        """
        (identifier,) = await self._append(topic, [event])
        return identifier

    async def publish_many(self, topic: str, events: Iterable[ServerSentEvent | str]) -> list[str]:
        """Append *events* to *topic*'s stream in order, atomically, in one script (one
        command and one round trip, where :meth:`publish` makes one of each per event). A
        reader takes them in one read, and its subscribers' streams write as many as their
        buffers hold at once; a burst larger than a buffer is handed over paced by each
        subscriber's room, as any read is.

        :returns: the events' ids, in order.
        :raises TypeError: *events* is one event's value (a ``str``, ``bytes``, a mapping),
            not an iterable of events; or an event is neither a ``ServerSentEvent`` nor a
            ``str``.
        :raises ValueError: as :meth:`publish`, for any of the events; then none is
            published.
        :raises coredis.exceptions.RedisError: Redis could not be reached or refused them.
        """
        return await self._append(topic, events)

    async def _append(self, topic: str, events: Iterable[ServerSentEvent | str]) -> list[str]:
        check_topic(topic)
        ttl = 0 if self.history_ttl is None else math.ceil(self.history_ttl * 1000)
        size = self.max_event_size
        # Every one checked before any is written; each goes as it comes, [name, data], the
        # name null if none (an empty name is a name too): no other object made per event.
        fields = events_fields(events, topic=topic, max_size=size)
        if not fields:
            await anyio.lowlevel.checkpoint()
            return []
        self._redis()  # entered, or a RuntimeError that says to enter it
        assert self._append_script is not None
        # A task cancelled already publishes nothing; once sent, the events are published,
        # and a cancellation that comes meanwhile is raised after (see _uncut).
        await anyio.lowlevel.checkpoint_if_cancelled()
        with _uncut():
            # A receipt of its own: run again (see _APPEND), it is answered from it.
            self._publishes += 1
            receipt = f"{self.key_prefix}{_RECEIPT}{self._publisher}:{self._publishes}"
            found: object = await _run_script(
                self._redis(),
                self._append_script,
                keys=[self._key(topic), self.key_prefix, receipt],
                args=[self.history_size, ttl, _json_text(fields), _RECEIPT_MILLISECONDS],
            )
        assert isinstance(found, str)
        identifiers = found.split()
        self._published += len(identifiers)
        return identifiers

    # -- the history --------------------------------------------------------------------------

    def _event(
        self, topic: str, identifier: str, data: object, name: object
    ) -> ServerSentEvent | None:
        """The event of a stream entry whose ``d`` field is *data* (``""`` if it has none)
        and ``e`` field *name* (``None`` if none), or ``None`` if it can be none."""
        # What the event's own checks would refuse of a stream entry: the id is Redis's
        # (its key was read from it), and text decoded from UTF-8 holds no lone surrogate.
        if type(data) is str and (name is None or (type(name) is str and is_event_name(name))):
            return trusted_event(data, name, identifier, None)
        # Written by something other than a broker: it cannot be sent as an event.
        logger.warning(
            "topic %r: skipping a stream entry that is no event: %s, data %r, name %r",
            topic,
            identifier,
            data,
            name,
        )
        return None

    def _entries(self, topic: str, found: tuple[StreamEntry, ...]) -> list[Entry]:
        entries = []
        for entry in found:
            identifier, data, name = _entry_fields(entry)
            key = parse_event_id(identifier)
            if key is not None and (event := self._event(topic, identifier, data, name)):
                entries.append((key, event))
        return entries

    async def _history_after(self, topic: str, after: str, limit: int) -> HistoryPage:
        with _uncut():
            return await self._read_history_after(topic, after, limit)

    async def _read_history_after(self, topic: str, after: str, limit: int) -> HistoryPage:
        redis, key = self._redis(), self._key(topic)
        count = limit + 1  # the entry at *after* comes first, if it is still there
        found = await redis.xrange(key, after, "+", count=count)
        entries: list[Entry] = []
        while found and found[0].identifier == after:
            entries += self._entries(topic, found[1:])
            # A page cut short means the history ends there (see _replay_step): when entries
            # that are no event were skipped from a full read, read on past them, or what
            # follows them would be skipped too.
            if len(found) < count or len(entries) == limit:
                return HistoryPage(entries=entries)
            after = str(found[-1].identifier)
            count = limit - len(entries) + 1
            found = await redis.xrange(key, after, "+", count=count)
        # The history no longer holds *after*: the id asked for, or an entry skipped, trimmed
        # between two reads (the events read before it are then covered by the reset).
        first = await redis.xrange(key, "-", "+", count=1)
        if not first:
            return HistoryPage(reset=ResetReason.EXPIRED)
        oldest = parse_event_id(str(first[0].identifier))
        position = parse_event_id(after)
        assert oldest is not None
        assert position is not None
        reason = ResetReason.TRIMMED if position < oldest else ResetReason.UNKNOWN
        return HistoryPage(reset=reason, latest=await self._latest_id(topic))

    async def _latest_id(self, topic: str) -> str | None:
        with _uncut():
            newest = await self._redis().xrevrange(self._key(topic), "+", "-", count=1)
        return str(newest[0].identifier) if newest else None

    # -- the reader -----------------------------------------------------------------------------

    def _check_subscribable(self, topic: str) -> None:
        self._redis()  # entered, or a RuntimeError that says to enter it

    async def _watch(self, topic: str) -> None:
        if topic in self._positions:
            return
        latest = await self._latest_id(topic)
        if topic not in self._positions:  # another subscriber may have watched it meanwhile
            self._positions[topic] = (0, 0) if latest is None else parse_event_id(latest) or (0, 0)
            self._topics_changed.set()
            await self._read_again()

    async def _read_again(self) -> None:
        """Have the reader read again at once, with the topics as they are now: its blocked
        ``XREAD`` is ended with ``CLIENT UNBLOCK``, sent on the shared connections.

        Not by cancelling the read: coredis (6.9) closes the connection of a blocking command
        cancelled, and its pool never gets that connection's slot back, so after 64 topics
        the reader had no connection left and no subscriber got a live event again. A read
        that has not reached the server yet cannot be unblocked: it is asked again until it
        is, or it returns. Where the server refuses the command (an ACL), a topic's live
        events start once the read under way returns, within its 5 s.
        """
        from coredis.exceptions import RedisError, ResponseError

        reading, pause = self._reading, 0.001
        while reading is not None and self._reading is reading and not self._unblock_refused:
            reader_id = self._reader_id
            if reader_id is None:
                return
            try:
                with _uncut():
                    if await self._redis().client_unblock(reader_id):
                        return
            except ResponseError as exc:
                logger.warning(
                    "Redis broker: %s; a new topic's live events start once the reader's "
                    "wait ends (up to %d ms)",
                    str(exc),
                    _BLOCK_MILLISECONDS,
                )
                self._unblock_refused = True
                return
            except (RedisError, OSError):
                # Redis cannot be reached: the reader's read fails too, and it reads again
                # with this topic; the subscriber need not fail for it.
                return
            # The read is on its way to the server: it is there within a round trip or two,
            # unless its connection is being made again (then the read may return first).
            await anyio.sleep(pause)
            pause = min(pause * 2, 0.1)

    def _unwatch(self, topic: str) -> None:
        # The reader drops the key at its next read; what it reads meanwhile goes to no one.
        self._positions.pop(topic, None)

    async def _read_forever(self, reader: Redis[str]) -> None:
        from coredis.exceptions import RedisError

        delay, failing = _RETRY_DELAYS[0], False
        while True:
            if not self._positions:
                self._topics_changed = anyio.Event()
                await self._topics_changed.wait()
                continue
            found: Mapping[str, tuple[StreamEntry, ...]] | None = None
            more: dict[str, list[Any]] = {}
            # With no script to read on with (the server refuses them), XREAD reads it all.
            wake = self.read_batch
            if self._read_on_script is not None:
                wake = min(_WAKE_COUNT, wake)
            # After a burst, the next read takes the rest with it (see _read_with_rest).
            together = self._bursts and wake < self.read_batch
            try:
                if failing or self._run_id is None:
                    # Asked at once, not after a read that may block for seconds.
                    await self._check_server(reader)
                # The topics as they are now, with any watched during that check: one watched
                # from here on unblocks the read (see _read_again).
                streams = {self._key(t): format_event_id(p) for t, p in self._positions.items()}
                if not streams:
                    continue
                self._reading = object()
                try:
                    if together:
                        found, more = await self._read_with_rest(reader, streams)
                    else:
                        found = await reader.xread(streams, count=wake, block=_BLOCK_MILLISECONDS)
                finally:
                    self._reading = None
                if not together:
                    more = await self._read_on(reader, found, wake) if found else {}
                # A read that took more than the blocking read's few, of any topic: bursts
                # come, and the next read takes the rest in its round trip. One that took
                # fewer pays the plain XREAD alone again.
                self._bursts = any(len(flat) > 3 * wake for flat in more.values())
                # Before anything read is delivered. A connection talks to one server all its
                # life, but the client connects again on its own (it retries a command on a
                # lost connection), so a restarted or failed-over server shows only here.
                if self._reader_connected:
                    await self._check_server(reader)
            except (RedisError, OSError) as exc:
                if not failing:
                    # The text only: a record holding the exception would keep its frames,
                    # and the failed connections in them, alive as long as the record.
                    logger.warning("Redis broker reader: %s; retrying, positions kept", str(exc))
                failing = True
                await anyio.sleep(delay)
                delay = min(delay * 2, _RETRY_DELAYS[1])
                continue
            if failing:
                logger.warning("Redis broker reader: reading again")
            delay, failing = _RETRY_DELAYS[0], False
            await self._fan_out(found or {}, more)

    def _note_reader_connected(self, connection: BaseConnection) -> None:
        self._reader_connected = True
        # The reader reads on one connection at a time: this one from now on.
        self._reader_id = connection.client_id

    async def _check_server(self, reader: Redis[str]) -> None:
        """When the reader finds itself talking to another Redis server (its ``run_id``
        changed: a restart, a failover), see that it still holds the last entry read from each
        topic. A restart without persistence, or a failover to a replica that had not got the
        latest writes, loses entries: the live subscribers of such a topic then read the
        history from their last event, as a client resuming from it would, and are sent the
        same reset instead of skipping the lost events without a word.
        """
        run_id = (await reader.info("server")).get("run_id")
        self._reader_connected = False  # the answer covers a connection made for it too
        previous = self._run_id
        if run_id == previous:
            return
        for topic, position in list(self._positions.items()) if previous is not None else ():
            if position == (0, 0):
                continue  # nothing read from it yet
            last = format_event_id(position)
            if await reader.xrange(self._key(topic), last, last, count=1):
                continue
            logger.warning(
                "topic %r: Redis no longer holds entry %s, read before it was unreachable; "
                "its live subscribers are sent a reset",
                topic,
                last,
            )
            self._history_lost(topic)
        # Known once every topic was looked at: a look cut short (a lost connection) is made
        # again, from the first topic, as the reader reads again.
        self._run_id = run_id
        # After what was lost is told: a failure here must not leave that unsaid.
        await self._load_read_on(reader)

    async def _load_read_on(self, reader: Redis[str]) -> None:
        """Load ``_READ_ON`` on the server the reader has just met, so a burst finds it
        there: the first one read otherwise paid a refused call and a load, two round trips
        more. Should the server lose it all the same (``SCRIPT FLUSH``), either read loads it
        again."""
        from coredis.exceptions import ResponseError

        if self._read_on_script is None:
            return
        try:
            await reader.script_load(_READ_ON)
        except ResponseError as exc:
            if _for_now(exc):
                return  # loaded by the read that finds it missing
            self._read_without_scripts(exc)

    def _read_without_scripts(self, error: Exception) -> None:
        """The server refused the reader's script (an ACL, a managed server): from now on
        XREAD reads it all, read_batch entries at a time."""
        logger.warning("Redis broker reader: %s; reading with XREAD alone", str(error))
        self._read_on_script = None

    async def _read_on(
        self, reader: Redis[str], found: Mapping[str, tuple[StreamEntry, ...]], wake: int
    ) -> dict[str, list[Any]]:
        """The entries from the last of *found* on, for each topic whose read took as many as
        it could: up to ``read_batch`` new ones in all, in one script whose reply is one text
        (see ``_READ_ON``: a flat list of id, data, name). Read so, an entry costs the client
        about a third of the CPU that ``XREAD``'s reply does, most of which goes to making
        each entry's objects from the reply's."""
        from coredis.exceptions import ResponseError

        script = self._read_on_script
        full = {key: entries[-1] for key, entries in found.items() if len(entries) >= wake}
        if not full or script is None or self.read_batch <= wake:
            return {}
        lasts = [str(entry.identifier) for entry in full.values()]
        try:
            text: object = await _run_script(
                reader, script, keys=list(full), args=[self.read_batch - wake + 1, *lasts]
            )
        except ResponseError as exc:
            if _for_now(exc):
                raise  # a failed read: read again, from the same positions
            self._read_without_scripts(exc)  # what is left is read by XREAD
            return {}
        assert isinstance(text, str)
        # An empty table is "{}" in Lua's JSON: a dict, as empty as the list.
        return {key: flat for key, flat in zip(full, json.loads(text), strict=True) if flat}

    async def _read_with_rest(
        self, reader: Redis[str], streams: dict[str, str]
    ) -> tuple[Mapping[str, tuple[StreamEntry, ...]], dict[str, list[Any]]]:
        """Wait for the next entries as :meth:`_read_forever` does, and take what follows
        them in the same round trip: the blocking ``XREAD`` and ``_READ_ON`` from the same
        positions, sent together (a pipeline, not a transaction: the script runs once the
        read returns). A command through the client costs the reader some 800,000
        instructions, the second of a pipeline some 150,000, as much as 40 entries read by the
        script: after a burst, the next one is read with one round trip where a blocking read
        then a script took two. A single event is read by the plain ``XREAD`` alone.

        The script reads from the positions, not from what the read returned: it gives
        again what the read did (dropped by their ids in :meth:`_fan_out`), and perhaps
        entries of a topic the read had none of yet, appended in between.
        """
        from coredis.exceptions import NoScriptError, ResponseError

        script = self._read_on_script
        assert script is not None
        # The entry at each position comes again if it is still there: at most read_batch
        # in all, one of them perhaps not new.
        args: list[str | int] = [self.read_batch, *streams.values()]
        async with reader.pipeline(transaction=False, raise_on_error=False) as pipe:
            woken = pipe.xread(streams, count=1, block=_BLOCK_MILLISECONDS)
            rest = pipe.evalsha(script.sha, keys=list(streams), args=args)
        found = await woken  # its error raised here, as a plain read's would be
        try:
            text: object = await rest
        except NoScriptError:
            # Not loaded on this server (a restart, SCRIPT FLUSH): loaded now, and what
            # follows the read's entries is read next time.
            await reader.script_load(_READ_ON)
            return found or {}, {}
        except ResponseError as exc:
            if _for_now(exc):
                raise  # a failed read: read again, from the same positions
            self._read_without_scripts(exc)
            return found or {}, {}
        assert isinstance(text, str)
        # An empty table is "{}" in Lua's JSON: a dict, as empty as the list.
        return found or {}, {
            key: flat for key, flat in zip(streams, json.loads(text), strict=True) if flat
        }

    async def _fan_out(
        self, found: Mapping[str, tuple[StreamEntry, ...]], more: Mapping[str, list[Any]]
    ) -> None:
        prefix = len(self.key_prefix)
        # The script's reply may hold a topic the blocking read had nothing of.
        for key in itertools.chain(found, (key for key in more if key not in found)):
            topic = key[prefix:]
            position = self._positions.get(topic)
            if position is None:
                continue  # unwatched meanwhile
            entries: list[Entry] = []
            read = map(_entry_fields, found.get(key, ()))
            flat = iter(more.get(key, ()))
            # Each entry's key (its id read without the checks of parse_event_id, which an
            # id from a client needs) and its event, as _event makes it, made here: the two
            # calls an entry cost were as much as the rest of its work. A burst's ids share
            # their milliseconds, read as a number once.
            text, milliseconds = "", 0
            for identifier, data, name in itertools.chain(read, zip(flat, flat, flat, strict=True)):
                prefix_text, _, sequence = identifier.partition("-")
                if prefix_text != text:
                    text, milliseconds = prefix_text, int(prefix_text)
                entry_key = (milliseconds, int(sequence))
                if entry_key <= position:
                    continue  # delivered already (the first read on is the last read)
                # The position moves past an entry that is no event too, or it would be read
                # again and again.
                position = entry_key
                if name is None and type(data) is str:  # what a broker wrote, without a name
                    entries.append((entry_key, trusted_event(data, None, identifier, None)))
                elif (event := self._event(topic, identifier, data, name)) is not None:
                    entries.append((entry_key, event))
            self._positions[topic] = position
            # A read holds up to read_batch entries, more than a subscriber's buffer: the hub
            # paces them by the subscribers' room.
            await self._deliver_batch(topic, entries)


def _entry_fields(entry: StreamEntry) -> tuple[str, object, object]:
    """A stream entry's id, its ``d`` field (``""`` if none) and its ``e`` field (``None``
    if none): what ``_READ_ON`` sends of each entry too."""
    fields = entry.field_values
    return str(entry.identifier), fields.get("d", ""), fields.get("e")


#: How Redis begins an error that holds for now only, and for every command, XREAD too:
#: another client's script runs past the busy threshold, a replica has lost its primary, a
#: cluster's slot moves, a server loads its data. No refusal of scripts. (A server past its
#: maxmemory runs the read-on script: it refuses a script without flags only its writes,
#: and this one writes nothing.)
_FOR_NOW = ("BUSY", "MASTERDOWN", "TRYAGAIN", "LOADING")


def _for_now(error: Exception) -> bool:
    """Whether Redis's *error* holds for now only (see :data:`_FOR_NOW`)."""
    return str(error).startswith(_FOR_NOW)


def _json_text(fields: list[tuple[str | None, str]]) -> str:
    # Not looked for cycles: a list of pairs of text holds none.
    return json.dumps(fields, ensure_ascii=False, check_circular=False)


async def _run_script(
    client: Redis[str], script: Script[str], *, keys: list[str], args: list[str | int]
) -> object:
    """Run *script* by its SHA1 (``EVALSHA``), loading it first if the server has not got
    it. What calling the ``Script`` does, for less: the retry policy it wraps each call in
    cost some 130,000 instructions, as much as 35 events of a burst cost a publish."""
    from coredis.exceptions import NoScriptError

    try:
        return await client.evalsha(script.sha, keys=keys, args=args)
    except NoScriptError:
        # Nothing ran: loaded, then run once more.
        await client.script_load(script.script)
        return await client.evalsha(script.sha, keys=keys, args=args)


def _reporting_connections(
    connection_class: type[BaseConnection], connected: Callable[[BaseConnection], None]
) -> type[BaseConnection]:
    """*connection_class*, calling *connected* with each connection once it has connected."""

    class Reporting(connection_class):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.register_connect_callback(connected)

    return Reporting
