"""Broadcast: publish events to topics and serve each topic as a resumable event stream.

:class:`MemoryBroker` keeps each topic's history in this process (one server);
:class:`RedisBroker` keeps it in Redis Streams (many servers) and needs the ``redis`` extra:
``pip install 'streamkit[redis]'``. :func:`topic_response` serves a topic in one line::

    from streamkit.broadcast import MemoryBroker, topic_response

    broker = MemoryBroker()

    async def prices(request):
        return topic_response(broker, "prices")
"""

from ._broker import Broker as Broker
from ._broker import MemoryBroker as MemoryBroker
from ._broker import TopicNameError as TopicNameError
from ._broker import topic_response as topic_response
from ._exceptions import SlowSubscriberError as SlowSubscriberError
from ._hub import Subscription as Subscription
from ._redis_broker import RedisBroker as RedisBroker
from ._topics import RESET_EVENT as RESET_EVENT
from ._topics import BrokerStatistics as BrokerStatistics
from ._topics import ResetReason as ResetReason
from ._topics import SlowSubscriberPolicy as SlowSubscriberPolicy
from ._topics import TopicStatistics as TopicStatistics

__all__ = (  # noqa: RUF022  (plainly sorted, as tests/test_exports.py checks)
    "Broker",
    "BrokerStatistics",
    "MemoryBroker",
    "RESET_EVENT",
    "RedisBroker",
    "ResetReason",
    "SlowSubscriberError",
    "SlowSubscriberPolicy",
    "Subscription",
    "TopicNameError",
    "TopicStatistics",
    "topic_response",
)
