"""Cached fallbacks: answer from a cache when the source is slow or down, and say so.

:class:`Fallback` asks the source for a value within ``fallback_after`` seconds and otherwise
serves the cached one, marked stale; :func:`respond_with_fallback` answers a request with it.
:class:`Refresher` keeps values fresh in the background. No extra is needed.
"""

from ._cache import CachedValue as CachedValue
from ._cache import CacheStore as CacheStore
from ._cache import MemoryStore as MemoryStore
from ._cache import Refresher as Refresher
from ._cache import RefresherStatistics as RefresherStatistics
from ._exceptions import FallbackUnavailableError as FallbackUnavailableError
from ._fallback import Fallback as Fallback
from ._fallback import FallbackResult as FallbackResult
from ._fallback import respond_with_fallback as respond_with_fallback

__all__ = (
    "CacheStore",
    "CachedValue",
    "Fallback",
    "FallbackResult",
    "FallbackUnavailableError",
    "MemoryStore",
    "Refresher",
    "RefresherStatistics",
    "respond_with_fallback",
)
