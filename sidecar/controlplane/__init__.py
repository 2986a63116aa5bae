"""Reference control plane: serves snapshots to sidecars and shows what each one serves.

Small on purpose: it exists for demos, tests and as a readable model of the protocol.
"""
