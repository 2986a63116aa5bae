"""Snapshots: decode, validate, compile, and swap atomically."""
