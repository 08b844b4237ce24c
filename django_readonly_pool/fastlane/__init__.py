"""The fast lane: statements learnt from Django, sent again for later reads of the same shape.

Building a Django query (``filter()``: lookups, WHERE tree) and compiling it
(``as_sql()``) cost more CPU than the round trip of a primary-key read. The fast
lane lets Django answer the first calls of a query *shape*, learns the statement
it sent, and sends it again for later calls of that shape with their parameters:

* :mod:`.get`: ``aget(**kwargs)`` with exact lookups on plain columns;
* :mod:`.scalar`: ``acount()`` and ``aexists()`` of any queryset whose shape
  :mod:`django_readonly_pool.compiled` can fingerprint;
* :mod:`.fetch`: ``async for`` over a queryset whose compiled statement is trusted;
* :mod:`.build` and :mod:`.template`: ``filter()``/``exclude()``/``values()`` of
  querysets bound to a pool alias, built from a template per shape instead of
  from scratch;
* :mod:`.fresh`: whether a queryset is as a fresh one of its model;
* :mod:`.cache`: what they share: their tables, statistics, and whether a trusted
  statement runs straight from the event loop.

``READONLY_POOL["FAST_LANE"] = False`` turns it off.
"""

from . import build
from .cache import clear, stats
from .fetch import fast_fetch
from .get import fast_get
from .scalar import fast_scalar

__all__ = ["build", "clear", "fast_fetch", "fast_get", "fast_scalar", "stats"]
