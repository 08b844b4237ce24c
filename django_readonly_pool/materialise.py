"""Model instances from rows without ``Model.__init__``, where that builds the same object.

Every row Django turns into an instance goes through ``Model.from_db()``, which
calls ``cls(*values)``: ``Model.__init__`` sends ``pre_init``, makes the
``ModelState``, sets each field with ``setattr`` and sends ``post_init``. For a
model that nothing customises, that is the same as making the ``ModelState``
and setting the fields in order, with neither the argument handling nor the
signals, which is what :func:`from_db` does for rows read from a pool alias (the
alias Django passes to ``from_db()``: async reads in the bridge or straight from
the event loop, and sync reads on the alias). It takes this path only when all
of these hold, and Django's own ``from_db()`` otherwise:

* the model is concrete and defines or inherits no ``__init__``, ``__new__``,
  ``__setattr__`` or ``from_db`` of its own (nor does a class after ``Model`` in
  its MRO define ``__init__``, which ``Model.__init__`` would call);
* every concrete field's attribute is Django's plain ``DeferredAttribute`` or
  ``ForeignKeyDeferredAttribute`` (no ``FileField``-style descriptor with its
  own ``__set__``);
* no ``pre_init`` or ``post_init`` receiver listens to the model (checked on
  every call: receivers connected at run time count);
* the row holds every concrete field (no deferred field).

The fields are assigned by a function compiled once per model class,
``new.id, new.name, ... = values``: one attribute store per field, in order,
through the same descriptors as ``setattr`` (a foreign key's attname through
``ForeignKeyDeferredAttribute.__set__``), without a ``setattr()`` call each.

The instance's ``__dict__`` is then what ``Model.__init__`` and ``from_db()``
leave: ``_state`` (``adding`` False, ``db`` the alias, ``fetch_mode`` when Django
passes one) followed by the fields in order. ``READONLY_POOL["FAST_LANE"] =
False`` turns this off with the fast lane.
"""

from __future__ import annotations

import inspect
import keyword
from collections.abc import Callable
from typing import Any

from django.db.models import DEFERRED, Model
from django.db.models.base import ModelState
from django.db.models.fields.related_descriptors import ForeignKeyDeferredAttribute
from django.db.models.query_utils import DeferredAttribute
from django.db.models.signals import post_init, pre_init

from .aliases import is_pool_alias

__all__ = ["from_db", "install", "installed", "plain", "uninstall"]

_PLAIN_DESCRIPTORS = (DeferredAttribute, ForeignKeyDeferredAttribute)
_model_init = Model.__init__
_stock: Any = Model.__dict__["from_db"]  # Django's classmethod, restored by uninstall()
_django_from_db = _stock.__func__
_new = object.__new__
# ModelState() is object.__new__(ModelState) while it defines no __init__ or __new__ of its own.
_PLAIN_STATE = ModelState.__init__ is object.__init__ and ModelState.__new__ is object.__new__
# Per model class: (number of fields, its builder) when it is plain, _NOT_PLAIN when it is not.
_plans: dict[type, tuple[int, Callable[..., Model]]] = {}


def _builder(cls: type[Model], attnames: list[str]) -> Callable[..., Model]:
    """``make(db, values, fetch_mode)`` for *cls*: a new instance, its ``ModelState``, then each
    field assigned in order (``new.id, new.name, ... = values``: one attribute store each, as
    ``Model.__init__``'s ``setattr`` calls, through the same descriptors), then the state."""
    targets = "".join(f"new.{name}, " for name in attnames)
    source = (
        "def make(db, values, fetch_mode):\n"
        "    new = _new(cls)\n"
        "    new._state = state = _new(ModelState)\n"
        f"    {targets}= values\n"
        "    state.adding = False\n"
        "    state.db = db\n"
        "    if fetch_mode is not None:\n"
        "        state.fetch_mode = fetch_mode\n"
        "    return new\n"
    )
    namespace: dict[str, Any] = {"_new": _new, "ModelState": ModelState, "cls": cls}
    exec(compile(source, f"<django_readonly_pool.materialise: {cls.__qualname__}>", "exec"), namespace)
    return namespace["make"]  # type: ignore[no-any-return]


def _plan(cls: type[Model]) -> tuple[int, Callable[..., Model]]:
    opts = cls._meta
    mro = cls.__mro__
    attnames = [f.attname for f in opts.concrete_fields]
    plain = (
        _PLAIN_STATE
        and not opts.abstract
        and cls.__init__ is _model_init
        and cls.__new__ is _new
        and cls.__setattr__ is object.__setattr__
        and getattr(cls.from_db, "__func__", None) is from_db
        and not any("__init__" in k.__dict__ for k in mro[mro.index(Model) + 1:-1])
        and all(type(inspect.getattr_static(cls, f.attname, None)) in _PLAIN_DESCRIPTORS
                for f in opts.concrete_fields)
        and all(name.isidentifier() and not keyword.iskeyword(name) for name in attnames)
    )
    plan = (len(attnames), _builder(cls, attnames)) if plain else _NOT_PLAIN
    _plans[cls] = plan
    return plan


def plain(cls: type[Model]) -> bool:
    """True when rows of *cls* read on the pool are built without ``Model.__init__``."""
    return (_plans.get(cls) or _plan(cls)) is not _NOT_PLAIN


def from_db(cls: type[Model], db: str | None, field_names: Any, values: Any, *, fetch_mode: Any = None) -> Model:
    """``Model.from_db()``: the same instance, built without ``__init__`` when it may be."""
    plan = _plans.get(cls)
    if plan is None:
        plan = _plan(cls)
    if (len(values) != plan[0] or not is_pool_alias(db) or cls.__init__ is not _model_init
            or (pre_init.receivers and pre_init.has_listeners(cls))
            or (post_init.receivers and post_init.has_listeners(cls))):
        return _stock_from_db(cls, db, field_names, values, fetch_mode)
    for value in values:  # by identity, as Model.__init__ looks for it: "in" would call
        if value is DEFERRED:  # Decimal's ==, which asks numbers' ABCs about DEFERRED
            return _stock_from_db(cls, db, field_names, values, fetch_mode)
    return plan[1](db, values, fetch_mode)


def _stock_only(*args: Any) -> Model:
    raise AssertionError("not a plain model")  # never called: no row has -1 values


_NOT_PLAIN: tuple[int, Callable[..., Model]] = (-1, _stock_only)


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
