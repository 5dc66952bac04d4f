"""Helpers shared by the approximations.

Twins: :func:`quantize` rounds to the fixed-point grid, where a protocol truncates, so a
twin tracks its protocol to within a few ulp and tests can hold the protocol to the twin
tightly.

Protocols: :func:`products` runs several independent products in one multiplication
round (plus one truncation for those that need it), :func:`linear_combination` applies
public coefficients with a single truncation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from veil.mpc.arith import ArithShare, cat
from veil.mpc.fixedpoint import DEFAULT_FRAC_BITS
from veil.mpc.lockstep import RoundLink, Steps, run_alone
from veil.mpc.party import Party
from veil.protocols.comparison import less_than_bits
from veil.protocols.multiplication import local_product
from veil.protocols.reductions import plan_for, tournament_levels
from veil.protocols.select import mux_bits
from veil.protocols.truncation import truncate, truncate_product_steps

FRAC_BITS = DEFAULT_FRAC_BITS
SUM_RANGE_BITS = 10
""":func:`linear_combination` results must satisfy |sum| < 2^SUM_RANGE_BITS; coefficients get
the remaining 62 - SUM_RANGE_BITS - F fractional bits (34 for terms with F = f = 18)."""


def quantize(x: torch.Tensor, frac_bits: int | None) -> torch.Tensor:
    """Round ``x`` to the grid of ``frac_bits`` fractional bits (``None``: leave it exact)."""
    if frac_bits is None:
        return x
    scale = float(2**frac_bits)
    return torch.round(x * scale) / scale


def with_frac(x: ArithShare, frac_bits: int) -> ArithShare:
    """The same ring elements read with ``frac_bits`` fractional bits (free).

    Reading with e more bits divides the value by 2^e; products of relabelled operands
    let a protocol keep extra precision or fold a power of two into a later truncation.
    """
    return ArithShare(x.party, x.data, frac_bits)


def products(
    pairs: Sequence[tuple[ArithShare, ArithShare]], out_frac: Sequence[int | None] | None = None
) -> list[ArithShare]:
    """``[x * y for x, y in pairs]`` in one call: 2 rounds when any product is truncated.

    The raw product of each pair carries ``x.frac_bits + y.frac_bits`` fractional bits; it
    is truncated to ``out_frac[i]`` (default: the party's f when it carries more, else kept).
    All products are truncated together from their 3-out-of-3 components, each by its own
    shift (:func:`veil.protocols.truncation.truncate_product`): 2 rounds and 64/3 bytes
    per output element per party.  With no shift at all it is a plain multiplication:
    1 round, 8 bytes per output element per party.
    """
    party = pairs[0][0].party
    with party.comm.scope("mul"):
        return run_alone(party, lambda link: products_steps(link, pairs, out_frac))


def products_steps(
    link: RoundLink, pairs: Sequence[tuple[ArithShare, ArithShare]], out_frac: Sequence[int | None] | None = None
) -> Steps[list[ArithShare]]:
    """:func:`products` as steps (:mod:`veil.mpc.lockstep`), to share its rounds with
    independent work."""
    party = link.party
    f = party.fxp.frac_bits
    shapes, xs, ys, raw_fracs = [], [], [], []
    for x, y in pairs:
        shape = torch.broadcast_shapes(x.shape, y.shape)
        shapes.append(shape)
        xs.append(with_frac(x, 0).expand(*shape).reshape(-1))
        ys.append(with_frac(y, 0).expand(*shape).reshape(-1))
        raw_fracs.append(x.frac_bits + y.frac_bits)
    if out_frac is None:
        out_frac = [None] * len(pairs)
    targets = [(min(raw, f) if want is None else want) for raw, want in zip(raw_fracs, out_frac)]
    shifts = [raw - target for raw, target in zip(raw_fracs, targets)]
    if min(shifts) < 0:
        raise ValueError("a product cannot gain fractional bits")
    x_flat, y_flat = (cat(xs), cat(ys)) if len(xs) > 1 else (xs[0], ys[0])
    z = local_product(x_flat.data, y_flat.data)
    if max(shifts) == 0:
        flat = yield from reshare_steps(link, z, 0)
        return _split(flat, shapes, targets)
    sizes = [shape.numel() for shape in shapes]
    pieces = yield from truncate_components_steps(link, list(zip(z.split(sizes), shifts, targets)))
    return [p.reshape(*shape) for p, shape in zip(pieces, shapes)]


def reshare_steps(link: RoundLink, z: torch.Tensor, frac: int) -> Steps[ArithShare]:
    """This party's 3-out-of-3 component ``z`` of a value with ``frac`` fractional bits, as a
    replicated share: masked with a zero-sharing and sent to the previous party (1 round, 8
    bytes per element per party).  Exact: no truncation, so the value keeps every bit."""
    party = link.party
    z = z + party.zero_share(z.shape)
    link.outbox.add(party.prev_rank, z.reshape(-1))
    yield
    received = link.inbox.take(party.next_rank, z.numel()).reshape(z.shape)
    return ArithShare(party, torch.stack((z, received)), frac)


def truncate_components(
    party: Party, parts: Sequence[tuple[torch.Tensor, int | torch.Tensor, int]]
) -> list[ArithShare]:
    """Truncate 3-out-of-3 components together, each part by its own shift, in 2 rounds.

    ``parts``: (this party's component z_i of a value, shift in 0..61, fractional bits of
    the result).  A shift may also be a public int64 tensor broadcastable to its part, one
    shift per element, each chosen so that the element lands on the part's fractional bits.  A component is what a local product leaves
    (:func:`veil.protocols.multiplication.local_product`), or ``share.data[0]`` of a
    replicated share (its components sum to the value).  One call of
    :func:`veil.protocols.truncation.truncate_product`: 64/3 bytes per element per party.
    """
    with party.comm.scope("trunc"):
        return run_alone(party, lambda link: truncate_components_steps(link, parts))


def truncate_components_steps(
    link: RoundLink, parts: Sequence[tuple[torch.Tensor, int | torch.Tensor, int]]
) -> Steps[list[ArithShare]]:
    """:func:`truncate_components` as steps."""
    shapes = [z.shape for z, _, _ in parts]
    flat = torch.cat([z.reshape(-1) for z, _, _ in parts])
    shifts = [shift for _, shift, _ in parts]
    if all(isinstance(s, int) for s in shifts) and len(set(shifts)) == 1:
        cut = yield from truncate_product_steps(link, flat, shifts[0], shifts[0])
    else:
        per_element = torch.cat([
            torch.as_tensor(shift, dtype=torch.int64).expand(shape).reshape(-1)
            for shape, shift in zip(shapes, shifts)
        ])
        cut = yield from truncate_product_steps(link, flat, per_element, int(per_element.max()))
    return _split(cut, shapes, [frac for _, _, frac in parts])


def _split(flat: ArithShare, shapes: Sequence[torch.Size], fracs: Sequence[int]) -> list[ArithShare]:
    """The consecutive pieces of a flat share, reshaped, each read with its own scale."""
    pieces, start = [], 0
    for shape, frac in zip(shapes, fracs):
        n = shape.numel()
        pieces.append(with_frac(flat[start : start + n], frac).reshape(*shape))
        start += n
    return pieces


def encoded_coefficients(coeffs: Sequence[float], frac_bits: int | None) -> list[float]:
    """The coefficients as :func:`linear_combination` encodes them for terms of ``frac_bits``
    (``None``: exact), so that a twin rounds high-power coefficients as its protocol does."""
    if frac_bits is None:
        return list(coeffs)
    scale = 2.0 ** (62 - SUM_RANGE_BITS - frac_bits)
    return [round(c * scale) / scale for c in coeffs]


def linear_combination(
    terms: Sequence[ArithShare], coeffs: Sequence[float], constant: float = 0.0
) -> ArithShare:
    """``constant + sum(c * t)`` with f fractional bits and one truncation for all terms.

    Each coefficient is encoded with 62 - SUM_RANGE_BITS - F fractional bits (so small
    coefficients of high powers, e.g. GeLU's 0.0018 x^6, keep their precision) and
    multiplied in as an integer; the sum is truncated once (intermediate wrap-around is
    harmless, only |sum| < 2^SUM_RANGE_BITS matters).  Terms share one number of fractional
    bits F >= f (more than f keeps the rounding of large alternating coefficients small).
    Cost: 2 rounds, 16 bytes per element per party.
    """
    return linear_combinations([(terms, coeffs, constant)])[0]


def linear_combinations(
    groups: Sequence[tuple[Sequence[ArithShare], Sequence[float], float]]
) -> list[ArithShare]:
    """Several :func:`linear_combination` (terms, coeffs, constant) with one truncation for
    all: every unscaled sum carries 62 - SUM_RANGE_BITS bits, so all take the same shift.
    Cost: 2 rounds, 16 bytes per element of every result per party."""
    party = groups[0][0][0].party
    f = party.fxp.frac_bits
    sums = []
    for terms, coeffs, _ in groups:
        term_bits = terms[0].frac_bits
        coeff_bits = 62 - SUM_RANGE_BITS - term_bits
        acc = None
        for term, coeff in zip(terms, coeffs):
            if term.frac_bits != term_bits or term_bits < f:
                raise ValueError("linear_combination expects terms with one scale of >= f bits")
            scaled = with_frac(term, 0) * round(coeff * 2**coeff_bits)
            acc = scaled if acc is None else acc + scaled
        sums.append(acc)
    shapes = [acc.shape for acc in sums]
    flat = cat([acc.reshape(-1) for acc in sums]) if len(sums) > 1 else sums[0].reshape(-1)
    cut = truncate(with_frac(flat, 62 - SUM_RANGE_BITS), 62 - SUM_RANGE_BITS - f)
    pieces = _split(cut, shapes, [f] * len(shapes))
    return [piece + constant for piece, (_, _, constant) in zip(pieces, groups)]


def row_max(x: ArithShare, group: int | None = None) -> ArithShare:
    """max over the last dim, shape (..., 1), exact.

    Levels of all-pairs tournaments (:func:`veil.protocols.reductions.tournament_levels`)
    whose widths :func:`veil.protocols.reductions.plan_for` picks for the fewest rounds
    within its byte budget: one level over whole short rows (a decoding step's attention
    rows, GPT-2's 32-long prompt rows: 11 rounds), (8, 16) for BERT-base's 128-long rows
    (19 rounds, about 200 bytes per element per party, against the binary tree's 42 rounds
    and 47.6 bytes).  A level of g costs one boolean MSB (5 rounds), ceil(log2(g - 1)) AND
    rounds and one bit injection.  ``group=2`` keeps the binary tree of comparisons and
    multiplexers: ceil(log2 n) levels of one boolean MSB (5 rounds) and one multiplexer on it
    by bit injection (1 round, :func:`veil.protocols.select.mux_bits`), about 47.6 bytes per
    element per party (sampling's max over a vocabulary, where bytes weigh more); another
    ``group`` takes levels of that many.  Unlike ``ArithShare.max`` neither rebuilds the
    argmax one-hot (softmax does not need it).
    """
    if group is None or group > 2:
        maximum, _ = tournament_levels(x, group if group is not None else plan_for(x))
        return maximum.unsqueeze(-1)
    current = x
    while current.shape[-1] > 1:
        n = current.shape[-1]
        pairs = n // 2
        left, right = current[..., 0 : 2 * pairs : 2], current[..., 1 : 2 * pairs : 2]
        winners = mux_bits(less_than_bits(left, right), right, left)
        current = cat([winners, current[..., n - 1 :]], dim=-1) if n % 2 else winners
    return current
