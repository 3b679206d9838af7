"""Error types shared across stages."""


class Rejected(Exception):
    """An input a stage refuses; it becomes one quarantine row with this reason."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    def __reduce__(self):  # picklable for worker processes (Exception pickles only args)
        return (type(self), (self.reason, self.detail))


class ConfigError(ValueError):
    """A configuration or command-line value that cannot work; the message says which."""
