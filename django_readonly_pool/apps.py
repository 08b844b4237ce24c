"""App configuration: the one place where the layers are wired together.

The pools and the health monitor know each other only through
:mod:`~django_readonly_pool.events`; here they are subscribed. Here too: the
pool factory (the backend builds each alias's pool), the ``setting_changed``
receivers, the async ORM dispatch, the per-request thread-hop removal, the
Prometheus collector, and the system checks (registered when
:mod:`~django_readonly_pool.checks` is imported).
"""

from __future__ import annotations

from django.apps import AppConfig
from django.core.signals import setting_changed

from . import (
    aliases,
    checks,  # noqa: F401 - registers the system checks
    compiled,
    events,
    fastlane,
    orm,
)
from .asgi import install_request_receivers
from .backend.base import pool_connection
from .conf import AppSettings, app_settings, reset_app_settings
from .errors import ConfigurationError
from .health import monitor
from .metrics import register_prometheus
from .pool import quiet, registry

__all__ = ["ReadOnlyPoolConfig"]


class ReadOnlyPoolConfig(AppConfig):
    name = "django_readonly_pool"
    verbose_name = "Read-only pool"

    def ready(self) -> None:
        registry.factory = lambda alias: pool_connection(alias).make_read_pool()
        events.subscribe(events.connection_failed, monitor.connection_failed)
        events.subscribe(events.replica_down, registry.replica_down)
        quiet.install()
        # In this order: the cached settings go first, then what depends on them.
        setting_changed.connect(reset_app_settings, dispatch_uid="readonly_pool_settings")
        setting_changed.connect(aliases.forget, dispatch_uid="readonly_pool_aliases")
        setting_changed.connect(fastlane.clear, dispatch_uid="readonly_pool_fastlane")
        setting_changed.connect(compiled.follow_settings, dispatch_uid="readonly_pool_compiled")
        setting_changed.connect(fastlane.build.follow_settings, dispatch_uid="readonly_pool_build")
        setting_changed.connect(orm.follow_settings, dispatch_uid="readonly_pool_orm")
        try:
            settings = app_settings()
        except ConfigurationError:
            settings = AppSettings()  # the system check reports the bad setting
        compiled.follow_settings()
        fastlane.build.follow_settings()
        if settings.async_orm:
            orm.install()
        if settings.skip_request_thread_hop:
            install_request_receivers()
        register_prometheus()  # when prometheus_client is installed
