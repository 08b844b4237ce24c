"""App configuration: wires the pool, the async ORM dispatch and the checks."""

from __future__ import annotations

from django.apps import AppConfig
from django.core.signals import request_started, setting_changed


class ReadOnlyPoolConfig(AppConfig):
    name = "django_readonly_pool"
    verbose_name = "Read-only pool"

    def ready(self) -> None:
        from . import checks, orm
        from .backend.base import pool_connection
        from .conf import app_settings, reset_app_settings
        from .errors import ConfigurationError
        from .pool import registry
        from .router import start_scope

        registry.factory = lambda alias: pool_connection(alias).make_read_pool()
        setting_changed.connect(reset_app_settings, dispatch_uid="readonly_pool_settings")
        setting_changed.connect(orm.forget_engines, dispatch_uid="readonly_pool_engines")
        request_started.connect(_start_scope, dispatch_uid="readonly_pool_scope")
        try:
            async_orm = app_settings().async_orm
        except ConfigurationError:
            async_orm = True  # the system check reports the bad setting
        if async_orm:
            orm.install()
        del start_scope, checks  # checks registered themselves on import


def _start_scope(**kwargs: object) -> None:
    from .router import start_scope

    start_scope()
