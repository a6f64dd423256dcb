"""Application layer: command handlers and billing loaders over the event store.

Handlers validate with the pure core, append events, and translate store
outcomes into results. They hold no state of their own.
"""
