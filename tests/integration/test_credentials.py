"""The credential store on real PostgreSQL: tokens stored hashed, lookups cached for a
short TTL (found or not), certificate principals, the local development tokens, and
the ``accrual tokens`` / ``accrual certs`` commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from services import cli
from services.auth import credentials
from services.auth.credentials import CredentialStore
from services.auth.principals import Principal

T = TypeVar("T")


class FakeClock:
    """UTC now, moved by hand."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class CountingPool(AsyncConnectionPool):  # type: ignore[type-arg]
    """A pool that counts the connections it hands out: one per store query."""

    checkouts = 0

    @contextlib.asynccontextmanager
    async def connection(self, timeout: float | None = None) -> AsyncIterator[Any]:
        self.checkouts += 1
        async with super().connection(timeout) as conn:
            yield conn


def with_store(
    url: str,
    body: Callable[[CredentialStore, CountingPool, FakeClock], Awaitable[T]],
    **options: Any,
) -> T:
    async def main() -> T:
        clock = FakeClock()
        async with CountingPool(url, min_size=1, max_size=4, open=False) as pool:
            store = CredentialStore(pool, clock=clock, **options)
            return await body(store, pool, clock)

    return asyncio.run(main())


def connect(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True)


def as_role(url: str, role: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(url)
    params.pop("password", None)
    params["user"] = role
    return psycopg.conninfo.make_conninfo("", **params)


# ---------------------------------------------------------------------------------------
# Tokens


def test_issued_token_gives_its_principal_roles_and_customers(database_url: str) -> None:
    with connect(database_url) as conn:
        issued = credentials.issue_token(
            conn, "gateway-eu", ["ingest", "reader"], customers=["acme", "globex"], note="eu"
        )
        everyone = credentials.issue_token(conn, "ops", ["admin"])
    assert issued.token.startswith(f"acr_{issued.token_id}_")
    assert len(issued.token_id) == 12 and int(issued.token_id, 16) >= 0
    assert issued.token not in repr(issued)

    async def body(store: CredentialStore, *_: Any) -> list[Principal | None]:
        return [
            await store.principal_for_token(issued.token),
            await store.principal_for_token(everyone.token),
        ]

    scoped, admin = with_store(database_url, body)
    assert scoped == Principal(
        "gateway-eu", frozenset({"ingest", "reader"}), frozenset({"acme", "globex"})
    )
    assert scoped.may_act_for("acme") and not scoped.may_act_for("initech")
    assert admin == Principal("ops", frozenset({"admin"}), None)


def test_the_secret_is_never_stored_only_its_sha256(database_url: str) -> None:
    with connect(database_url) as conn:
        issued = credentials.issue_token(conn, "ops", ["admin"])
        row = conn.execute("SELECT * FROM access_tokens").fetchone()
        listed = credentials.list_tokens(conn)
    secret = issued.token.split("_", 2)[2]
    assert row is not None
    stored = " ".join(
        bytes(value).hex() if isinstance(value, bytes) else str(value) for value in row
    )
    assert secret not in stored and issued.token not in stored
    assert hashlib.sha256(secret.encode()).digest().hex() in stored
    assert [token.token_id for token in listed] == [issued.token_id]
    assert secret not in repr(listed) and "sha256" not in repr(listed)


def test_bad_tokens_find_nobody(database_url: str) -> None:
    with connect(database_url) as conn:
        issued = credentials.issue_token(conn, "ops", ["admin"])
    token_id, secret = credentials.parse_token(issued.token) or ("", "")
    wrong_secret = f"acr_{token_id}_{'A' * 43}"
    unknown_id = f"acr_{'0' * 12}_{secret}"
    malformed = [
        "",
        "Bearer " + issued.token,
        issued.token + "x",
        issued.token[:-1],
        issued.token.upper(),
        issued.token.replace("acr_", "acx_"),
        f"acr_{token_id.upper()}_{secret}",
        "acr_" + "a" * 100_000,
    ]

    async def body(
        store: CredentialStore, pool: CountingPool, _: FakeClock
    ) -> tuple[list[Principal | None], int, list[Principal | None]]:
        bad = [await store.principal_for_token(token) for token in malformed]
        queries = pool.checkouts
        return (
            bad,
            queries,
            [
                await store.principal_for_token(wrong_secret),
                await store.principal_for_token(unknown_id),
                await store.principal_for_token(issued.token),
            ],
        )

    bad, malformed_queries, rest = with_store(database_url, body)
    assert bad == [None] * len(malformed)
    assert malformed_queries == 0, "malformed tokens must not reach the database"
    assert rest[:2] == [None, None]
    assert rest[2] is not None and rest[2].name == "ops"


def test_lookups_are_cached_and_revocation_takes_effect_after_the_ttl(
    database_url: str,
) -> None:
    with connect(database_url) as conn:
        issued = credentials.issue_token(conn, "gateway", ["ingest"])

    async def body(store: CredentialStore, pool: CountingPool, clock: FakeClock) -> None:
        assert await store.principal_for_token(issued.token) is not None
        assert pool.checkouts == 1
        for _ in range(50):
            assert await store.principal_for_token(issued.token) is not None
        assert pool.checkouts == 1, "cached within the TTL: no query per call"

        with connect(database_url) as conn:
            assert credentials.revoke_token(conn, issued.token_id)
            assert not credentials.revoke_token(conn, issued.token_id)
        clock.advance(4.9)
        assert await store.principal_for_token(issued.token) is not None  # still cached
        assert pool.checkouts == 1
        clock.advance(0.2)
        assert await store.principal_for_token(issued.token) is None  # re-read: revoked
        assert pool.checkouts == 2

    with_store(database_url, body, cache_s=5.0)


def test_misses_are_cached_too_so_bad_tokens_cannot_flood_the_database(
    database_url: str,
) -> None:
    with connect(database_url) as conn:
        issued = credentials.issue_token(conn, "gateway", ["ingest"])
    secret = issued.token.split("_", 2)[2]
    unknown = f"acr_{'f' * 12}_{secret}"
    wrong_secret = f"acr_{issued.token_id}_{'B' * 43}"

    async def body(store: CredentialStore, pool: CountingPool, clock: FakeClock) -> None:
        for _ in range(100):
            assert await store.principal_for_token(unknown) is None
        assert pool.checkouts == 1
        for _ in range(100):
            assert await store.principal_for_token(wrong_secret) is None
        assert pool.checkouts == 2  # the id's record is cached; the secret never matches
        assert await store.principal_for_token(issued.token) is not None
        assert pool.checkouts == 2
        # Concurrent lookups of one key share a single query.
        clock.advance(10)
        results = await asyncio.gather(*(store.principal_for_token(unknown) for _ in range(20)))
        assert results == [None] * 20
        assert pool.checkouts == 3

    with_store(database_url, body)


def test_the_cache_is_bounded(database_url: str) -> None:
    ids = [f"acr_{n:012x}_{'C' * 43}" for n in range(5)]

    async def body(store: CredentialStore, pool: CountingPool, _: FakeClock) -> None:
        for token in ids:
            assert await store.principal_for_token(token) is None
        assert pool.checkouts == 5
        assert await store.principal_for_token(ids[-1]) is None  # most recent: kept
        assert pool.checkouts == 5
        assert await store.principal_for_token(ids[0]) is None  # oldest: evicted
        assert pool.checkouts == 6

    with_store(database_url, body, cache_size=3)


def test_an_expired_token_finds_nobody(database_url: str) -> None:
    with connect(database_url) as conn:
        issued = credentials.issue_token(
            conn, "temp", ["reader"], expires_at=datetime.now(UTC) + timedelta(hours=1)
        )
        with pytest.raises(ValueError, match="future"):
            credentials.issue_token(
                conn, "temp", ["reader"], expires_at=datetime.now(UTC) - timedelta(seconds=1)
            )

    async def body(store: CredentialStore, pool: CountingPool, clock: FakeClock) -> None:
        assert await store.principal_for_token(issued.token) is not None
        clock.advance(2)
        assert await store.principal_for_token(issued.token) is not None
        clock.advance(3600)
        assert await store.principal_for_token(issued.token) is None

    with_store(database_url, body)
    with connect(database_url) as conn:
        [info] = credentials.list_tokens(conn)
    assert info.expires_at is not None and info.revoked_at is None


@pytest.mark.parametrize(
    ("principal", "roles", "customers", "message"),
    [
        ("", ["admin"], None, "principal"),
        (" ops", ["admin"], None, "principal"),
        ("ops\n", ["admin"], None, "principal"),
        ("x" * 129, ["admin"], None, "at most 128"),
        ("ops", [], None, "at least one role"),
        ("ops", ["root"], None, "unknown role 'root'"),
        ("ops", "admin", None, "at least one role"),
        ("ops", ["ingest"], [], "at least one customer"),
        ("ops", ["ingest"], [""], "customer id"),
    ],
)
def test_bad_grants_are_refused_with_a_reason(
    database_url: str, principal: str, roles: Any, customers: Any, message: str
) -> None:
    with connect(database_url) as conn:
        with pytest.raises(ValueError, match=message):
            credentials.issue_token(conn, principal, roles, customers=customers)
        with pytest.raises(ValueError, match=message):
            credentials.allow_certificate(conn, principal, roles, customers=customers)
        assert credentials.list_tokens(conn) == []
        assert credentials.list_certificates(conn) == []
        with pytest.raises(ValueError, match="token id"):
            credentials.revoke_token(conn, "acr_0123")


def test_the_service_role_reads_credentials_and_cannot_change_them(database_url: str) -> None:
    with connect(database_url) as conn:
        issued = credentials.issue_token(conn, "gateway", ["ingest"])
        credentials.allow_certificate(conn, "gw.example.com", ["ingest"])
    service_url = as_role(database_url, "accrual_service")

    async def body(store: CredentialStore, *_: Any) -> tuple[Any, Any]:
        return (
            await store.principal_for_token(issued.token),
            await store.principal_for_certificate("gw.example.com"),
        )

    token_principal, cert_principal = with_store(service_url, body)
    assert token_principal.name == "gateway" and cert_principal.name == "gw.example.com"
    with connect(service_url) as conn:
        for statement in (
            "UPDATE access_tokens SET revoked_at = NULL",
            "DELETE FROM certificate_principals",
            "INSERT INTO access_tokens (token_id, principal, roles, secret_sha256)"
            " VALUES ('000000000000', 'me', '{admin}', decode(repeat('00', 32), 'hex'))",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)


# ---------------------------------------------------------------------------------------
# Certificates


def test_certificate_allow_lookup_replace_and_remove(database_url: str) -> None:
    with connect(database_url) as conn:
        credentials.allow_certificate(conn, "gw.acme.example", ["ingest"], customers=["acme"])
        credentials.allow_certificate(conn, "auditor.example", ["auditor"], note="yearly")

    async def body(store: CredentialStore, pool: CountingPool, clock: FakeClock) -> None:
        assert await store.principal_for_certificate("gw.acme.example") == Principal(
            "gw.acme.example", frozenset({"ingest"}), frozenset({"acme"})
        )
        assert await store.principal_for_certificate("unknown.example") is None
        assert await store.principal_for_certificate("unknown.example") is None
        assert await store.principal_for_certificate("") is None
        assert await store.principal_for_certificate("auditor.example") is not None
        assert pool.checkouts == 3
        with connect(database_url) as conn:
            credentials.allow_certificate(conn, "gw.acme.example", ["ingest", "reader"])
            assert credentials.remove_certificate(conn, "auditor.example")
            assert not credentials.remove_certificate(conn, "auditor.example")
        assert await store.principal_for_certificate("auditor.example") is not None  # cached
        clock.advance(5)
        assert await store.principal_for_certificate("auditor.example") is None
        assert await store.principal_for_certificate("gw.acme.example") == Principal(
            "gw.acme.example", frozenset({"ingest", "reader"}), None
        )

    with_store(database_url, body)
    with connect(database_url) as conn:
        [cert] = credentials.list_certificates(conn)
    assert (cert.principal, cert.roles, cert.customers) == (
        "gw.acme.example",
        ("ingest", "reader"),
        None,
    )


# ---------------------------------------------------------------------------------------
# The local development tokens


def test_local_tokens_are_created_once_readable_by_their_owner_only(
    database_url: str, tmp_path: Path
) -> None:
    admin_file = tmp_path / credentials.ADMIN_TOKEN_FILE
    approver_file = tmp_path / credentials.APPROVER_TOKEN_FILE
    old_umask = os.umask(0)  # the most permissive umask must not widen the files
    try:
        with connect(database_url) as conn:
            assert credentials.ensure_admin_token(conn, admin_file)
    finally:
        os.umask(old_umask)
    admin_token = admin_file.read_text().strip()
    approver_token = approver_file.read_text().strip()
    for path in (admin_file, approver_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600

    with connect(database_url) as conn:
        assert not credentials.ensure_admin_token(conn, admin_file)
        assert len(credentials.list_tokens(conn)) == 2
    assert admin_file.read_text().strip() == admin_token

    async def body(store: CredentialStore, *_: Any) -> list[Principal | None]:
        return [
            await store.principal_for_token(admin_token),
            await store.principal_for_token(approver_token),
        ]

    assert with_store(database_url, body) == [
        Principal("local-admin", frozenset({"admin"})),
        Principal("local-approver", frozenset({"pricing-approver"})),
    ]


def test_a_token_file_is_removed_if_the_token_cannot_be_stored(
    database_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "admin-token"
    conn = connect(database_url)
    conn.close()
    with pytest.raises(psycopg.OperationalError):
        credentials.ensure_token_file(conn, path, "local-admin", {"admin"})
    assert not path.exists()


# ---------------------------------------------------------------------------------------
# The commands


def accrual(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_tokens_create_list_revoke(accrual_env: str) -> None:
    code, out, err = accrual(
        "tokens", "create", "--principal", "gateway-eu", "--role", "ingest",
        "--customer", "acme", "--customer", "globex", "--expires-days", "30", "--note", "eu gw",
    )  # fmt: skip
    assert code == 0, err
    token = out.strip()
    token_id, secret = credentials.parse_token(token) or ("", "")
    assert token_id and "not be shown again" in err and secret not in err

    code, out, err = accrual("tokens", "list")
    assert code == 0, err
    header, row = out.splitlines()
    assert header.split()[:7] == [
        "id", "principal", "roles", "customers", "created", "expires", "revoked",
    ]  # fmt: skip
    assert row.split()[:4] == [token_id, "gateway-eu", "ingest", "acme,globex"]
    assert secret not in out and token not in out

    assert accrual("tokens", "revoke", token_id)[0] == 0
    code, out, _ = accrual("tokens", "list")
    assert out.splitlines()[1].count("Z") == 3  # created, expires and revoked times
    code, _, err = accrual("tokens", "revoke", token_id)
    assert code == 1 and "no token" in err

    async def body(store: CredentialStore, *_: Any) -> Principal | None:
        return await store.principal_for_token(token)

    assert with_store(accrual_env, body) is None


@pytest.mark.parametrize(
    "argv",
    [
        ("tokens", "create", "--principal", "ops", "--role", "root"),
        ("tokens", "create", "--principal", "", "--role", "admin"),
        ("tokens", "create", "--principal", "ops", "--role", "admin", "--expires-days", "0"),
        ("tokens", "revoke", "not-an-id"),
        ("certs", "allow", "gw.example", "--role", "superuser"),
    ],
)
def test_bad_input_exits_2_with_a_message(accrual_env: str, argv: tuple[str, ...]) -> None:
    code, out, err = accrual(*argv)
    assert code == 2 and out == ""
    assert err.startswith("accrual: ") and len(err.splitlines()) == 1
    with connect(accrual_env) as conn:
        assert credentials.list_tokens(conn) == []


def test_certs_allow_list_remove(accrual_env: str) -> None:
    code, _, err = accrual(
        "certs", "allow", "gw.acme.example", "--role", "ingest", "--customer", "acme"
    )
    assert code == 0, err
    code, out, _ = accrual("certs", "list")
    assert out.splitlines()[1].split()[:3] == ["gw.acme.example", "ingest", "acme"]
    assert accrual("certs", "remove", "gw.acme.example")[0] == 0
    code, _, err = accrual("certs", "remove", "gw.acme.example")
    assert code == 1 and "was not allowed" in err
    assert accrual("certs", "list")[1].splitlines()[1:] == []
