"""The ledger: the pure billing core (``ledger.core``) and the event store (``ledger.store``)."""
