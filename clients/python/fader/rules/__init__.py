"""Split-exact rule engine: pure, synchronous, no I/O.

The engine is compiled once per snapshot (``compile``) and evaluated per request
(``evaluate``); nothing here imports from the API, snapshot sources or telemetry.
"""
