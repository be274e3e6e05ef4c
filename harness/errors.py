"""User-facing errors. The CLI prints these without a traceback and exits non-zero."""


class HarnessError(Exception):
    """Bad input or a state the user can fix: the message names what is wrong and what is valid."""


class UnknownNameError(HarnessError, KeyError):
    """A name that is not in a registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])
