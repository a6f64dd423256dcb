"""Who is calling and what they may do: credentials, roles and the per-RPC policy."""
