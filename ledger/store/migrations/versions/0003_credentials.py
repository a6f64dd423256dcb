"""Credentials: bearer tokens (stored hashed) and client-certificate principals.

Revision ID: 0003
Revises: 0002

These are mutable operator tables, not ledger events: tokens are issued,
revoked and listed with ``accrual tokens``, certificate principals with
``accrual certs``. The service only reads them.
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE access_tokens (
    token_id      text        PRIMARY KEY CHECK (token_id ~ '^[0-9a-f]{12}$'),
    principal     text        NOT NULL
                  CHECK (length(principal) BETWEEN 1 AND 128 AND principal = btrim(principal)),
    roles         text[]      NOT NULL
                  CHECK (cardinality(roles) > 0 AND array_position(roles, NULL) IS NULL),
    customers     text[]      -- NULL: every customer
                  CHECK (customers IS NULL OR (cardinality(customers) > 0
                                               AND array_position(customers, NULL) IS NULL)),
    secret_sha256 bytea       NOT NULL CHECK (length(secret_sha256) = 32),  -- never the secret
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz,  -- NULL: never
    revoked_at    timestamptz,  -- NULL: in force
    note          text        NOT NULL DEFAULT '',
    CHECK (expires_at IS NULL OR expires_at > created_at),
    CHECK (revoked_at IS NULL OR revoked_at >= created_at)
);

CREATE TABLE certificate_principals (
    principal  text        PRIMARY KEY  -- the client certificate's common name
               CHECK (length(principal) BETWEEN 1 AND 128 AND principal = btrim(principal)),
    roles      text[]      NOT NULL
               CHECK (cardinality(roles) > 0 AND array_position(roles, NULL) IS NULL),
    customers  text[]      -- NULL: every customer
               CHECK (customers IS NULL OR (cardinality(customers) > 0
                                            AND array_position(customers, NULL) IS NULL)),
    created_at timestamptz NOT NULL DEFAULT now(),
    note       text        NOT NULL DEFAULT ''
);

-- The service authenticates callers; only the owner (the CLI) changes credentials.
GRANT SELECT ON access_tokens, certificate_principals TO accrual_service;
"""

DOWNGRADE = """
DROP TABLE certificate_principals;
DROP TABLE access_tokens;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
