"""The one error of the assembly layer: the sidecar cannot start as configured."""


class StartupError(RuntimeError):
    """The sidecar cannot start as configured (a listener, a source, a TLS file); the message
    says why, and `fader serve` exits 1 with it."""
