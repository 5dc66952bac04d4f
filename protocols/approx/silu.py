"""SiLU (LLaMA's activation): ReLU minus a fitted gap (default), or PUMA's piecewise polynomial.

Formula (``variant="relu"``, ours, the default): silu(x) = relu(x) - g(|x|) with
g(a) = a / (1 + e^a), which is small (at most 0.28, at a = 1.28) and decays like a e^-a, so
with T = 8 and b = |x| / 8 in [0, 1]
    silu(x) ~ 0 (x < -T);  relu(x) - G(b) (|x| <= T);  x (x > T),
    G(b) = sum_k SILU_RELU[k] b^k, degree 8.
Fitting: weighted minimax on [0, T] by Lawson's iteratively reweighted least squares
(Chebyshev basis, 20001 points, 500 iterations), weight 10 on a < 4, where SmolLM2's gate
pre-activations live (99.7% of them on its chat prompts; they reach -27 and +50, hence the
exact asymptotes outside [-T, T]), 1 on [4, 8].  Max error 2.7e-3 (the tail at |x| = T:
T e^-T); 1.8e-4 on [-4, 4]; mean 1.2e-4 on SmolLM2's gate inputs against PUMA's 5.5e-3, and
a mean signed error (the bias every hidden unit shares) of -1.7e-5 against 2.3e-3.  With it
SmolLM2's last-position logits keep the error they have with SiLU exact (see
benchmarks/RESULTS.md).  The powers of b carry f + 8 fractional bits (POWER_EXTRA_BITS):
the coefficients (up to 460 in b) would otherwise multiply the one-ulp rounding of each
power into about 3e-3.  G(|b|) = E(b) + sign(x) O(b) (even and odd parts of G): the powers
of the signed b need no comparison, so they run beside it.

Formula (``variant="puma"``):
    silu(x) = 0                      x < -8
              Q(x)                   -8 <= x < -4
              P(x)                   -4 <= x <= 4
              x                      x > 4
    Q = -0.0055465625580307 x^2 - 0.0819767021525476 x - 0.3067541139982155
    P = 0.0002743776353465 x^6 - 0.011113046708173 x^4 + 0.2281430841728270 x^2 + 0.5 x
        + 0.0085064025895951
Source: PUMA (arXiv 2307.12533) as in SecretFlow-SPU's LLaMA example.  It is accurate
near 0 (max 0.0085 on [-2, 2]) but 0.072 at x = 4 and biased (mean error 2.3e-3 on
SmolLM2's gate inputs): with SiLU exact, SmolLM2's worst logit error falls from 1.18 to 0.13.

Variant ``"symmetric"`` (ours): silu(x) = x/2 + (x/2) tanh(x/2), the second term even and
tending to |x|/2, so with T = 5
    silu(x) ~ 0 (x < -5);  x/2 + E(x^2) (|x| <= 5);  x (x > 5),
    E(s) = 0.020496548463330284 + 0.21099913255441075 s - 0.007965792174430242 s^2
           + 0.0001388975712446311 s^3      (a minimax fit; PUMA's P is the T = 4 fit).
Two comparisons instead of three: max error 0.0335 on [-12, 12] (vs 0.0719), fewer
bytes; but 2.4x less accurate than PUMA's
where activations live (max 0.0205 vs 0.0085 on [-2, 2]).  For cost-sensitive use.

Valid range: all x (|x| < 2^(63-f)); outside [-T, T] the powers overflow the ring, but the
result there is relu(x) exactly (the garbage is multiplied by a 0 bit); see
:mod:`veil.protocols.approx._piecewise` for the other variants.
Error: twin vs x * sigmoid(x) on [-12, 12]: relu 2.7e-3 (1.8e-4 on [-4, 4]); PUMA 0.0719
(at x = 4); symmetric 0.0335.  Protocol vs twin: PUMA and symmetric a few ulp; relu at most
1 + sum_k |c_k| (k - 1) 2^-8 = 26 ulp (b^k's k - 1 truncations at f + 8 bits, each off by one
ulp, times its coefficient), 5 ulp measured.
Cost (relu), per element: segment bits [x < 0], [x < -T], [x > T] (one boolean MSB, 3 *
26.3 bytes per party) and [inside AND x < 0] (one AND, 8 bytes), beside the powers of the
signed b = x / 8 (b^2 .. b^8 in three levels of products truncated from their 3-out-of-3
components, 64 bytes each summed over the parties) and G's even and odd parts (one
truncation, 2 x 48); then four bit injections (mux_bits, 4 x 64): 824 bytes over the parties
besides the MSBs, 353.6 per party; 9 critical-path rounds (15 with the comparison before
the powers, 305.6 bytes; PUMA's: 238.9 bytes, 9 rounds; tests check both).
Cost (PUMA): segment bits (boolean MSBs, 5 rounds beside the powers, 3 * 26.3 = 78.9
bytes), powers x^2 | x^4 | x^6 (3 levels of one product truncated from its components, 2
rounds each, 3 products: 64 bytes), one truncation for both polynomials (2 rounds, 32
bytes), selection (bit injection, 1 round, 3 * 21.3 = 64 bytes): 238.9 bytes per element
per party, 9 critical-path rounds (16 before the comparison ran beside the powers).
Cost (symmetric): 52.6 + 64 + 16 + 42.7 = 175.3 bytes, 9 critical-path rounds (measured).
"""

from __future__ import annotations

import torch

from veil.mpc.arith import ArithShare, cat, stack
from veil.mpc.boolean import BoolShare
from veil.mpc.lockstep import RoundLink, Steps, lockstep
from veil.protocols.approx._common import (
    FRAC_BITS,
    encoded_coefficients,
    linear_combination,
    linear_combinations,
    products_steps,
    quantize,
    with_frac,
)
from veil.protocols.approx._piecewise import (
    segment_stack,
    select,
    select_twin,
    symmetric_select,
    symmetric_select_twin,
    symmetric_stack,
)
from veil.protocols.boolean import and_shares_steps
from veil.protocols.comparison import less_than_bits_steps
from veil.protocols.select import mux_bits

SILU_RELU_BOUND = 8.0
SILU_RELU_SCALE_BITS = 3
"""b = |x| / 2^3 lies in [0, 1] on [-T, T]."""
POWER_EXTRA_BITS = 8
"""The powers of b carry f + 8 fractional bits (values <= 1, so products stay below 2^(2f + 16))."""
# G on [0, 1]: coefficients of b, b^2, ..., b^8 and the constant.
SILU_RELU = (
    4.020705179729314,
    -16.2711936466899,
    -2.213755600662198,
    142.45073608473828,
    -376.35848057274814,
    459.67688743322987,
    -279.70576813027964,
    68.40556527346314,
)
SILU_RELU_CONSTANT = -0.00018303393757967967

SILU_BOUNDS = (-8.0, -4.0, 4.0)
# Q on [-8, -4): coefficients of x, x^2 and the constant.
SILU_Q = (-0.0819767021525476, -0.0055465625580307)
SILU_Q_CONSTANT = -0.3067541139982155
# P on [-4, 4]: coefficients of x, x^2, x^4, x^6 and the constant.
SILU_P = (0.5, 0.2281430841728270, -0.011113046708173, 0.0002743776353465)
SILU_P_CONSTANT = 0.0085064025895951
SILU_SYMMETRIC_BOUND = 5.0
# E(x^2) on [-5, 5] plus x/2: coefficients of x, x^2, x^4, x^6 and the constant.
SILU_SYMMETRIC = (0.5, 0.21099913255441075, -0.007965792174430242, 0.0001388975712446311)
SILU_SYMMETRIC_CONSTANT = 0.020496548463330284
VARIANTS = ("relu", "puma", "symmetric")


def _relu_twin(x: torch.Tensor, frac_bits: int | None) -> torch.Tensor:
    """Float twin of :func:`_relu_silu`: the powers of the signed b = x / 8, the even and the
    odd part of G rounded apart, G(|b|) = even + sign(x) odd."""
    power_bits = None if frac_bits is None else frac_bits + POWER_EXTRA_BITS
    b = x / 2**SILU_RELU_SCALE_BITS
    b2 = quantize(b * b, power_bits)
    b3, b4 = quantize(b2 * b, power_bits), quantize(b2 * b2, power_bits)
    powers = (b, b2, b3, b4, *(quantize(b4 * low, power_bits) for low in (b, b2, b3, b4)))
    coeffs = encoded_coefficients(SILU_RELU, power_bits)
    even = quantize(sum(c * t for c, t in zip(coeffs[1::2], powers[1::2])), frac_bits) + SILU_RELU_CONSTANT
    odd = quantize(sum(c * t for c, t in zip(coeffs[0::2], powers[0::2])), frac_bits)
    g = even + torch.where(x < 0, -odd, odd)
    relu = x.clamp(min=0)
    t = quantize(torch.tensor(SILU_RELU_BOUND, dtype=torch.float64), frac_bits)
    return torch.where(x.abs() > t, relu, relu - g)


def silu_twin(
    x: torch.Tensor, variant: str = "relu", frac_bits: int | None = FRAC_BITS
) -> torch.Tensor:
    """Float twin of :func:`silu`."""
    _check(variant)
    x = x.to(torch.float64)
    if variant == "relu":
        return _relu_twin(x, frac_bits)
    x2 = quantize(x * x, frac_bits)
    x4 = quantize(x2 * x2, frac_bits)
    x6 = quantize(x4 * x2, frac_bits)
    if variant == "symmetric":
        terms = (x, x2, x4, x6)
        inner = quantize(sum(c * t for c, t in zip(SILU_SYMMETRIC, terms)), frac_bits)
        return symmetric_select_twin(
            x, SILU_SYMMETRIC_BOUND, inner + SILU_SYMMETRIC_CONSTANT, frac_bits
        )
    q = quantize(sum(c * t for c, t in zip(SILU_Q, (x, x2))), frac_bits) + SILU_Q_CONSTANT
    p = quantize(sum(c * t for c, t in zip(SILU_P, (x, x2, x4, x6))), frac_bits) + SILU_P_CONSTANT
    return select_twin(x, SILU_BOUNDS, q, p, frac_bits)


def _check(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown SiLU variant {variant!r}: expected one of {VARIANTS}")


def _over_scale(v: ArithShare, power_bits: int) -> ArithShare:
    """v / 2^SILU_RELU_SCALE_BITS with ``power_bits`` fractional bits: a local shift of the ring
    elements (exact), no truncation."""
    shift = power_bits - v.frac_bits - SILU_RELU_SCALE_BITS
    return with_frac(with_frac(v, 0) * (1 << shift), power_bits)


def _relu_silu(x: ArithShare) -> ArithShare:
    """relu(x) - G(|x| / 8) inside [-T, T], relu(x) outside (see the module docstring).

    G(|b|) = E(b) + sign(x) O(b) with E and O the even and odd parts of G in the signed
    b = x / 8, which need no comparison: the segment bits (and inside AND negative) run
    beside the powers (:mod:`veil.mpc.lockstep`), and one round of bit injections
    (:func:`veil.protocols.select.mux_bits`) puts them together:
        silu = x - neg x - (in E + in O - 2 (in AND neg) O).
    """
    party = x.party
    f = party.fxp.frac_bits
    power_bits = f + POWER_EXTRA_BITS
    t = SILU_RELU_BOUND
    stacked = cat([x.unsqueeze(0), (x + t).unsqueeze(0), (t - x).unsqueeze(0)], dim=0)

    def segments(link: RoundLink) -> Steps[BoolShare]:
        bits = yield from less_than_bits_steps(link, stacked, 0)
        negative, inside = bits[0], bits[1] ^ bits[2] ^ 1  # [x < -T] and [x > T] are disjoint
        (inside_negative,) = yield from and_shares_steps(link, [inside], [negative])
        return stack([negative, inside, inside, inside_negative])

    def parts(link: RoundLink) -> Steps[list[ArithShare]]:
        b = _over_scale(x, power_bits)
        (b2,) = yield from products_steps(link, [(b, b)], out_frac=[power_bits])
        b3, b4 = yield from products_steps(link, [(b2, b), (b2, b2)], out_frac=[power_bits] * 2)
        high = yield from products_steps(link, [(b4, low) for low in (b, b2, b3, b4)], out_frac=[power_bits] * 4)
        return [b, b2, b3, b4, *high]

    bits, powers = lockstep(party, segments, parts)
    even, odd = linear_combinations([
        (powers[1::2], SILU_RELU[1::2], SILU_RELU_CONSTANT), (powers[0::2], SILU_RELU[0::2], 0.0)
    ])
    picked = mux_bits(bits, stack([x, even, odd, odd * -2]), 0)
    return x - picked[0] - picked[1] - picked[2] - picked[3]


def silu(x: ArithShare, variant: str = "relu") -> ArithShare:
    """SiLU of a secret fixed-point tensor (see the module docstring)."""
    _check(variant)
    with x.party.comm.scope("silu"):
        if variant == "relu":
            return _relu_silu(x)
        symmetric = variant == "symmetric"
        stacked = symmetric_stack(x, SILU_SYMMETRIC_BOUND) if symmetric else segment_stack(x, SILU_BOUNDS)
        bits, (x2, x4, x6) = lockstep(
            x.party, lambda link: less_than_bits_steps(link, stacked, 0), lambda link: _even_powers_steps(link, x)
        )
        if symmetric:
            inner = linear_combination((x, x2, x4, x6), SILU_SYMMETRIC, SILU_SYMMETRIC_CONSTANT)
            return symmetric_select(x, bits, inner)
        q, p = linear_combinations([
            ((x, x2), SILU_Q, SILU_Q_CONSTANT), ((x, x2, x4, x6), SILU_P, SILU_P_CONSTANT)
        ])
        return select(x, bits, q, p)


def _even_powers_steps(link: RoundLink, x: ArithShare) -> Steps[tuple[ArithShare, ...]]:
    """x^2, x^4, x^6 in three product levels, as steps (the segments' comparison runs beside)."""
    (x2,) = yield from products_steps(link, [(x, x)])
    (x4,) = yield from products_steps(link, [(x2, x2)])
    (x6,) = yield from products_steps(link, [(x4, x2)])
    return x2, x4, x6
