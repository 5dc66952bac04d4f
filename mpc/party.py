"""A compute party: its rank, its communicator, and its pairwise PRGs.

Keys follow ABY3 (PROTOCOLS.md): party i holds k_i and k_{i+1}; parties i-1 and i
both hold k_i.  At session start party i draws k_{i+1} from the OS CSPRNG and sends it
to party i+1 over the (authenticated, encrypted) channel.  Party i's streams:

- ``prg_prev`` keyed by k_i, shared with party i-1;
- ``prg_next`` keyed by k_{i+1}, shared with party i+1;
- ``prg_own`` keyed by a private key, for randomness nobody else needs.

Every protocol draws the same amounts in the same order at the parties that share a
stream, so the streams stay in step without messages.
"""

from __future__ import annotations

import torch

from veil.mpc.communicator import WORLD_SIZE, Communicator
from veil.mpc.fixedpoint import FixedPoint
from veil.mpc.prg import KEY_BYTES, AesPrg, new_key


class Party:
    """One of the three compute parties in an SPMD program."""

    def __init__(self, comm: Communicator, fxp: FixedPoint | None = None, device: torch.device | str = "cpu"):
        self.comm = comm
        self.rank = comm.rank
        self.fxp = fxp or FixedPoint()
        self.device = torch.device(device)
        self.prg_prev, self.prg_next = self._agree_pairwise_keys()
        self.prg_own = AesPrg(new_key())
        self.call_counter = 0

    @property
    def next_rank(self) -> int:
        return (self.rank + 1) % WORLD_SIZE

    @property
    def prev_rank(self) -> int:
        return (self.rank - 1) % WORLD_SIZE

    def _agree_pairwise_keys(self) -> tuple[AesPrg, AesPrg]:
        key_next = new_key()
        with self.comm.scope("setup"):
            self.comm.send(self.next_rank, torch.frombuffer(bytearray(key_next), dtype=torch.uint8))
            received = self.comm.recv(self.prev_rank)
        if received.dtype != torch.uint8 or received.numel() != KEY_BYTES:
            raise ValueError(f"party {self.prev_rank} sent a malformed PRG key")
        key_prev = bytes(received.cpu().numpy().tobytes())
        return AesPrg(key_prev), AesPrg(key_next)

    # -- correlated randomness --------------------------------------------------
    def random_prev(self, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
        """Random ring elements known to this party and party i-1."""
        return self.prg_prev.random_int64(shape, self.device)

    def random_next(self, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
        """Random ring elements known to this party and party i+1."""
        return self.prg_next.random_int64(shape, self.device)

    def random_private(self, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
        return self.prg_own.random_int64(shape, self.device)

    def zero_share(self, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
        """alpha_i = F(k_i) - F(k_{i+1}); alpha_0 + alpha_1 + alpha_2 = 0 (mod 2^64)."""
        return self.random_prev(shape) - self.random_next(shape)

    def xor_zero_share(self, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
        """F(k_i) XOR F(k_{i+1}); the three XOR to zero."""
        return self.random_prev(shape) ^ self.random_next(shape)

    def next_call(self) -> int:
        """A counter that advances identically at all parties (for rotating roles)."""
        self.call_counter += 1
        return self.call_counter
