"""Where an alias connects, for messages: the password always masked."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .base import OPTIONS_KEY, mask, masked_params

__all__ = ["ConnectionTarget"]


@dataclass(frozen=True, slots=True)
class ConnectionTarget:
    """Where an alias connects. ``repr`` and :meth:`describe` mask the password."""

    host: str
    port: str
    dbname: str
    user: str
    password: str = dataclasses.field(repr=False, default="")
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"ConnectionTarget(host={self.host!r}, port={self.port!r}, "
            f"dbname={self.dbname!r}, user={self.user!r}, password={mask(self.password)!r}, "
            f"params={masked_params(self.params)!r})"
        )

    def describe(self) -> str:
        """``host:port/dbname as user``; multi-host lists are paired up."""
        hosts = self.host.split(",") if self.host else ["(local socket)"]
        ports = self.port.split(",") if self.port else [""]
        if len(ports) == 1:
            ports = ports * len(hosts)
        pairs = ",".join(f"{h}:{p}" if p else h for h, p in zip(hosts, ports, strict=False))
        return f"{pairs}/{self.dbname} as {self.user or '(default user)'}"

    @classmethod
    def from_settings(cls, settings_dict: Mapping[str, Any]) -> ConnectionTarget:
        options = settings_dict.get("OPTIONS") or {}
        return cls(
            host=str(settings_dict.get("HOST") or ""),
            port=str(settings_dict.get("PORT") or ""),
            dbname=str(settings_dict.get("NAME") or ""),
            user=str(settings_dict.get("USER") or ""),
            password=str(settings_dict.get("PASSWORD") or ""),
            params={k: v for k, v in options.items() if k != OPTIONS_KEY},
        )
