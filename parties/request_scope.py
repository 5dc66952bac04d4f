"""What a model request opens, closed when the request ends, whether it succeeds or fails.

A streamed model (:mod:`veil.parties.stored_models`) starts a loader thread and holds weight
pairs for the request that uses it; they must be released when that request returns or
raises, not when the next one comes.  A program wrapped by :func:`scoped` runs inside an
:class:`contextlib.ExitStack`; :func:`hold` enters a context manager into the stack of the
request running on this thread (each party runs its requests on its own executor thread).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, TypeVar

T = TypeVar("T")
_CURRENT: ContextVar[contextlib.ExitStack | None] = ContextVar("veil_request_scope", default=None)


def scoped(program: Callable[..., T]) -> Callable[..., T]:
    """``program`` with a fresh request scope around each call."""

    @functools.wraps(program)
    def run(*args: Any, **kwargs: Any) -> T:
        with contextlib.ExitStack() as stack:
            token = _CURRENT.set(stack)
            try:
                return program(*args, **kwargs)
            finally:
                _CURRENT.reset(token)

    return run


def hold(manager: contextlib.AbstractContextManager[T]) -> T:
    """Enter ``manager`` for the rest of the current request (RuntimeError outside one)."""
    stack = _CURRENT.get()
    if stack is None:
        raise RuntimeError("hold() is only valid inside a program wrapped by scoped()")
    return stack.enter_context(manager)
