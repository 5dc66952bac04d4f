"""Exact matrix products in Z_2^64 on any device.

CPU: :data:`CPU_CHOOSER` picks, by measurement once per shape class
(:mod:`veil.mpc.kernel_choice`), between torch's native int64 GEMM (wraps mod 2^64, exact;
for one or two rows its int64 matrix-vector kernel) and the wide float64 limbs below.
torch's int64 GEMM is a plain loop unless the CPU has AVX-512: on an AVX2-only 2-core
EPYC, (128, 768) @ (768, 768) takes 360 ms native against 24 ms in wide limbs (MKL's
DGEMM), while on the AVX-512 machine of earlier rounds native took 12 ms.

CUDA has no int64 GEMM.  There :data:`CUDA_CHOOSER` picks, by measurement on the device
once per shape class, among three exact limb forms: this module's float64 limbs and wide
float64 limbs (below) and the int8 tensor-core limbs of :mod:`veil.mpc.int8_matmul`.  H200 numbers: pending (no device has been lent to this
project yet); ``python -m benchmarks.gpu`` prints the choices made and their timings.
On this project's 2-core CPU, (128, 768) @ (768, 768): native int64 12 ms, float64
limbs 112 ms, int8 limbs 103 ms.

Float64 limbs: the operands are split into ``LIMBS`` unsigned limbs of ``LIMB_BITS``
bits, a = sum_i a_i 2^(16 i), and

    a @ b = sum_{i + j < LIMBS} (a_i @ b_j) 2^(16 (i + j))   (mod 2^64)

Each limb product is a float64 GEMM whose entries are sums of K products of 16-bit
numbers: < K * 2^32, exact in float64's 53-bit mantissa while K <= 2^21 (the inner
dimension is split into chunks of at most ``MAX_EXACT_INNER`` otherwise).  Ten float64
GEMMs per ring GEMM.  The limb path also runs on the CPU, where a test proves it
bit-exact against the native one.

Wide float64 limbs: two unsigned 22-bit limbs and a signed top limb of 20 bits,
a = a_0 + a_1 2^22 + a_2 2^44 with a_2 = a >> 44 (arithmetic), and

    a @ b = A_00 + (A_01 + A_10) 2^22 + (A_02 + A_11 + A_20) 2^44   (mod 2^64),
    A_ij = a_i @ b_j,

the other products being multiples of 2^66.  Every |a_i b_j| < 2^44, so a limb GEMM over
at most ``WIDE_MAX_INNER`` = 2^9 inner terms stays below 2^53, exact in float64; longer
inner dimensions run in chunks of that length.  Six limb products (three GEMM calls, the
row limbs of ``a`` stacked) against the ten of 16-bit limbs.
"""

from __future__ import annotations

import torch

from veil.mpc import dry_run
from veil.mpc.int8_matmul import int8_matmul
from veil.mpc.kernel_choice import KernelChooser

LIMB_BITS = 16
LIMBS = 64 // LIMB_BITS
LIMB_MASK = (1 << LIMB_BITS) - 1
MAX_EXACT_INNER = 1 << (53 - 2 * LIMB_BITS)


def _limbs(x: torch.Tensor) -> list[torch.Tensor]:
    return [((x >> (LIMB_BITS * i)) & LIMB_MASK).to(torch.float64) for i in range(LIMBS)]


def _limb_matmul_chunk(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a_limbs, b_limbs = _limbs(a), _limbs(b)
    out = None
    for shift in range(LIMBS):
        # Each limb product is exact in float64 (< K 2^32 <= 2^53); it is brought
        # back to int64 before summing, where wrap-around is the ring arithmetic.
        acc = None
        for i in range(shift + 1):
            prod = a_limbs[i] @ b_limbs[shift - i]
            term = prod.to(torch.int64)
            acc = term if acc is None else acc + term
        acc = acc << (LIMB_BITS * shift)
        out = acc if out is None else out + acc
    return out


def limb_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Ring matmul through exact float64 limb GEMMs (broadcasting like torch.matmul)."""
    inner = a.shape[-1]
    if inner <= MAX_EXACT_INNER:
        return _limb_matmul_chunk(a, b)
    out = None
    for start in range(0, inner, MAX_EXACT_INNER):
        stop = min(inner, start + MAX_EXACT_INNER)
        part = _limb_matmul_chunk(a[..., start:stop], b[..., start:stop, :])
        out = part if out is None else out + part
    return out


WIDE_LIMB_BITS = 22
WIDE_LIMB_MASK = (1 << WIDE_LIMB_BITS) - 1
WIDE_MAX_INNER = 1 << (53 - 2 * WIDE_LIMB_BITS)
WIDE_COLUMNS = 4096


def _wide_limbs(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        (x & WIDE_LIMB_MASK).to(torch.float64),
        ((x >> WIDE_LIMB_BITS) & WIDE_LIMB_MASK).to(torch.float64),
        (x >> (2 * WIDE_LIMB_BITS)).to(torch.float64),
    )


def _wide_block(a_all: torch.Tensor, a0: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b for one block of at most ``WIDE_MAX_INNER`` inner terms, a's limbs given."""
    rows = a0.shape[-2]
    b0, b1, b2 = _wide_limbs(b)
    by_b0 = torch.matmul(a_all, b0).to(torch.int64)
    by_b1 = torch.matmul(a_all[..., : 2 * rows, :], b1).to(torch.int64)
    by_b2 = torch.matmul(a0, b2).to(torch.int64)
    return (
        by_b0[..., :rows, :]
        + ((by_b0[..., rows : 2 * rows, :] + by_b1[..., :rows, :]) << WIDE_LIMB_BITS)
        + ((by_b0[..., 2 * rows :, :] + by_b1[..., rows:, :] + by_b2) << (2 * WIDE_LIMB_BITS))
    )


def wide_limb_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Ring matmul through six exact float64 GEMMs of 22-bit limbs (broadcasting like
    torch.matmul).  ``b``'s limbs are made per block of ``WIDE_MAX_INNER`` x
    ``WIDE_COLUMNS`` entries, so a vocabulary-sized table costs no table-sized copies."""
    if a.dim() == 1:
        return wide_limb_matmul(a.unsqueeze(0), b).squeeze(-2)
    if b.dim() == 1:
        return wide_limb_matmul(a, b.unsqueeze(-1)).squeeze(-1)
    a0, a1, a2 = _wide_limbs(a)
    a_all = torch.cat([a0, a1, a2], dim=-2)  # rows of a_0 | a_1 | a_2
    inner, columns = a.shape[-1], b.shape[-1]
    blocks = []
    for first in range(0, columns, WIDE_COLUMNS):
        cols = slice(first, first + WIDE_COLUMNS)
        out = None
        for start in range(0, inner, WIDE_MAX_INNER):
            k = slice(start, start + WIDE_MAX_INNER)
            part = _wide_block(a_all[..., k], a0[..., k], b[..., k, cols])
            out = part if out is None else out.add_(part)
        blocks.append(out)
    return blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=-1)


CUDA_CHOOSER = KernelChooser(
    {"float64 limbs": limb_matmul, "wide float64 limbs": wide_limb_matmul, "int8 limbs": int8_matmul}
)
"""The exact GEMMs for devices without an int64 one, fastest first found by timing."""

SKINNY_ROWS = 2
"""Up to this many rows, a CPU product by a matrix runs as matrix-vector products: torch's
int64 ``mv`` is several times faster than its ``mm`` for one row (decoding one token)."""


def native_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """torch's int64 matmul (mod 2^64), with its matrix-vector kernel for skinny products
    and transposed tables read in place."""
    if b.dim() == 2 and a.dim() >= 1:
        rows = a.numel() // max(a.shape[-1], 1)
        if rows <= SKINNY_ROWS:
            flat = a.reshape(rows, a.shape[-1])
            out = torch.stack([torch.mv(b.mT, row) for row in flat])
            return out.reshape(*a.shape[:-1], b.shape[-1])
        if not b.is_contiguous() and b.mT.is_contiguous():
            # x @ table.T (a tied LM head): int64 matmul would copy the transposed table;
            # (table @ x.T).T reads it in place.
            return torch.matmul(b.mT, a.mT).mT
    return torch.matmul(a, b)


CPU_CHOOSER = KernelChooser({"int64": native_matmul, "wide float64 limbs": wide_limb_matmul})
"""The CPU's exact GEMMs; which is faster depends on the CPU's vector units."""


def ring_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b mod 2^64 for int64 tensors, choosing the kernel by device and shape."""
    if dry_run.active():
        return dry_run.empty_product(a, b)
    if a.device.type != "cpu":
        return CUDA_CHOOSER(a, b)
    return CPU_CHOOSER(a, b)
