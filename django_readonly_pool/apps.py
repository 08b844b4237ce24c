"""App configuration: wires the pool, the async ORM dispatch and the checks."""

from __future__ import annotations

from django.apps import AppConfig
from django.core.signals import setting_changed


class ReadOnlyPoolConfig(AppConfig):
    name = "django_readonly_pool"
    verbose_name = "Read-only pool"

    def ready(self) -> None:
        from . import checks, orm
        from .asgi import install_request_receivers
        from .backend.base import pool_connection
        from .conf import AppSettings, app_settings, reset_app_settings
        from .errors import ConfigurationError
        from .pool import registry

        registry.factory = lambda alias: pool_connection(alias).make_read_pool()
        setting_changed.connect(reset_app_settings, dispatch_uid="readonly_pool_settings")
        setting_changed.connect(orm.forget_engines, dispatch_uid="readonly_pool_engines")
        try:
            settings = app_settings()
        except ConfigurationError:
            settings = AppSettings()  # the system check reports the bad setting
        if settings.async_orm:
            orm.install()
        if settings.skip_request_thread_hop:
            install_request_receivers()
        del checks  # the checks registered themselves on import
