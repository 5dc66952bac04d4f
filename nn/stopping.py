"""Streaming each generated token out of the parties, and stopping early when the client asks.

Each party hands its share of a step's token to the client as soon as the step ends
(``publish``); only the client, holding all three, learns the token.  Stopping early is the
client's choice: the parties cannot see an end-of-sequence token, so the client tells them
(it stops listening) and they end together at the next step boundary.  That tells every
party how long the output was, which is why a request must opt in to it (``stoppable``):
without it the parties always run ``max_new_tokens`` steps and exchange nothing extra.
"""

from __future__ import annotations

import queue
from collections import deque
from collections.abc import Callable, Iterator

import torch

from veil.mpc.arith import ArithShare
from veil.mpc.fixedpoint import FixedPoint
from veil.mpc.party import Party
from veil.mpc.sharing import reconstruct

_PEERS = {0: (1, 2), 1: (0, 2), 2: (0, 1)}


def any_party(party: Party, flag: bool) -> bool:
    """True at every party if ``flag`` is True at any of them.

    The client's stop request reaches the three parties at slightly different moments;
    taking the OR of what each saw makes all three stop at the same step, so their
    protocol messages stay in step.  Cost: one round, one int64 to each peer per party.
    """
    mine = torch.tensor([int(flag)], dtype=torch.int64)
    with party.comm.scope("stop"):
        for peer in _PEERS[party.rank]:
            party.comm.send(peer, mine)
        seen = [party.comm.recv(peer) for peer in _PEERS[party.rank]]
    return bool(flag or any(int(other.sum()) for other in seen))


def step_hook(
    party: Party,
    publish: Callable[[ArithShare], None] | None,
    stop_requested: Callable[[], bool] | None,
) -> Callable[[ArithShare], bool]:
    """The ``on_step`` of :func:`veil.nn.generate.generate` at one party.

    ``publish`` hands the client this party's share of the step's token; with
    ``stop_requested`` (the request opted in to early stopping) the parties agree after
    every step whether the client asked any of them to stop.
    """

    def on_step(index: ArithShare) -> bool:
        if publish is not None:
            publish(index)
        return stop_requested is not None and any_party(party, stop_requested())

    return on_step


class StepArrivals:
    """The client's side: step shares from the three parties, in whatever order they come.

    Each party's shares arrive in step order but the parties interleave freely (three
    threads, three network streams); a step is reconstructed once all three hold it.
    """

    def __init__(self, fxp: FixedPoint) -> None:
        self.fxp = fxp
        self._queue: queue.Queue[tuple[int, torch.Tensor | None, BaseException | None]] = (
            queue.Queue()
        )

    def put(self, rank: int, pair: torch.Tensor) -> None:
        self._queue.put((rank, pair, None))

    def end(self, rank: int, error: BaseException | None = None) -> None:
        """Party ``rank`` has sent its last step (or failed with ``error``)."""
        self._queue.put((rank, None, error))

    def steps(self, timeout: float) -> Iterator[torch.Tensor]:
        """Each step's ids (batch,), in order, as soon as all three shares of it are in.

        Raises what a party's stream failed with, or TimeoutError naming the parties that
        sent nothing for ``timeout`` seconds.
        """
        pending: list[deque[torch.Tensor]] = [deque() for _ in _PEERS]
        ended: set[int] = set()
        while True:
            while all(pending):
                pairs = [held.popleft() for held in pending]
                yield reconstruct(pairs, 0, self.fxp).to(torch.int64)
            if ended and any(rank in ended and not pending[rank] for rank in _PEERS):
                return
            try:
                rank, pair, error = self._queue.get(timeout=timeout)
            except queue.Empty:
                silent = [rank for rank in _PEERS if not pending[rank] and rank not in ended]
                raise TimeoutError(
                    f"no token share from part{'ies' if len(silent) > 1 else 'y'} "
                    f"{', '.join(map(str, silent))} within {timeout:g} s"
                ) from None
            if error is not None:
                raise error
            if pair is None:
                ended.add(rank)
            else:
                pending[rank].append(pair)


class EosWatch:
    """Whether every row of a batch has produced the end-of-sequence token yet."""

    def __init__(self, eos_token_id: int) -> None:
        self.eos_token_id = eos_token_id
        self._seen: torch.Tensor | None = None

    def ended(self, step: torch.Tensor) -> bool:
        hit = step == self.eos_token_id
        self._seen = hit if self._seen is None else self._seen | hit
        return bool(self._seen.all())
