"""Whether a queryset is as a fresh one of its model (its alias aside).

The queryset and its ``Query`` are compared attribute by attribute with what a
newly built ``QuerySet``/``Query`` of the model holds (or its class, for
attributes ``__init__`` leaves there), so ``extra()``, ``filter()``,
``order_by()``, slicing, ``select_related()``, ``only()``, hints, prefetches, a
related manager's filters, and any attribute a future Django sets make it not
fresh: nothing is listed by hand. Its class must override no method or attribute
of Django's ``QuerySet`` (adding new ones is fine).
"""

from __future__ import annotations

from typing import Any, Final

from django.db.models import Model
from django.db.models.query import QuerySet
from django.db.models.sql import Query

__all__ = ["forget", "untouched"]

_MISSING: Final = object()
_NOT_SHAPE_ATTRS: Final = frozenset({"_query", "_db"})  # the alias is part of the key
# What every class's namespace holds about the class itself, not behaviour (Python 3.13 adds
# __firstlineno__ and __static_attributes__; a generic subclass, __orig_bases__ ...).
_CLASS_METADATA: Final = frozenset({
    "__module__", "__qualname__", "__doc__", "__dict__", "__weakref__", "__firstlineno__",
    "__static_attributes__", "__annotations__", "__annotate__", "__annotate_func__", "__annotations_cache__",
    "__orig_bases__", "__parameters__", "__type_params__", "__classcell__",
})
_fresh: dict[type[Model], tuple[dict[str, Any], dict[str, Any]]] = {}
_plain_classes: dict[type[Any], bool] = {}


def forget() -> None:
    _fresh.clear()


def _defaults(model: type[Model]) -> tuple[dict[str, Any], dict[str, Any]]:
    """What a fresh QuerySet and a fresh Query of *model* hold, attribute by attribute
    (filled in from the classes as other attribute names are met)."""
    state = _fresh.get(model)
    if state is None:
        fresh: QuerySet[Any] = QuerySet(model=model)
        state = _fresh[model] = (dict(vars(fresh)), dict(vars(Query(model))))
    return state


def _class_default(cls: type[Any], name: str) -> Any:
    """The class attribute *name* as stored (a descriptor stays a descriptor: never equal)."""
    for klass in cls.__mro__:
        if name in vars(klass):
            return vars(klass)[name]
    return _MISSING


def _at_defaults(obj: Any, cls: type[Any], defaults: dict[str, Any], skip: frozenset[str]) -> bool:
    """Every instance attribute of *obj* but *skip* (a chained clone sets some to their
    class's value) equals a fresh object's."""
    for name, value in vars(obj).items():
        if name in skip:
            continue
        default = defaults.get(name, _MISSING)
        if default is _MISSING:
            default = defaults[name] = _class_default(cls, name)
        if default is not value and default != value:
            return False
    return True


def _plain_class(cls: type[Any]) -> bool:
    """True when *cls* (a QuerySet subclass) overrides nothing of Django's QuerySet."""
    plain = _plain_classes.get(cls)
    if plain is None:
        django_names = set(vars(QuerySet)) - _CLASS_METADATA
        plain = _plain_classes[cls] = all(
            not django_names.intersection(vars(klass)) for klass in cls.__mro__
            if klass is not QuerySet and issubclass(klass, QuerySet)
        )
    return plain


def untouched(qs: QuerySet[Any], query_may_differ: frozenset[str] = frozenset()) -> bool:
    """The queryset and its Query are as a fresh one of the model (alias aside), but for the
    Query's attributes in *query_may_differ* (the caller's key holds them)."""
    cls = type(qs)
    if cls is not QuerySet and not _plain_class(cls):
        return False
    query = qs._query  # type: ignore[attr-defined]
    if type(query) is not Query:
        return False
    model = qs.model
    queryset_defaults, query_defaults = _fresh.get(model) or _defaults(model)
    return (_at_defaults(qs, QuerySet, queryset_defaults, _NOT_SHAPE_ATTRS)
            and _at_defaults(query, Query, query_defaults, query_may_differ))
