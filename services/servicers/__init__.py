"""Thin gRPC servicers: proto -> command -> handler -> proto. No SQL, no rules."""
