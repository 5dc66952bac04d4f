"""Single-machine simulation: the three parties as threads of one process."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch

from veil.mpc.communicator import PeerError
from veil.mpc.fixedpoint import FixedPoint
from veil.mpc.inmemory import InMemoryNetwork
from veil.mpc.party import Party


def simulate(
    fn: Callable[..., Any],
    *args: Any,
    fxp: FixedPoint | None = None,
    device: torch.device | str = "cpu",
    timeout: float = 300.0,
    network: InMemoryNetwork | None = None,
    **kwargs: Any,
) -> list[Any]:
    """Run ``fn(party, *args, **kwargs)`` at parties 0, 1, 2 and return their results.

    If a party raises, its peers are unblocked with a :class:`PeerError` and the
    original exception is re-raised here.  ``network`` may be a recording subclass
    of :class:`InMemoryNetwork` (tests inspect what each party received).
    """
    network = network or InMemoryNetwork()
    results: list[Any] = [None] * 3
    errors: list[BaseException | None] = [None] * 3

    def run(rank: int) -> None:
        try:
            party = Party(network.communicator(rank, timeout), fxp=fxp, device=device)
            results[rank] = fn(party, *args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            errors[rank] = exc
            network.abort(rank, f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=run, args=(rank,), name=f"party{rank}") for rank in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    root_causes = [e for e in errors if e is not None and not isinstance(e, PeerError)]
    failures = root_causes or [e for e in errors if e is not None]
    if failures:
        raise failures[0]
    return results
