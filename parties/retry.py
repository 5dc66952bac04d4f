"""When and how a client tries a failed request again.

Two refusals mean "not now" rather than "no": RESOURCE_EXHAUSTED (a party's queue or
call limit is full, :mod:`veil.parties.admission`) and UNAVAILABLE while the parties
are reconnecting after a failure.  Nothing ran for such a request, so the client
sends it again -- with fresh shares and a fresh request id -- after an exponential,
jittered pause (so waiting clients do not return in lockstep), until its deadline.
:class:`Backoff` paces the parties' relinking the same way.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

import grpc

FIRST_PAUSE_SECONDS = 0.05
MAX_PAUSE_SECONDS = 2.0
_NOT_NOW = "reconnecting"
# Answers a party gives when another party refused or the client cancelled: they do not
# make a request unretryable on their own.
_CONSEQUENCES = (None, grpc.StatusCode.CANCELLED, grpc.StatusCode.FAILED_PRECONDITION)

T = TypeVar("T")


def retryable(answers: dict[int, tuple[grpc.StatusCode | None, str]]) -> bool:
    """Whether the parties' answers (code, text by rank) say "not now" and nothing else."""

    def not_now(code: grpc.StatusCode | None, text: str) -> bool:
        return code == grpc.StatusCode.RESOURCE_EXHAUSTED or (
            code == grpc.StatusCode.UNAVAILABLE and _NOT_NOW in text
        )

    said = [not_now(code, text) for code, text in answers.values()]
    others_ok = all(not_now(code, text) or code in _CONSEQUENCES for code, text in answers.values())
    return any(said) and others_ok


class Backoff:
    """Exponential pauses with jitter, from ``first`` doubling up to ``cap`` seconds."""

    def __init__(self, first: float = FIRST_PAUSE_SECONDS, cap: float = MAX_PAUSE_SECONDS):
        self.first = first
        self.cap = cap
        self._pause = first

    def next(self) -> float:
        """The next pause (randomised within its upper half, so waiters do not align)."""
        pause = self._pause * random.uniform(0.5, 1.0)
        self._pause = min(2 * self._pause, self.cap)
        return pause

    def reset(self) -> None:
        self._pause = self.first


def with_retries(
    attempt: Callable[[], T], deadline: float, should_retry: Callable[[Exception], bool]
) -> T:
    """``attempt()``, repeated after a backoff while ``should_retry`` and time is left."""
    backoff = Backoff()
    while True:
        try:
            return attempt()
        except Exception as exc:
            wait = backoff.next()
            if not should_retry(exc) or time.monotonic() + wait > deadline:
                raise
        time.sleep(wait)
