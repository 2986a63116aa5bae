"""Assembly: the sidecar built from its settings, its snapshot sources and telemetry, and the
`fader serve` lifecycle. The layer above the adapters (`sidecar.api`) and the parts they use."""
