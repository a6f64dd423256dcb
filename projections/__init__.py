"""Read models derived from the ledger, the runner that keeps them current, and queries."""
