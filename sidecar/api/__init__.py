"""The sidecar's network surface: gRPC servicers, server assembly, management HTTP."""
