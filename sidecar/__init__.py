"""Fader's sidecar, control plane and command line.

gRPC's C core writes its own log lines straight to stderr, in its own format, before the
clean message Fader logs for the same failure (a port in use prints an ``E… add_port.cc``
line first). Every failure it reports is also raised to Fader, which says it once in its
own words, so the core is kept quiet unless the operator asks: ``GRPC_VERBOSITY=ERROR``
(or ``DEBUG``) in the environment still wins. Set here, before anything imports grpc.
"""

import os

os.environ.setdefault("GRPC_VERBOSITY", "NONE")
