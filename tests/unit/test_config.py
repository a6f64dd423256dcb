"""Settings come from the environment and a bad value stops the start with its name."""

from __future__ import annotations

from datetime import timedelta

import pytest

from services.config import ConfigError, Settings


def test_defaults_need_no_environment() -> None:
    settings = Settings.from_env({})
    assert settings.database_url is None
    assert settings.grpc_address == "127.0.0.1:50051"
    assert settings.late_usage == timedelta(days=34)
    assert settings.future_usage == timedelta(minutes=5)
    assert settings.prometheus_address is None
    assert settings.run_projector is True


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("ACCRUAL_GRPC_ADDRESS", "nowhere", "host:port"),
        ("ACCRUAL_LATE_USAGE_DAYS", "ten", "whole number"),
        ("ACCRUAL_DB_POOL_MAX", "1", "between 2 and 500"),
        ("ACCRUAL_RUN_PROJECTOR", "maybe", "true or false"),
        ("ACCRUAL_LOG_FORMAT", "xml", "one of"),
        ("ACCRUAL_PROMETHEUS_ADDRESS", "9464", "host:port"),
        ("ACCRUAL_DIGEST_ALGORITHM", "rsa", "one of"),
        ("ACCRUAL_SERVICE_DATABASE_URL", "postgresql://accrual_service@db/x", "set both"),
        ("ACCRUAL_PROJECTOR_DATABASE_URL", "postgresql://accrual_projector@db/x", "set both"),
        ("ACCRUAL_TLS_CERT_FILE", "/nonexistent.pem", "go together"),
        ("ACCRUAL_TLS_CLIENT_CA_FILE", "/ca.pem", "needs a server certificate"),
    ],
)
def test_a_bad_value_is_refused_with_its_variable_named(
    name: str, value: str, message: str
) -> None:
    with pytest.raises(ConfigError) as error:
        Settings.from_env({name: value})
    assert name in str(error.value)
    assert message in str(error.value)
