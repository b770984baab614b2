"""Exception groups from trio nurseries, given back as the error that was raised (pure)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


def single_exception(group: BaseExceptionGroup) -> BaseException:
    """The one error inside nested single-member groups, else ``group`` itself
    (so callers such as the CLI see a plain OSError or OlactorsError)."""
    inner: BaseException = group
    while isinstance(inner, BaseExceptionGroup) and len(inner.exceptions) == 1:
        inner = inner.exceptions[0]
    return inner


@contextmanager
def lone_errors_unwrapped() -> Iterator[None]:
    """Around a nursery whose own tasks never raise: a group holding a single
    error (the caller's own) is re-raised as that error."""
    try:
        yield
    except BaseExceptionGroup as group:
        raise single_exception(group) from None
