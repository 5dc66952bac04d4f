"""Exact Z_2^64 matrix products through int8 x int8 -> int32 GEMMs (``torch._int_mm``).

Signed-digit split: with C = 0x8080...80 (128 in every byte), y = x + C (mod 2^64) has
bytes u_i in [0, 255], and d_i = u_i - 128 in [-128, 127] gives

    x = sum_{i<8} d_i 2^(8 i)   (mod 2^64),
    a @ b = sum_{s<8} (sum_{i<=s} A_i @ B_{s-i}) 2^(8 s)   (mod 2^64).

The inner sum for one shift s is a single GEMM of the limbs side by side,
[A_0 | ... | A_s] @ [B_s; ...; B_0], whose int32 entries are sums of (s+1) K products
of magnitude <= 2^14: exact while (s+1) K <= 131071 (< 2^31 / 2^14), so the inner
dimension is cut into chunks of ``MAX_EXACT_INNER`` = 131071 // 8 = 16383.
Cost: 8 int8 GEMMs per ring GEMM (36 limb products, 3.6x the multiply-adds of the 10
float64 limb products of :mod:`veil.mpc.ring_matmul`, on tensor cores whose int8 rate is
~30x their float64 rate on Hopper). float32/bf16 limbs were not taken: an exact fp32
GEMM of 8-bit limbs needs K <= 2^24 / 2^16 = 256 per chunk, and bf16 limbs (8-bit
mantissa) would be 4 bits wide, many more GEMMs for the same int8 tensor-core rate.

CUDA's ``_int_mm`` wants M > 16 and K, N multiples of 8, so operands are zero-padded
(a zero ring element has zero limbs), and B is passed column-major, the layout
cuBLAS's int8 GEMM is fast in; the CPU runs the same padded code, which is how
its exactness is tested without a GPU.
"""

from __future__ import annotations

import torch

LIMB_BITS = 8
LIMBS = 64 // LIMB_BITS
LIMB_MASK = (1 << LIMB_BITS) - 1
DIGIT_OFFSET = 1 << (LIMB_BITS - 1)
RECODE = int.from_bytes(bytes([DIGIT_OFFSET]) * LIMBS, "little") - (1 << 64)
"""C = 0x8080808080808080 as a signed int64."""
MAX_EXACT_INNER = ((1 << 31) - 1) // (DIGIT_OFFSET * DIGIT_OFFSET) // LIMBS
MIN_ROWS = 17
ALIGN = 8


def _pad_to(x: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    if x.shape[dim] == size:
        return x
    pad = [0, 0] * x.dim()
    pad[2 * (x.dim() - 1 - dim) + 1] = size - x.shape[dim]
    return torch.nn.functional.pad(x, pad)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def signed_limbs(x: torch.Tensor) -> list[torch.Tensor]:
    """The digits d_0 .. d_7 of x as int8 tensors: x = sum d_i 2^(8 i) mod 2^64."""
    y = x + RECODE
    return [(((y >> (LIMB_BITS * i)) & LIMB_MASK) - DIGIT_OFFSET).to(torch.int8) for i in range(LIMBS)]


def _int8_matmul_2d(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(M, K) @ (K, N) with K <= MAX_EXACT_INNER."""
    rows, cols = a.shape[0], b.shape[1]
    inner = _round_up(a.shape[1], ALIGN)
    a = _pad_to(_pad_to(a, 1, inner), 0, max(rows, MIN_ROWS))
    b = _pad_to(_pad_to(b, 0, inner), 1, _round_up(cols, ALIGN))
    # int8 tensor-core GEMMs want B column-major: its limbs are made from b transposed.
    a_limbs, bt_limbs = signed_limbs(a), signed_limbs(b.mT.contiguous())
    out = None
    for shift in range(LIMBS):
        wide_a = torch.cat(a_limbs[: shift + 1], dim=1)
        tall_b = torch.cat(bt_limbs[shift::-1], dim=1).mT
        term = torch._int_mm(wide_a, tall_b).to(torch.int64) << (LIMB_BITS * shift)
        out = term if out is None else out + term
    return out[:rows, :cols]


def _int8_matmul_chunked(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    inner = a.shape[1]
    out = None
    for start in range(0, inner, MAX_EXACT_INNER):
        stop = min(inner, start + MAX_EXACT_INNER)
        part = _int8_matmul_2d(a[:, start:stop], b[start:stop])
        out = part if out is None else out + part
    return out


def int8_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b mod 2^64 for int64 tensors through int8 limb GEMMs (broadcasting like torch.matmul).

    A 2-D ``b`` takes every row of ``a`` in one GEMM; batched ``b`` loops over the batch.
    """
    vector_a, vector_b = a.dim() == 1, b.dim() == 1
    a = a.unsqueeze(0) if vector_a else a
    b = b.unsqueeze(-1) if vector_b else b
    if b.dim() == 2:
        flat = _int8_matmul_chunked(a.reshape(-1, a.shape[-1]), b)
        out = flat.reshape(*a.shape[:-1], b.shape[-1])
    else:
        batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        a_b = a.expand(*batch, *a.shape[-2:]).reshape(-1, *a.shape[-2:])
        b_b = b.expand(*batch, *b.shape[-2:]).reshape(-1, *b.shape[-2:])
        out = torch.stack([_int8_matmul_chunked(x, y) for x, y in zip(a_b, b_b)])
        out = out.reshape(*batch, a.shape[-2], b.shape[-1])
    out = out.squeeze(-2) if vector_a else out
    return out.squeeze(-1) if vector_b else out
