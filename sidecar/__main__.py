"""``python -m sidecar`` is the ``fader`` command."""

import sys

from sidecar.cli import main

sys.exit(main())
