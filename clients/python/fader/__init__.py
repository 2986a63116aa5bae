"""Python client of the Fader sidecar: `fader.Client` (sync) and `fader.aio.Client` (asyncio).

from fader import Client
c = Client("127.0.0.1:8013")            # or "unix:///run/fader/fader.sock", "fastlane:///…"
c.get_treatment("user-1", "new-checkout", {"plan": "pro"})   # -> "on"
"""

from fader.client import Client
from fader.result import Result

__all__ = ["Client", "Result"]
