"""Model instances from rows without ``Model.__init__``, where that builds the same object.

Every row Django turns into an instance goes through ``Model.from_db()``, which
calls ``cls(*values)``: ``Model.__init__`` sends ``pre_init``, makes the
``ModelState``, sets each field with ``setattr`` and sends ``post_init``. For a
model that nothing customises, that is the same as making the ``ModelState``
and setting the fields in order, with neither the argument handling nor the
signals, which is what :func:`from_db` does for reads that run in the bridge
(on the pool). It takes this path only when all of these hold, and Django's own
``from_db()`` otherwise:

* the model is concrete and defines or inherits no ``__init__``, ``__new__``,
  ``__setattr__`` or ``from_db`` of its own (nor does a class after ``Model`` in
  its MRO define ``__init__``, which ``Model.__init__`` would call);
* every concrete field's attribute is Django's plain ``DeferredAttribute`` or
  ``ForeignKeyDeferredAttribute`` (no ``FileField``-style descriptor with its
  own ``__set__``);
* no ``pre_init`` or ``post_init`` receiver listens to the model (checked on
  every call: receivers connected at run time count);
* the row holds every concrete field (no deferred field).

The instance's ``__dict__`` is then what ``Model.__init__`` and ``from_db()``
leave: ``_state`` (``adding`` False, ``db`` the alias, ``fetch_mode`` when Django
passes one) followed by the fields in order. ``READONLY_POOL["FAST_LANE"] =
False`` turns this off with the fast lane.
"""

from __future__ import annotations

import inspect
from typing import Any

from django.db.models import DEFERRED, Model
from django.db.models.base import ModelState
from django.db.models.fields.related_descriptors import ForeignKeyDeferredAttribute
from django.db.models.query_utils import DeferredAttribute
from django.db.models.signals import post_init, pre_init

from .bridge import in_bridge

__all__ = ["from_db", "install", "installed", "uninstall"]

_PLAIN_DESCRIPTORS = (DeferredAttribute, ForeignKeyDeferredAttribute)
_model_init = Model.__init__
_stock: Any = Model.__dict__["from_db"]  # Django's classmethod, restored by uninstall()
_django_from_db = _stock.__func__
_new = object.__new__
_setattr = setattr
# Per model class: the concrete fields' attnames when it is plain, () when it is not.
_plans: dict[type, tuple[str, ...]] = {}


def _plan(cls: type[Model]) -> tuple[str, ...]:
    opts = cls._meta
    mro = cls.__mro__
    plain = (
        not opts.abstract
        and cls.__init__ is _model_init
        and cls.__new__ is _new
        and cls.__setattr__ is object.__setattr__
        and getattr(cls.from_db, "__func__", None) is from_db
        and not any("__init__" in k.__dict__ for k in mro[mro.index(Model) + 1:-1])
        and all(type(inspect.getattr_static(cls, f.attname, None)) in _PLAIN_DESCRIPTORS
                for f in opts.concrete_fields)
    )
    plan = tuple(f.attname for f in opts.concrete_fields) if plain else ()
    _plans[cls] = plan
    return plan


def from_db(cls: type[Model], db: str | None, field_names: Any, values: Any, *, fetch_mode: Any = None) -> Model:
    """``Model.from_db()``: the same instance, built without ``__init__`` when it may be."""
    plan = _plans.get(cls)
    if plan is None:
        plan = _plan(cls)
    if (not plan or len(values) != len(plan) or not in_bridge() or cls.__init__ is not _model_init
            or (pre_init.receivers and pre_init.has_listeners(cls))
            or (post_init.receivers and post_init.has_listeners(cls))):
        return _stock_from_db(cls, db, field_names, values, fetch_mode)
    for value in values:  # by identity, as Model.__init__ looks for it: "in" would call
        if value is DEFERRED:  # Decimal's ==, which asks numbers' ABCs about DEFERRED
            return _stock_from_db(cls, db, field_names, values, fetch_mode)
    new = _new(cls)
    new._state = state = ModelState()
    for name, value in zip(plan, values, strict=False):  # the lengths are equal: checked above
        _setattr(new, name, value)  # as Model.__init__ does (no __dict__ made for plain attributes)
    state.adding = False  # then as from_db() does
    state.db = db
    if fetch_mode is not None:  # Django 6.1+
        state.fetch_mode = fetch_mode
    return new


def _stock_from_db(cls: type[Model], db: str | None, field_names: Any, values: Any, fetch_mode: Any) -> Model:
    """Django's ``from_db()``, which takes ``fetch_mode`` from Django 6.1 on."""
    if fetch_mode is None:
        return _django_from_db(cls, db, field_names, values)  # type: ignore[no-any-return]
    return _django_from_db(cls, db, field_names, values, fetch_mode=fetch_mode)  # type: ignore[no-any-return]


def install() -> None:
    """Make :func:`from_db` ``Model.from_db`` (idempotent)."""
    if not installed():
        Model.from_db = classmethod(from_db)  # type: ignore[method-assign,assignment]
        _plans.clear()


def uninstall() -> None:
    """Put Django's ``Model.from_db`` back."""
    if installed():
        Model.from_db = _stock  # type: ignore[method-assign]
        _plans.clear()


def installed() -> bool:
    return Model.__dict__["from_db"] is not _stock
