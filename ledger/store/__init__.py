"""The event store: an append-only, hash-chained PostgreSQL table of events."""
