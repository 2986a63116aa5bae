"""Telemetry: Prometheus metrics, impressions in Split's modes, track events, and their
batched upload with a disk spool (`pipeline`)."""
