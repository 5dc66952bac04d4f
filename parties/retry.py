"""When and how a client tries a failed request again.

Two refusals mean "not now" rather than "no": RESOURCE_EXHAUSTED (a party's queue or
call limit is full, :mod:`veil.parties.admission`) and UNAVAILABLE while the parties
are reconnecting after a failure.  Nothing ran for such a request, so the client
sends it again -- with fresh shares and a fresh request id -- after an exponential,
jittered pause (so waiting clients do not return in lockstep), until its deadline.
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


def with_retries(
    attempt: Callable[[], T], deadline: float, should_retry: Callable[[Exception], bool]
) -> T:
    """``attempt()``, repeated after a backoff while ``should_retry`` and time is left."""
    pause = FIRST_PAUSE_SECONDS
    while True:
        try:
            return attempt()
        except Exception as exc:
            wait = pause * random.uniform(0.5, 1.0)
            if not should_retry(exc) or time.monotonic() + wait > deadline:
                raise
        time.sleep(wait)
        pause = min(2 * pause, MAX_PAUSE_SECONDS)
