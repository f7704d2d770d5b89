"""The one exception family a person sees: what was wrong, and what to do about it."""


class PicochatError(Exception):
    """A user-facing error. The CLI prints its message (no traceback) and exits with status 2."""
