"""Where snapshots come from: a watched file, the control-plane stream, the cache."""
