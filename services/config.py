"""Settings: every knob from an environment variable, validated once at start."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

DB_WAIT_S_DEFAULT = 2


class ConfigError(ValueError):
    """A setting has a value the service cannot run with."""


@dataclass(frozen=True)
class TlsFiles:
    """The server's certificate and key and, for mutual TLS, the CA that must have
    signed every client's certificate (gRPC offers no "optional client certificate")."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None


@dataclass(frozen=True)
class Settings:
    """The service's configuration; see the README's configuration table."""

    database_url: str | None
    service_database_url: str | None
    projector_database_url: str | None
    data_dir: Path
    embedded_pg_port: int
    grpc_address: str
    late_usage: timedelta
    future_usage: timedelta
    finalize_grace: timedelta
    db_pool_max: int
    db_wait_s: int
    run_projector: bool
    log_format: str
    digest_key_file: Path | None
    digest_algorithm: str
    prometheus_address: tuple[str, int] | None
    health_check_interval_s: int
    tls: TlsFiles | None
    rate_limit_per_s: int
    rate_limit_burst: int
    credential_cache_s: int

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(
            database_url=env.get("ACCRUAL_DATABASE_URL") or None,
            service_database_url=_role_url(env, "ACCRUAL_SERVICE_DATABASE_URL"),
            projector_database_url=_role_url(env, "ACCRUAL_PROJECTOR_DATABASE_URL"),
            data_dir=Path(env.get("ACCRUAL_DATA_DIR", ".accrual")).resolve(),
            embedded_pg_port=_int(env, "ACCRUAL_EMBEDDED_PG_PORT", 54329, 1, 65535),
            grpc_address=_address(env.get("ACCRUAL_GRPC_ADDRESS", "127.0.0.1:50051")),
            late_usage=timedelta(days=_int(env, "ACCRUAL_LATE_USAGE_DAYS", 34, 0, 3650)),
            future_usage=timedelta(minutes=_int(env, "ACCRUAL_FUTURE_USAGE_MINUTES", 5, 0, 1440)),
            finalize_grace=timedelta(
                minutes=_int(env, "ACCRUAL_FINALIZE_GRACE_MINUTES", 60, 0, 60 * 24 * 31)
            ),
            db_pool_max=_int(env, "ACCRUAL_DB_POOL_MAX", 10, 2, 500),
            db_wait_s=_int(env, "ACCRUAL_DB_WAIT_S", DB_WAIT_S_DEFAULT, 1, 120),
            run_projector=_bool(env, "ACCRUAL_RUN_PROJECTOR", default=True),
            log_format=_choice(env, "ACCRUAL_LOG_FORMAT", "auto", {"auto", "json", "console"}),
            digest_key_file=(
                Path(env["ACCRUAL_DIGEST_KEY_FILE"]) if env.get("ACCRUAL_DIGEST_KEY_FILE") else None
            ),
            digest_algorithm=_choice(
                env, "ACCRUAL_DIGEST_ALGORITHM", "ed25519", {"ed25519", "hmac-sha256"}
            ),
            prometheus_address=_host_port(env, "ACCRUAL_PROMETHEUS_ADDRESS"),
            health_check_interval_s=_int(env, "ACCRUAL_HEALTH_CHECK_INTERVAL_S", 2, 1, 300),
            tls=_tls(env),
            rate_limit_per_s=_int(env, "ACCRUAL_RATE_LIMIT_PER_S", 5_000, 0, 1_000_000),
            rate_limit_burst=_int(env, "ACCRUAL_RATE_LIMIT_BURST", 10_000, 1, 1_000_000),
            credential_cache_s=_int(env, "ACCRUAL_CREDENTIAL_CACHE_S", 5, 0, 3600),
        )


_ROLE_URLS = ("ACCRUAL_SERVICE_DATABASE_URL", "ACCRUAL_PROJECTOR_DATABASE_URL")


def _role_url(env: Mapping[str, str], name: str) -> str | None:
    """One role's URL; both or neither must be set. With only the service's, the
    projector would run as the owner and make tables the service cannot read."""
    given = [n for n in _ROLE_URLS if env.get(n)]
    if len(given) == 1:
        other = next(n for n in _ROLE_URLS if n not in given)
        raise ConfigError(f"{given[0]} is set but {other} is not: set both, or neither")
    return env.get(name) or None


def _tls(env: Mapping[str, str]) -> TlsFiles | None:
    cert, key = env.get("ACCRUAL_TLS_CERT_FILE"), env.get("ACCRUAL_TLS_KEY_FILE")
    client_ca = env.get("ACCRUAL_TLS_CLIENT_CA_FILE") or None
    if not cert and not key:
        if client_ca:
            raise ConfigError("ACCRUAL_TLS_CLIENT_CA_FILE needs a server certificate and key")
        return None
    if not cert or not key:
        raise ConfigError("ACCRUAL_TLS_CERT_FILE and ACCRUAL_TLS_KEY_FILE go together")
    files = [Path(cert), Path(key), *([Path(client_ca)] if client_ca else [])]
    if missing := [str(f) for f in files if not f.is_file()]:
        raise ConfigError(f"TLS file not found: {', '.join(missing)}")
    return TlsFiles(
        cert_file=Path(cert),
        key_file=Path(key),
        client_ca_file=Path(client_ca) if client_ca else None,
    )


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} must be between {low} and {high}")
    return value


def _bool(env: Mapping[str, str], name: str, *, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name}={raw!r} must be true or false")


def _choice(env: Mapping[str, str], name: str, default: str, allowed: set[str]) -> str:
    value = env.get(name, default) or default
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} must be one of {', '.join(sorted(allowed))}")
    return value


def _host_port(env: Mapping[str, str], name: str) -> tuple[str, int] | None:
    raw = env.get(name, "")
    if not raw:
        return None
    host, _, port = raw.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ConfigError(f"{name}={raw!r} must be host:port, e.g. 0.0.0.0:9464")
    return host, int(port)


def _address(value: str) -> str:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"ACCRUAL_GRPC_ADDRESS={value!r} must be host:port")
    return value
