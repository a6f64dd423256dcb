"""The append-only, hash-chained event store.

Revision ID: 0001
Revises:
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Appends lock the partition's head row first (SELECT ... FOR UPDATE), so seq is
# assigned in commit order and has no gaps: a reader that has seen seq = n has
# seen every event below n. A bigserial would hand out numbers at insert time
# and commit them out of order, and readers tailing by position would skip some.
UPGRADE = r"""
CREATE TABLE ledger_heads (
    partition integer PRIMARY KEY,
    last_seq  bigint  NOT NULL,
    last_hash bytea   NOT NULL
);
INSERT INTO ledger_heads (partition, last_seq, last_hash)
    VALUES (0, 0, decode(repeat('00', 32), 'hex'));

CREATE TABLE events (
    seq             bigint      NOT NULL,
    partition       integer     NOT NULL,
    stream_id       text        NOT NULL,
    stream_version  bigint      NOT NULL CHECK (stream_version > 0),
    event_type      text        NOT NULL,
    schema_version  integer     NOT NULL CHECK (schema_version > 0),
    payload         bytea       NOT NULL,   -- canonical JSON, stored and hashed verbatim
    metadata        bytea       NOT NULL,   -- canonical JSON: actor, reason, request id, trace id
    occurred_at     timestamptz NOT NULL,   -- business time
    recorded_at     timestamptz NOT NULL,   -- ingest time
    idempotency_key text,
    request_hash    text,
    prev_hash       bytea       NOT NULL,
    hash            bytea       NOT NULL,
    PRIMARY KEY (partition, seq),
    UNIQUE (stream_id, stream_version)
);
CREATE UNIQUE INDEX events_idempotency_key ON events (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- Replay and invoice edges read one customer's usage by business time.
CREATE INDEX events_stream_time ON events (stream_id, occurred_at);
-- Catalog and contract events are few; usage is most rows and stays out of this index.
CREATE INDEX events_non_usage_type ON events (event_type, seq)
    WHERE event_type <> 'UsageRecorded';

CREATE TABLE streams (
    stream_id text   PRIMARY KEY,
    version   bigint NOT NULL
);

CREATE FUNCTION events_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the ledger is append-only: % on events is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER events_append_only_rows BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_refuse_change();
CREATE TRIGGER events_append_only_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_refuse_change();
REVOKE UPDATE, DELETE, TRUNCATE ON events FROM PUBLIC;
"""


def upgrade() -> None:
    op.execute(UPGRADE)
