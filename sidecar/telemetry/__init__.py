"""Telemetry: metrics now; impressions, events and their upload in later issues."""
