"""User-facing errors. The CLI prints these without a traceback and exits non-zero."""


class HarnessError(Exception):
    """Bad input or a state the user can fix: the message names what is wrong and what is valid."""


class UnknownNameError(HarnessError, KeyError):
    """A name that is not in a registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class NonFiniteLossError(HarnessError):
    """A loss (or a value it depends on) became NaN or infinite during an update; the run stops FAILED
    and its last checkpoint resumes."""


MAX_INT = 10**15     # far above any real frame budget or count: a typo such as 1e18 is refused
MAX_THREADS = 1024


def check_int(value: object, what: str, low: int, high: int = MAX_INT) -> int:
    """``value`` if it is an integer in [low, high], else a HarnessError naming ``what`` (an option or field)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise HarnessError(f"{what} must be an integer, got {value!r}")
    if value < low:
        raise HarnessError(f"{what} must be >= {low}, got {value}")
    if value > high:
        raise HarnessError(f"{what} must be <= {high}, got {value}")
    return value


STORE_UNREACHABLE_EXIT = 75   # EX_TEMPFAIL: the tracking server is down; `sweep` retries, the user may wait and rerun


def unreachable_store(exc: BaseException) -> BaseException | None:
    """The connection error under ``exc`` (its cause/context chain) when MLflow raised it: the tracking server
    cannot be reached. None for any other error (a Ray cluster that does not answer is not MLflow's)."""
    from requests.exceptions import ConnectionError as RequestsConnectionError  # comes with mlflow
    chain: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and all(e is not c for c in chain):
        chain.append(e)
        e = e.__cause__ or e.__context__
    if not any(type(c).__module__.startswith("mlflow") for c in chain):
        return None
    return next((c for c in chain if isinstance(c, (ConnectionError, RequestsConnectionError))), None)
