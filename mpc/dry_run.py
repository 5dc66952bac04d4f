"""Dry runs for cost estimates: the real protocol code with no randomness drawn.

The bytes each party sends and the critical-path depth depend only on shapes and on the
public order of messages, never on a secret or a random value (the communicator's logical
clock is public by construction), and no protocol opens a value to branch on it.  So a
dry run executes the same programs over the same counting communicator, but its parties
draw "randomness" as uninitialised tensors (:class:`NullPrg`, no AES keystream), ring
matmuls (most of a real run's local time) only allocate their result, and the weights it
holds are uninitialised too: every value is garbage, every counter is exact.
"""

from __future__ import annotations

import threading

import torch

from veil.mpc.party import Party


class NullPrg:
    """Stands in for :class:`veil.mpc.prg.AesPrg`: tensors of the right shape, no keystream."""

    def random_int64(self, shape: tuple[int, ...] | torch.Size, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.empty(shape, dtype=torch.int64, device=device)


_thread = threading.local()


def start(party: Party) -> Party:
    """Make ``party``, run by this thread, dry from here on: it draws nothing (its PRG keys
    were agreed as usual) and its ring matmuls compute nothing."""
    party.prg_prev = party.prg_next = party.prg_own = NullPrg()
    _thread.active = True
    return party


def active() -> bool:
    """Whether this thread runs a dry party (each simulated party is a thread of its own)."""
    return getattr(_thread, "active", False)


def empty_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """An uninitialised ``a @ b`` (its shape from meta copies, which hold no data)."""
    shape = torch.matmul(a.to("meta"), b.to("meta")).shape
    return torch.empty(shape, dtype=torch.int64, device=a.device)
