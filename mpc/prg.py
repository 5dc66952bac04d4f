"""Cryptographic pseudo-random generator: AES-128 in counter mode.

Two parties holding the same 16-byte key and drawing the same amounts in the same
order obtain identical streams; that is how pairwise correlated randomness
(zero-sharings, shared masks) costs no communication.  Keys come from
``secrets.token_bytes`` (the OS CSPRNG), never from ``torch.manual_seed`` or ``random``.
"""

from __future__ import annotations

import secrets

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

KEY_BYTES = 16


def new_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


class AesPrg:
    """AES-128-CTR keystream; every draw advances the counter by the bytes drawn."""

    def __init__(self, key: bytes):
        if len(key) != KEY_BYTES:
            raise ValueError(f"PRG key must be {KEY_BYTES} bytes, got {len(key)}")
        self._encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
        self.bytes_drawn = 0

    def random_bytes(self, n: int) -> bytes:
        self.bytes_drawn += n
        return self._encryptor.update(bytes(n))

    def random_int64(self, shape: tuple[int, ...] | torch.Size, device: torch.device | str = "cpu") -> torch.Tensor:
        """Uniform elements of Z_2^64 as an int64 tensor of ``shape``."""
        count = int(np.prod(shape, dtype=np.int64)) if len(shape) else 1
        raw = np.frombuffer(self.random_bytes(8 * count), dtype=np.int64)
        return torch.from_numpy(raw.copy()).reshape(shape).to(device)
