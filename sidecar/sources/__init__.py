"""Where snapshots come from, each behind one protocol (`base.Source`): a watched file, the
control-plane stream, direct push on the admin listener, and the demo or the cache at start."""
