"""Seed-compressed dealing: an outside owner sends two of three components as AES seeds.

:func:`veil.mpc.sharing.deal` sends party i its pair (x_i, x_{i+1}) as data: 16 bytes per
element at every party.  Here the owner draws two fresh 16-byte seeds s_0, s_1
(``secrets.token_bytes``), sets x_0 = AES-CTR(s_0), x_1 = AES-CTR(s_1) (the keystream from
counter 0, :class:`veil.mpc.prg.AesPrg`) and x_2 = x - x_0 - x_1, and sends

- party 0, holding (x_0, x_1): s_0 and s_1, no data (32 bytes per tensor);
- party 1, holding (x_1, x_2): s_1 and x_2 (8 bytes per element + 16);
- party 2, holding (x_2, x_0): x_2 and s_0 (8 bytes per element + 16).

Each party expands its seeds into the components (:func:`expand`), so it ends with the
same pair as :func:`deal` would give it.

Why one party's view is independent of x (the semi-honest adversary corrupts one party):

- party 0 sees two seeds drawn from the OS CSPRNG, whose distribution does not depend on
  x at all;
- party 1 sees s_1 and x_2 = x - x_0 - x_1.  It never sees s_0, so x_0 is an AES-CTR
  keystream under a uniform key unknown to it: pseudorandom, hence x_2 is
  (computationally) uniform in Z_2^64 and independent of s_1 and of x;
- party 2 sees s_0 and x_2, where x_1 (from s_1, which it never sees) plays the same role.

A seed keys one tensor only and is never reused, so no two tensors share keystream.  The
pair each party expands is two of the three components, as with :func:`deal`, so what a
party holds afterwards (and stores) reveals nothing either.  The seeds are key material:
a party that keeps them keeps the weights' shares in 32 bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from veil.mpc.fixedpoint import FixedPoint
from veil.mpc.prg import KEY_BYTES, AesPrg, new_key
from veil.mpc.sharing import encode_for_dealing

SEEDED_COMPONENTS = (0, 1)
"""The components the owner derives from seeds; component 2 travels as data."""
SEED_PREFIX = "s:"
DATA_PREFIX = "c:"
"""Upload names of a payload's parts: ``s:<component>:<input>`` (a seed, 16 uint8) and
``c:<component>:<input>`` (a component, int64 of the value's shape)."""

Part = bytes | torch.Tensor
"""One component of a pair as it travels: its AES seed, or its ring elements."""


@dataclass(frozen=True)
class Payload:
    """What party ``rank`` receives of one value: its components (rank, rank+1) as parts."""

    rank: int
    parts: tuple[Part, Part]
    frac_bits: int

    @property
    def components(self) -> tuple[int, int]:
        return self.rank, (self.rank + 1) % 3

    @property
    def nbytes(self) -> int:
        """Bytes that travel: 16 per seed, 8 per element of a data component."""
        return sum(len(p) if isinstance(p, bytes) else 8 * p.numel() for p in self.parts)


DEAL_CHUNK = 1 << 22
"""Elements encoded and masked at a time by :func:`deal_seeded` (32 MiB of int64)."""


def deal_seeded(value: torch.Tensor, fxp: FixedPoint | None = None) -> list[Payload]:
    """Each party's payload of a fresh sharing of ``value`` (float: fixed point; int: ring).

    Works through ``value`` in pieces of :data:`DEAL_CHUNK` elements, the two keystreams
    continuing across pieces (the same x_0, x_1 as one ``random_int64`` of the whole
    shape): besides ``value``, only x_2 (8 bytes per element) and one piece's buffers are
    ever allocated, so the owner of a large weight (an embedding of 131 M elements) does
    not need five copies of it.  A value outside the fixed-point range raises before
    anything is returned.
    """
    value = torch.as_tensor(value)
    flat = value.reshape(-1)
    seeds = {k: new_key() for k in SEEDED_COMPONENTS}
    streams = [AesPrg(seeds[k]) for k in SEEDED_COMPONENTS]
    last = torch.empty(flat.shape, dtype=torch.int64)
    masks = torch.empty(2, min(DEAL_CHUNK, flat.numel()), dtype=torch.int64)
    frac = 0
    for start in range(0, flat.numel(), DEAL_CHUNK):
        piece, frac = encode_for_dealing(flat[start : start + DEAL_CHUNK], fxp)
        n = piece.numel()
        out = last[start : start + n]
        torch.sub(piece, streams[0].fill_int64(masks[0, :n]), out=out)
        out.sub_(streams[1].fill_int64(masks[1, :n]))
    if not flat.numel():
        frac = encode_for_dealing(flat, fxp)[1]
    component: dict[int, Part] = {**seeds, 2: last.reshape(value.shape)}
    return [Payload(i, (component[i], component[(i + 1) % 3]), frac) for i in range(3)]


def expand(payload: Payload, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """The stacked pair (2, *shape) that ``payload`` stands for (data parts checked)."""
    shape = tuple(shape)
    components = []
    for k, part in zip(payload.components, payload.parts, strict=True):
        if isinstance(part, bytes):
            components.append(AesPrg(part).random_int64(shape))
        elif tuple(part.shape) != shape:
            raise ValueError(f"component {k} has shape {tuple(part.shape)}, expected {shape}")
        else:
            components.append(part.to(torch.int64))
    return torch.stack(components)


# -- upload form ----------------------------------------------------------------------


def uploads(name: str, payload: Payload) -> list[tuple[str, torch.Tensor]]:
    """``payload`` as named tensors for the wire: a seed as 16 uint8, a component as int64."""
    out = []
    for k, part in zip(payload.components, payload.parts, strict=True):
        if isinstance(part, bytes):
            seed = torch.frombuffer(bytearray(part), dtype=torch.uint8)
            out.append((f"{SEED_PREFIX}{k}:{name}", seed))
        else:
            out.append((f"{DATA_PREFIX}{k}:{name}", part))
    return out


def is_part(upload_name: str) -> bool:
    return upload_name.startswith((SEED_PREFIX, DATA_PREFIX))


def check_part(upload_name: str, tensor: torch.Tensor) -> tuple[int, str]:
    """(component, input name) of an uploaded part, or ValueError if it is malformed."""
    kind, _, rest = upload_name.partition(":")
    index, _, name = rest.partition(":")
    if index not in ("0", "1", "2") or not name:
        raise ValueError(f"part {upload_name!r} must be named {kind}:<component 0-2>:<input>")
    is_seed = tensor.dtype == torch.uint8 and tuple(tensor.shape) == (KEY_BYTES,)
    if kind + ":" == SEED_PREFIX and not is_seed:
        raise ValueError(f"seed {upload_name!r} must be exactly {KEY_BYTES} bytes (uint8)")
    if kind + ":" == DATA_PREFIX and tensor.dtype != torch.int64:
        raise ValueError(f"component {upload_name!r} must be int64")
    return int(index), name


def gather(rank: int, parts: Mapping[str, tuple[torch.Tensor, int]]) -> dict[str, Payload]:
    """Party ``rank``'s payloads from its uploaded parts; both of its components, once each."""
    found: dict[str, dict[int, tuple[Part, int]]] = {}
    for upload_name, (tensor, frac) in parts.items():
        k, name = check_part(upload_name, tensor)
        part = bytes(tensor.numpy()) if upload_name.startswith(SEED_PREFIX) else tensor
        if k in found.setdefault(name, {}):
            raise ValueError(f"component {k} of {name!r} arrived twice")
        found[name][k] = (part, frac)
    payloads = {}
    mine = (rank, (rank + 1) % 3)
    for name, by_component in found.items():
        if set(by_component) != set(mine):
            raise ValueError(
                f"party {rank} holds components {mine} of {name!r}, got {sorted(by_component)}"
            )
        fracs = {frac for _, frac in by_component.values()}
        if len(fracs) != 1:
            raise ValueError(f"the parts of {name!r} disagree on their fractional bits")
        payloads[name] = Payload(rank, tuple(by_component[k][0] for k in mine), fracs.pop())
    return payloads
