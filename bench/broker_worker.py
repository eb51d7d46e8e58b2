"""The streamkit app of the broker benchmark for ``python -m streamkit run`` with several
workers, which each import it: ``bench.broker_worker:app``.

It is built from the environment, which the workers inherit: ``BENCH_REDIS_URL`` (the Redis
server) and ``BENCH_KEY_PREFIX`` (shared, so that every worker serves the same topic).
"""

from __future__ import annotations

import os

from .broker_apps import streamkit_app

app = streamkit_app(
    "redis", redis_url=os.environ["BENCH_REDIS_URL"], key_prefix=os.environ["BENCH_KEY_PREFIX"]
)
