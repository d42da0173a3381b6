"""Process configuration: one frozen Settings built from ``WEBHOOKS_*`` variables, flags on top.

Pure: reads only the mapping it is given. Policy that SQL must agree on (allow_http, retry schedule,
...) is not here but in the ``webhooks.settings`` row; this is how this one process runs.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from engine.errors import ConfigError

ENV_PREFIX = "WEBHOOKS_"
SECRET_FIELDS = frozenset({"database_url", "admin_token", "portal_key"})
LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")
MIN_ADMIN_TOKEN_CHARS = 16
# = engine.portal_tokens.MIN_KEY_CHARS (config imports none of the package; a test holds them equal)
MIN_PORTAL_KEY_CHARS = 32
# An origin as browsers send it: scheme, host (a name, or a bracketed IPv6), optional port; no path.
ORIGIN = re.compile(r"^https?://(?:[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$")
# The portal's public base URL: an absolute http(s) URL, optionally with a path, without a query
# or fragment (the portal URL appends /portal#token=...).
PUBLIC_URL = re.compile(r"^https?://[^/?#\s]+(?:/[^?#\s]*)?$")
# One origin a page may frame the portal from (CSP's host-source without a path): a scheme, a
# host (whose first label may be "*" for any subdomain) and an optional port.
_FRAME_ORIGIN = re.compile(
    r"https?://(?:\*\.)?[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*"
    r"(?::(?:[0-9]{1,5}|\*))?"
)


@dataclass(frozen=True)
class Settings:
    """How this engine process runs. Every field can be set as ``WEBHOOKS_<FIELD>``.

    The admin HTTP server (/healthz, /readyz, /metrics, the admin API) always runs: it listens on
    ``admin_host``:``admin_port`` (port 0 picks a free port, reported in the ``admin_listening``
    log line). With ``admin_token`` set, every route but /healthz and /readyz requires
    ``Authorization: Bearer <token>``; without one, ``admin_host`` must be a loopback address, so
    an unauthenticated admin server is never reachable from another machine.
    ``metrics_refresh_s`` is how often the queue-depth gauges are re-counted in SQL.
    ``request_timeout_s`` is deprecated: request timeouts are
    ``webhooks.settings.request_timeout_s`` and each endpoint's ``timeout_s``, which SQL checks
    against the lease. When set, it only bounds every attempt's timeout from above (it can
    shorten one, never lengthen it).
    ``portal_frame_ancestors`` is the CSP ``frame-ancestors`` of the customer portal page
    (``/portal``): the origins whose pages may embed it in an iframe, or ``'none'`` (see
    :func:`frame_ancestors`).
    ``vacuum_dead_rows``: when idle, the engine vacuums the hot table once the statistics count
    that many more dead rows than its last vacuum left (see engine.delivery.idle_vacuum); 0
    leaves it all to autovacuum. ``vacuum_check_s`` spaces those reads of the statistics.
    """

    database_url: str | None = None
    migrate: bool = True
    listen: bool = True  # false: no LISTEN; the poll alone finds work (e.g. behind PgBouncer)
    request_timeout_s: float | None = None  # deprecated; see the docstring
    max_connections: int = 512
    poll_interval_s: float = 1.0
    claim_batch: int = 1000
    queue_per_in_flight: int = 4
    result_batch: int = 500
    result_buffer_max: int = 50_000
    shutdown_grace_s: float = 15.0
    pool_size: int = 8
    maintenance_interval_s: float = 300.0
    settings_refresh_s: float = 30.0
    listener_probe_s: float = 5.0
    excerpt_bytes: int = 16_384
    log_level: str = "info"
    log_format: str = "auto"
    admin_host: str = "127.0.0.1"
    admin_port: int = 8080
    admin_token: str | None = None
    metrics_refresh_s: float = 10.0
    vacuum_dead_rows: int = 10_000
    vacuum_check_s: float = 5.0
    data_dir: str | None = None
    # The embedded Postgres's port (run without a database URL): fixed, so that the app's connection
    # string stays the same across restarts.
    embedded_port: int = 5433
    # The customer portal (README "The customer's portal"): the key that signs account-scoped
    # tokens (none: portal access is off, and POST /v1/accounts/{id}/portal-access answers 503
    # naming this setting), the base URL the portal's links start with (none: the admin server's
    # own address), and the origins whose scripts may call /v1 with such a token (CORS).
    portal_key: str | None = None
    public_url: str | None = None
    cors_origins: str | None = None
    portal_frame_ancestors: str = "'none'"

    def __post_init__(self) -> None:
        positive = (
            "request_timeout_s",  # or None
            "max_connections",
            "poll_interval_s",
            "claim_batch",
            "queue_per_in_flight",
            "result_batch",
            "result_buffer_max",
            "shutdown_grace_s",
            "pool_size",
            "maintenance_interval_s",
            "settings_refresh_s",
            "listener_probe_s",
            "excerpt_bytes",
            "metrics_refresh_s",
            "vacuum_check_s",
        )
        for name in positive:
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{_env(name)} must be positive", field=name)
        if self.request_timeout_s is not None and self.shutdown_grace_s < self.request_timeout_s:
            raise ConfigError(
                f"{_env('shutdown_grace_s')} ({self.shutdown_grace_s}) must be at least "
                f"{_env('request_timeout_s')} ({self.request_timeout_s}), or in-flight attempts "
                "would be cut off at shutdown",
                field="shutdown_grace_s",
            )
        if self.result_buffer_max < self.result_batch:
            raise ConfigError(
                f"{_env('result_buffer_max')} must be at least {_env('result_batch')}",
                field="result_buffer_max",
            )
        if self.vacuum_dead_rows < 0:
            raise ConfigError(
                f"{_env('vacuum_dead_rows')} must be 0 (never) or more", field="vacuum_dead_rows"
            )
        if self.pool_size < 2:
            raise ConfigError(f"{_env('pool_size')} must be at least 2", field="pool_size")
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(
                f"{_env('log_format')} must be one of {LOG_FORMATS}", field="log_format"
            )
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"{_env('log_level')} must be one of {LOG_LEVELS}", field="log_level")
        self._check_ports()
        self._check_admin_access()
        self._check_portal()
        object.__setattr__(
            self, "portal_frame_ancestors", frame_ancestors(self.portal_frame_ancestors)
        )

    def _check_ports(self) -> None:
        if not 0 <= self.admin_port <= 65535:
            raise ConfigError(f"{_env('admin_port')} must be 0..65535", field="admin_port")
        if not 1 <= self.embedded_port <= 65535:
            raise ConfigError(
                f"{_env('embedded_port')} must be 1..65535, got {self.embedded_port}",
                field="embedded_port",
            )

    def _check_portal(self) -> None:
        if self.portal_key is not None and (
            len(self.portal_key) < MIN_PORTAL_KEY_CHARS or any(c.isspace() for c in self.portal_key)
        ):
            raise ConfigError(
                f"{_env('portal_key')} must be at least {MIN_PORTAL_KEY_CHARS} characters "
                "without spaces (e.g. from `openssl rand -hex 32`)",
                field="portal_key",
            )
        if self.public_url is not None and PUBLIC_URL.match(self.public_url) is None:
            raise ConfigError(
                f"{_env('public_url')}={self.public_url!r} is not an absolute http(s) URL without "
                "a query or fragment (e.g. https://webhooks.example.com)",
                field="public_url",
            )
        for origin in self.allowed_origins:
            if ORIGIN.match(origin) is None:
                raise ConfigError(
                    f"{_env('cors_origins')}: {origin!r} is not an origin like "
                    "https://app.example.com (scheme, host and port only; comma-separated)",
                    field="cors_origins",
                )

    @property
    def allowed_origins(self) -> frozenset[str]:
        """The origins of WEBHOOKS_CORS_ORIGINS (comma-separated), trailing slashes dropped."""
        if not self.cors_origins:
            return frozenset()
        return frozenset(o.strip().rstrip("/") for o in self.cors_origins.split(",") if o.strip())

    def _check_admin_access(self) -> None:
        """A token, if any, must be strong; without one the admin server stays on loopback."""
        if self.admin_token is not None and (
            len(self.admin_token) < MIN_ADMIN_TOKEN_CHARS
            or any(c.isspace() for c in self.admin_token)
        ):
            raise ConfigError(
                f"{_env('admin_token')} must be at least {MIN_ADMIN_TOKEN_CHARS} characters "
                "without spaces (e.g. from `openssl rand -hex 32`)",
                field="admin_token",
            )
        if self.admin_token is None and not is_loopback(self.admin_host):
            raise ConfigError(
                f"{_env('admin_host')}={self.admin_host!r} exposes the admin API beyond this "
                f"machine; set {_env('admin_token')} too, or listen on 127.0.0.1",
                field="admin_host",
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str], **overrides: Any) -> Settings:
        """Build from ``WEBHOOKS_*`` variables, then apply non-None overrides (CLI flags)."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(_env(f.name))
            if raw is not None and raw != "":
                values[f.name] = _parse(f.name, str(f.type), raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def masked(self) -> dict[str, Any]:
        """Every effective value, secrets masked: what ``check-config`` prints."""
        shown: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in SECRET_FIELDS and value:
                value = mask(str(value))
            shown[f.name] = value
        return shown


def mask(value: str) -> str:
    """Hide a secret but keep enough to recognise which one it is (a URL keeps its host)."""
    if "://" in value and "@" in value:
        scheme, rest = value.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}" if ":" in creds else value
    if "://" in value:
        return value
    return "***" if len(value) < 12 else value[:4] + "***"


def frame_ancestors(value: str) -> str:
    """The CSP ``frame-ancestors`` sources in ``value``, checked and normalised (one space apart).

    Accepted: ``'none'`` alone (no page may frame the portal), or any of ``'self'`` and origins
    such as ``https://app.misarmail.com``, ``https://*.misarmail.com`` or
    ``http://localhost:3000``. Refused with a ConfigError naming the source: anything else,
    including ``*`` and bare schemes (``https:``), which would let any site frame the portal and
    trick its users into clicks (clickjacking), and paths, which frame-ancestors does not match.
    """
    sources = value.split()
    name = _env("portal_frame_ancestors")
    if not sources:
        raise ConfigError(
            f"{name} is empty; give 'none' or the origins that embed the portal",
            field="portal_frame_ancestors",
        )
    normalised: list[str] = []
    for source in sources:
        lowered = source.lower()
        if lowered in ("'self'", "'none'") or _FRAME_ORIGIN.fullmatch(lowered):
            normalised.append(lowered)
            continue
        if lowered in ("*", "http:", "https:"):
            hint = "would let any site frame the portal; name the origins"
        elif "://" in lowered and "/" in lowered.split("://", 1)[1]:
            hint = "has a path; frame-ancestors matches origins (scheme, host, port) only"
        else:
            hint = "is not 'self' or an origin like https://app.misarmail.com"
        raise ConfigError(f"{name}: {source!r} {hint}", field="portal_frame_ancestors")
    if "'none'" in normalised and len(normalised) > 1:
        raise ConfigError(
            f"{name}: 'none' cannot be combined with other sources", field="portal_frame_ancestors"
        )
    return " ".join(normalised)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals; any other name or address is not."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _env(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _parse(name: str, type_name: str, raw: str) -> Any:
    try:
        if type_name.startswith("bool"):
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")  # noqa: TRY301 - one message path
        if type_name.startswith("int"):
            return int(raw)
        if type_name.startswith("float"):
            value = float(raw)
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError("expected a finite number")  # noqa: TRY301 - one message path
            return value
    except ValueError as exc:
        raise ConfigError(f"{_env(name)}={raw!r} is invalid: {exc}", field=name) from exc
    return raw
