"""The pure core: events, money, periods, metering, rating and invoices.

Nothing here reads a clock, touches the network or the database, or logs: time,
ids and data are passed in, so every function is deterministic and replayable.
"""
