"""Least-privilege database roles: the service appends and reads, the projector projects.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Migrations run as the owner. Two login roles (no password: operators set one)
# do the rest:
#
# - accrual_service appends through PostgresEventStore.append and reads. An
#   append locks the head row (SELECT ... FOR UPDATE: UPDATE on a column),
#   looks up idempotency keys and stream versions, COPYs into events (INSERT),
#   upserts streams (INSERT, UPDATE of version) and moves the head (UPDATE of
#   last_seq, last_hash); pg_notify, LISTEN and advisory locks need no grant.
#   Readiness reads alembic_version. It has no UPDATE, DELETE or TRUNCATE on
#   events (the trigger refuses them too; without the privilege the database
#   refuses them first) and cannot create tables.
# - accrual_projector reads the ledger and owns the projection tables: the
#   projection runner creates them at run time (CREATE on schema public) and
#   tables it creates are readable by the service (default privileges).
#
# Roles belong to the cluster, and several databases on one cluster may migrate
# at once: a concurrent creator's role is as good as ours.
UPGRADE = r"""
DO $$
DECLARE
    role_name text;
BEGIN
    FOREACH role_name IN ARRAY ARRAY['accrual_service', 'accrual_projector'] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = role_name) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I LOGIN', role_name);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- created meanwhile by another database's migration
            END;
        END IF;
    END LOOP;
END $$;

DO $$
BEGIN
    EXECUTE format(
        'GRANT CONNECT ON DATABASE %I TO accrual_service, accrual_projector', current_database()
    );
END $$;
GRANT USAGE ON SCHEMA public TO accrual_service, accrual_projector;

GRANT SELECT, INSERT ON events TO accrual_service;
GRANT SELECT, INSERT, UPDATE (version) ON streams TO accrual_service;
GRANT SELECT, UPDATE (last_seq, last_hash) ON ledger_heads TO accrual_service;
GRANT SELECT ON alembic_version TO accrual_service;

GRANT SELECT ON events, ledger_heads TO accrual_projector;
GRANT CREATE ON SCHEMA public TO accrual_projector;

-- The owner acts for the projector below (default privileges, ownership), so it
-- must be able to SET ROLE to it: a superuser can, and so can the role's creator
-- once it grants itself the membership.
DO $$
BEGIN
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
        AND NOT pg_has_role(
            current_user,
            'accrual_projector',
            CASE WHEN current_setting('server_version_num')::int >= 160000
                THEN 'SET' ELSE 'MEMBER' END
        )
    THEN
        GRANT accrual_projector TO CURRENT_USER;
    END IF;
END $$;

ALTER DEFAULT PRIVILEGES FOR ROLE accrual_projector IN SCHEMA public
    GRANT SELECT ON TABLES TO accrual_service;

-- Projection tables made before this revision belong to whoever ran the
-- service; the projector takes them over (it creates their indexes and drops
-- retired versions, which only an owner may).
DO $$
DECLARE
    relation regclass;
BEGIN
    FOR relation IN
        SELECT c.oid::regclass
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
            AND c.relowner <> 'accrual_projector'::regrole
            AND (c.relname IN ('projection_checkpoints', 'projection_registry')
                OR c.relname ~ '^(usage_(rollups|unbilled|rollup_metrics|distinct)_v\d+)$'
                OR c.relname ~ '^audit_entries_v\d+$')
    LOOP
        EXECUTE format('GRANT SELECT ON %s TO accrual_service', relation);
        EXECUTE format('ALTER TABLE %s OWNER TO accrual_projector', relation);
    END LOOP;
END $$;
"""


def upgrade() -> None:
    op.execute(UPGRADE)
