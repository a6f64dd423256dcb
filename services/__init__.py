"""The service shell: gRPC servicers, interceptors, bootstrap and the ``accrual`` CLI."""
