"""The sidecar's network surface: gRPC servicers, the fast lane, health, management HTTP."""
