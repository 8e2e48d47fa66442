"""Errors the user can act on. The CLI prints them as one line and exits with their code."""


class PrunebenchError(Exception):
    """Bad input or an unusable environment: reported as one line, exit code 2."""

    exit_code = 2


class UnknownName(PrunebenchError):
    """A name (model, dataset, method, profile) that no registry knows."""


class DataUnavailable(PrunebenchError):
    """A data source that cannot be read here (hub unreachable, file unreadable, too little text)."""


class ModelUnavailable(PrunebenchError):
    """A model that cannot be loaded here (unknown id, offline hub, not a causal LM)."""


def first_line(err: BaseException, *, named: bool = True) -> str:
    """``Type: first line of the message``: how an error that was caught is named in one line. With ``named``
    false, the first line alone, where the surrounding words already say what failed (the type if it has none)."""
    text = str(err).strip().splitlines()
    if not text:
        return type(err).__name__
    return f"{type(err).__name__}: {text[0]}" if named else text[0]
