"""The credential store: bearer tokens and client-certificate principals.

A token reads ``acr_<token_id>_<secret>``. The token id (12 lowercase hex
characters) is public: it is what lists, logs and ``accrual tokens revoke``
show. The secret is ``secrets.token_urlsafe(32)`` and is never stored; the
database keeps its SHA-256 only.

Operators manage credentials with the synchronous functions here (the
``accrual tokens`` and ``accrual certs`` commands, over the owner's psycopg
connection). Each runs in ``conn.transaction()``: on an autocommit connection
that commits at once; otherwise it is a savepoint the caller commits.

The service looks callers up through :class:`CredentialStore`, which caches
answers, found or not, for a few seconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import re
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Hashable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Generic, TypeVar

import psycopg
from psycopg.rows import TupleRow

from ledger.store.event_store import Pool
from services.auth.principals import ROLES, Principal

# Names, not secrets (ruff's S105 reads any "token" as a password).
TOKEN_PREFIX: Final = "acr_"  # noqa: S105
MAX_NAME_LENGTH: Final = 128
ADMIN_TOKEN_FILE: Final = "admin-token"  # noqa: S105
APPROVER_TOKEN_FILE: Final = "approver-token"  # noqa: S105
LOCAL_ADMIN: Final = "local-admin"
LOCAL_APPROVER: Final = "local-approver"

# token_urlsafe(32) is 32 random bytes in unpadded URL-safe base64: 43 characters.
_TOKEN: Final = re.compile(r"acr_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_TOKEN_ID: Final = re.compile(r"[0-9a-f]{12}")
_TOKEN_LENGTH: Final = len(TOKEN_PREFIX) + 12 + 1 + 43

Connection = psycopg.Connection[TupleRow]


@dataclass(frozen=True)
class IssuedToken:
    """A new token. ``token`` is shown once and never stored; keep it out of logs."""

    token_id: str
    token: str = field(repr=False)


@dataclass(frozen=True)
class TokenInfo:
    """What may be shown about a token: never its secret or hash."""

    token_id: str
    principal: str
    roles: tuple[str, ...]
    customers: tuple[str, ...] | None  # None: every customer
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    note: str


@dataclass(frozen=True)
class CertificateInfo:
    """A client certificate's common name allowed in, with its roles."""

    principal: str
    roles: tuple[str, ...]
    customers: tuple[str, ...] | None  # None: every customer
    created_at: datetime
    note: str


@dataclass(frozen=True)
class Grant:
    """A validated principal name, roles and customers (None: every customer)."""

    principal: str
    roles: tuple[str, ...]
    customers: tuple[str, ...] | None


def validated_grant(
    principal: str, roles: Collection[str], customers: Collection[str] | None
) -> Grant:
    """Check a principal, its roles and customers; raise ``ValueError`` saying what is wrong."""
    if not principal or not principal.isprintable() or principal != principal.strip():
        raise ValueError(
            f"principal {principal!r} must be printable text without surrounding spaces"
        )
    if len(principal) > MAX_NAME_LENGTH:
        raise ValueError(f"principal is {len(principal)} characters; at most {MAX_NAME_LENGTH}")
    if isinstance(roles, str) or not roles:
        raise ValueError(f"give at least one role: {', '.join(sorted(ROLES))}")
    unknown = sorted(set(roles) - ROLES)
    if unknown:
        raise ValueError(
            f"unknown role {', '.join(map(repr, unknown))}; roles are {', '.join(sorted(ROLES))}"
        )
    if customers is not None:
        if isinstance(customers, str) or not customers:
            raise ValueError("give at least one customer id, or none at all for every customer")
        for customer in customers:
            if not customer or not customer.strip() or not customer.isprintable():
                raise ValueError(f"customer id {customer!r} must be non-empty printable text")
    return Grant(
        principal,
        tuple(sorted(set(roles))),
        None if customers is None else tuple(sorted(set(customers))),
    )


def _secret_digest(secret: str) -> bytes:
    # A plain, fast SHA-256 is the right hash here: the secret is 256 random bits,
    # not a password, so there is nothing to guess and no point in a slow KDF or salt.
    return hashlib.sha256(secret.encode("ascii")).digest()


def parse_token(token: str) -> tuple[str, str] | None:
    """``(token_id, secret)`` of a well-formed token, else None."""
    if len(token) != _TOKEN_LENGTH:
        return None
    match = _TOKEN.fullmatch(token)
    return (match[1], match[2]) if match else None


def _new_token() -> tuple[str, str, bytes]:
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return token_id, f"{TOKEN_PREFIX}{token_id}_{secret}", _secret_digest(secret)


def _store_token(
    conn: Connection,
    grant: Grant,
    token_id: str,
    digest: bytes,
    *,
    expires_at: datetime | None,
    note: str,
) -> None:
    with conn.transaction():
        conn.execute(
            "INSERT INTO access_tokens"
            " (token_id, principal, roles, customers, secret_sha256, expires_at, note)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (
                token_id,
                grant.principal,
                list(grant.roles),
                None if grant.customers is None else list(grant.customers),
                digest,
                expires_at,
                note,
            ),
        )


def issue_token(
    conn: Connection,
    principal: str,
    roles: Collection[str],
    *,
    customers: Collection[str] | None = None,
    expires_at: datetime | None = None,
    note: str = "",
) -> IssuedToken:
    """Issue a token for ``principal`` with ``roles`` (and only ``customers``, if given).

    Raises ``ValueError`` for a bad principal, role or customer, or an
    ``expires_at`` that is naive or not in the future.
    """
    grant = validated_grant(principal, roles, customers)
    if expires_at is not None:
        if expires_at.tzinfo is None:
            raise ValueError("expires_at must carry a time zone")
        if expires_at <= datetime.now(UTC):
            raise ValueError("expires_at must be in the future")
    token_id, token, digest = _new_token()
    _store_token(conn, grant, token_id, digest, expires_at=expires_at, note=note)
    return IssuedToken(token_id, token)


def check_token_id(token_id: str) -> str:
    """``token_id`` if it is one (12 lowercase hex characters), else ``ValueError``."""
    if not _TOKEN_ID.fullmatch(token_id):
        raise ValueError(
            f"{token_id[:20]!r} is not a token id (12 lowercase hex characters,"
            " as `accrual tokens list` shows)"
        )
    return token_id


def revoke_token(conn: Connection, token_id: str) -> bool:
    """Revoke a token; False if there is no such token in force."""
    check_token_id(token_id)
    with conn.transaction():
        cursor = conn.execute(
            "UPDATE access_tokens SET revoked_at = greatest(now(), created_at)"
            " WHERE token_id = %s AND revoked_at IS NULL",
            (token_id,),
        )
        return cursor.rowcount == 1


def list_tokens(conn: Connection) -> list[TokenInfo]:
    """Every token, revoked and expired ones too, oldest first; never a secret or hash."""
    rows = conn.execute(
        "SELECT token_id, principal, roles, customers, created_at, expires_at, revoked_at, note"
        " FROM access_tokens ORDER BY created_at, token_id"
    ).fetchall()
    return [
        TokenInfo(
            token_id=row[0],
            principal=row[1],
            roles=tuple(row[2]),
            customers=_tuple_or_none(row[3]),
            created_at=row[4],
            expires_at=row[5],
            revoked_at=row[6],
            note=row[7],
        )
        for row in rows
    ]


def allow_certificate(
    conn: Connection,
    principal: str,
    roles: Collection[str],
    *,
    customers: Collection[str] | None = None,
    note: str = "",
) -> None:
    """Let client certificates with common name ``principal`` in, with ``roles``.

    Allowing a name again replaces its roles, customers and note.
    """
    grant = validated_grant(principal, roles, customers)
    with conn.transaction():
        conn.execute(
            "INSERT INTO certificate_principals (principal, roles, customers, note)"
            " VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (principal) DO UPDATE SET roles = excluded.roles,"
            " customers = excluded.customers, note = excluded.note",
            (
                grant.principal,
                list(grant.roles),
                None if grant.customers is None else list(grant.customers),
                note,
            ),
        )


def remove_certificate(conn: Connection, principal: str) -> bool:
    """Stop letting ``principal``'s certificates in; False if it was not allowed."""
    with conn.transaction():
        cursor = conn.execute(
            "DELETE FROM certificate_principals WHERE principal = %s", (principal,)
        )
        return cursor.rowcount == 1


def list_certificates(conn: Connection) -> list[CertificateInfo]:
    """Every allowed certificate common name, by name."""
    rows = conn.execute(
        "SELECT principal, roles, customers, created_at, note"
        " FROM certificate_principals ORDER BY principal"
    ).fetchall()
    return [
        CertificateInfo(
            principal=row[0],
            roles=tuple(row[1]),
            customers=_tuple_or_none(row[2]),
            created_at=row[3],
            note=row[4],
        )
        for row in rows
    ]


def _tuple_or_none(values: Sequence[str] | None) -> tuple[str, ...] | None:
    return None if values is None else tuple(values)


# ---------------------------------------------------------------------------------------
# Local development tokens


def ensure_token_file(
    conn: Connection, path: Path, principal: str, roles: Collection[str], *, note: str = ""
) -> bool:
    """Issue a token into a new file at ``path``, readable by its owner only (0600).

    Returns False, and changes nothing, if ``path`` already exists. The file is
    created (exclusively) before the token is stored, and removed if storing
    fails, so there is never a stored token that no file holds.
    """
    grant = validated_grant(principal, roles, None)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    try:
        with os.fdopen(fd, "w", encoding="ascii") as out:
            token_id, token, digest = _new_token()
            out.write(token + "\n")
            out.flush()
            os.fsync(out.fileno())
        _store_token(conn, grant, token_id, digest, expires_at=None, note=note)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return True


def ensure_admin_token(conn: Connection, path: Path) -> bool:
    """The development default's local tokens: ``make run`` calls this with
    ``<data dir>/admin-token``.

    Writes an ``admin`` token for ``local-admin`` to ``path`` and, beside it in
    ``approver-token``, a ``pricing-approver`` token for ``local-approver`` (the
    second person a four-eyes pricing approval needs). Each file is created only
    if missing, mode 0600, and the parent folder must exist. Returns whether the
    admin token file was created now; an existing file is kept as it is.
    """
    created = ensure_token_file(
        conn, path, LOCAL_ADMIN, {"admin"}, note="local development administrator"
    )
    ensure_token_file(
        conn,
        path.with_name(APPROVER_TOKEN_FILE),
        LOCAL_APPROVER,
        {"pricing-approver"},
        note="local development pricing approver",
    )
    return created


# ---------------------------------------------------------------------------------------
# Lookups for the service


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _TtlCache(Generic[K, V]):
    """A bounded LRU map whose entries count only for ``ttl_s`` seconds."""

    def __init__(self, ttl_s: float, size: int) -> None:
        self._ttl_s = ttl_s
        self._size = size
        self._entries: OrderedDict[K, tuple[datetime, V]] = OrderedDict()

    def get(self, key: K, now: datetime) -> tuple[V] | None:
        """``(value,)`` if ``key`` was stored less than ``ttl_s`` ago, else None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        stored_at, value = entry
        if not 0 <= (now - stored_at).total_seconds() < self._ttl_s:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return (value,)

    def put(self, key: K, value: V, now: datetime) -> None:
        self._entries[key] = (now, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()


@dataclass(frozen=True)
class _TokenRecord:
    secret_sha256: bytes
    principal: Principal
    expires_at: datetime | None


def _principal(name: str, roles: Sequence[str], customers: Sequence[str] | None) -> Principal:
    return Principal(name, frozenset(roles), None if customers is None else frozenset(customers))


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _retrieve_exception(task: asyncio.Task[Any]) -> None:
    # Its waiters see the error; if they were all cancelled, nobody needs it.
    if not task.cancelled():
        task.exception()


LOOKUPS_IN_FLIGHT_MAX = 2


class CredentialStore:
    """Who a bearer token or a client certificate belongs to.

    Answers are cached for ``cache_s`` seconds, found or not (at most
    ``cache_size`` of each kind, least recently used dropped first): a busy
    caller costs one query per ``cache_s``, a flood of the same bad token
    likewise, and a revocation or removal takes effect within ``cache_s``.
    Concurrent lookups of the same key share one query. Malformed tokens never
    reach the database. ``clock`` (UTC now) drives the cache and expiry.
    """

    def __init__(
        self,
        pool: Pool,
        *,
        cache_s: float = 5.0,
        cache_size: int = 10_000,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._pool = pool
        self._clock = clock
        self._tokens: _TtlCache[str, _TokenRecord | None] = _TtlCache(cache_s, cache_size)
        self._certificates: _TtlCache[str, Principal | None] = _TtlCache(cache_s, cache_size)
        self._loading: dict[tuple[str, str], asyncio.Task[Any]] = {}
        # A flood of made-up but well-formed tokens misses the cache every time;
        # bounding the lookups in flight keeps it from taking the app's whole pool.
        self._lookups = asyncio.Semaphore(LOOKUPS_IN_FLIGHT_MAX)

    async def principal_for_token(self, token: str) -> Principal | None:
        """The token's principal; None if it is malformed, unknown, revoked or expired."""
        parsed = parse_token(token)
        if parsed is None:
            return None
        token_id, secret = parsed
        record = await self._cached(self._tokens, "token", token_id, self._load_token)
        if record is None:
            return None
        if not hmac.compare_digest(_secret_digest(secret), record.secret_sha256):
            return None
        if record.expires_at is not None and record.expires_at <= self._clock():
            return None
        return record.principal

    async def principal_for_certificate(self, common_name: str) -> Principal | None:
        """The principal allowed in with this client certificate common name, or None."""
        if not common_name or len(common_name) > MAX_NAME_LENGTH:
            return None
        return await self._cached(
            self._certificates, "certificate", common_name, self._load_certificate
        )

    def forget(self) -> None:
        """Drop every cached answer (say, after changing credentials in this process)."""
        self._tokens.clear()
        self._certificates.clear()

    async def _cached(
        self,
        cache: _TtlCache[str, V],
        kind: str,
        key: str,
        load: Callable[[str], Awaitable[V]],
    ) -> V:
        hit = cache.get(key, self._clock())
        if hit is not None:
            return hit[0]
        task = self._loading.get((kind, key))
        if task is None:
            task = asyncio.create_task(self._load(cache, kind, key, load))
            task.add_done_callback(_retrieve_exception)
            self._loading[(kind, key)] = task
        # Shielded: a cancelled caller must not cancel the query others wait for.
        result: V = await asyncio.shield(task)
        return result

    async def _load(
        self,
        cache: _TtlCache[str, V],
        kind: str,
        key: str,
        load: Callable[[str], Awaitable[V]],
    ) -> V:
        try:
            async with self._lookups:
                value = await load(key)
            cache.put(key, value, self._clock())
            return value
        finally:
            del self._loading[(kind, key)]

    async def _load_token(self, token_id: str) -> _TokenRecord | None:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT principal, roles, customers, secret_sha256, expires_at"
                " FROM access_tokens WHERE token_id = %s AND revoked_at IS NULL",
                (token_id,),
            )
            row = await cursor.fetchone()
        if row is None:
            return None
        return _TokenRecord(bytes(row[3]), _principal(row[0], row[1], row[2]), row[4])

    async def _load_certificate(self, common_name: str) -> Principal | None:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT principal, roles, customers FROM certificate_principals"
                " WHERE principal = %s",
                (common_name,),
            )
            row = await cursor.fetchone()
        return None if row is None else _principal(row[0], row[1], row[2])
