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
        self._zeros = bytearray()

    def random_int64(self, shape: tuple[int, ...] | torch.Size, device: torch.device | str = "cpu") -> torch.Tensor:
        """Uniform elements of Z_2^64 as an int64 tensor of ``shape``.

        The keystream is written straight into the tensor's memory (encrypting a
        cached zero buffer with ``update_into``): no intermediate copies.
        """
        count = int(np.prod(shape, dtype=np.int64)) if len(shape) else 1
        nbytes = 8 * count
        if len(self._zeros) < nbytes:
            self._zeros = bytearray(nbytes)
        # update_into wants room for one extra block beyond the input.
        out = torch.empty(count + 2, dtype=torch.int64)
        if nbytes:
            self._encryptor.update_into(memoryview(self._zeros)[:nbytes], memoryview(out.numpy()).cast("B"))
        return out[:count].reshape(shape).to(device)
