"""Private inference of a model larger than memory: each party streams its weight shares.

:class:`StreamedPrivateModel` runs the same model code and protocols as
:class:`~veil.nn.private.PrivateModel`, but no party holds the model: party r's weights are
read from its own source (its share store, :class:`veil.parties.store.StoredModel`, where
seed-compressed components are expanded by AES-CTR on the fly) one weight ahead of use by a
:class:`~veil.mpc.prefetch.Prefetcher`, and dropped after.  Resident memory is bounded by
the prefetch budget per party plus the activations and the KV cache, whatever the size of
the model.  Each party's pair of each weight is the one it would hold in memory, so the
outputs equal the resident model's bit for bit under the same protocol randomness.

The owner side: :func:`deal_to_stores` secret-shares a model's weights one at a time
(seed-compressed, :func:`veil.mpc.seeded.deal_seeded`) into the three parties' stores,
so the owner never holds more than one weight either.

Cost beside the protocol's own: every forward pass reads every weight once per party
(bytes from disk for data components, AES-CTR keystream for seeded ones, ~1.5 GB/s per
core); the loader runs beside the computation, and ``stall_s`` says how much of it the
computation waited for.
"""

from __future__ import annotations

import contextlib
import copy
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from veil import mpc
from veil.mpc.fixedpoint import FixedPoint
from veil.mpc.prefetch import Prefetcher, PrefetchStats
from veil.mpc.seeded import deal_seeded
from veil.mpc.streamed_share import StreamedShare
from veil.nn.modules import Module
from veil.nn.private import NORM_HEADROOM_BITS, Dealt, PrivateModel

DEFAULT_BUDGET_BYTES = 3 << 30
"""Per party: the weight in use plus those loaded ahead (3 GiB: LLaMA-7B's largest layer
weight, gate+up, is a 1.4 GB pair, so one is loaded while the other is used)."""


class PairSource(Protocol):
    """Where one party's pairs come from: ``load_pair(name, out)`` -> int64 (2, *shape),
    written into ``out`` when given (a free buffer of that size).  A source may also have
    ``end_request()``, called when the party's request ends."""

    def load_pair(self, param: str, out: torch.Tensor | None = None) -> torch.Tensor: ...


@dataclass(frozen=True)
class WeightSpec:
    """A streamed weight's public facts: its place in the load order, name, shape, scale."""

    index: int
    name: str
    shape: tuple[int, ...]
    frac_bits: int

    @property
    def nbytes(self) -> int:
        """Bytes of one party's pair in memory."""
        return 16 * torch.Size(self.shape).numel()


def weight_specs(model: Module, fxp: FixedPoint) -> Module:
    """``model`` (float or meta tensors) with each parameter replaced by its :class:`WeightSpec`,
    numbered in the order the forward pass reads them (the order of ``named_params``)."""
    names = {}
    for name, value in model.named_params():
        names.setdefault(id(value), name)
    order = {key: i for i, key in enumerate(names)}

    def spec(value: torch.Tensor) -> WeightSpec:
        frac = fxp.frac_bits if value.is_floating_point() else 0
        return WeightSpec(order[id(value)], names[id(value)], tuple(value.shape), frac)

    return model.map_params(spec)


def specs_in_order(skeleton: Module) -> list[WeightSpec]:
    found = {spec.index: spec for _, spec in skeleton.named_params()}
    return [found[i] for i in range(len(found))]


def deal_to_stores(
    skeleton: Module,
    weight: Callable[[WeightSpec], torch.Tensor],
    writers: Sequence,
    fxp: FixedPoint,
) -> None:
    """The model owner: share each weight ``weight(spec)`` seed-compressed into the three
    parties' store writers (:meth:`veil.parties.store.ModelWriter.put_payload`), one weight
    at a time; the writers are left to commit."""
    for spec in specs_in_order(skeleton):
        value = weight(spec)
        if tuple(value.shape) != spec.shape:
            raise ValueError(f"weight {spec.name!r} has shape {tuple(value.shape)}, expected {spec.shape}")
        for writer, payload in zip(writers, deal_seeded(value, fxp), strict=True):
            writer.put_payload(spec.name, payload, spec.shape)


class StreamedPrivateModel(PrivateModel):
    """A :class:`PrivateModel` whose parties stream their weights from ``sources[rank]``."""

    def __init__(
        self,
        skeleton: Module,
        sources: Sequence[PairSource],
        fxp: FixedPoint | None = None,
        norm_headroom_bits: int | None = None,
        budget_bytes: int = DEFAULT_BUDGET_BYTES,
    ):
        """``skeleton``: the model with :class:`WeightSpec` parameters (:func:`weight_specs`)."""
        if len(sources) != 3:
            raise ValueError(f"a streamed model needs one source per party, got {len(sources)}")
        self.fxp = fxp or FixedPoint()
        self.device = "cpu"
        if norm_headroom_bits is None:
            norm_headroom_bits = NORM_HEADROOM_BITS.get(type(skeleton).__name__, 0)
        self.norm_headroom_bits = norm_headroom_bits
        self._shared = skeleton
        self._specs = specs_in_order(skeleton)
        self._sources = list(sources)
        self._budget = budget_bytes
        self._lock = threading.Lock()  # the base class serves one request at a time with it
        self.prefetch_stats: list[PrefetchStats] = [PrefetchStats() for _ in range(3)]
        """Each party's loader counters of the last request."""

    def resident(self) -> PrivateModel:
        """The same shares loaded into memory once: the all-in-memory path, for models that fit."""
        pairs = [
            {spec.name: source.load_pair(spec.name) for spec in self._specs} for source in self._sources
        ]

        def dealt(spec: WeightSpec) -> Dealt:
            p0, p1 = pairs[0][spec.name], pairs[1][spec.name]
            ring = torch.stack([p0[0], p0[1], p1[1], p0[0]])
            return Dealt(ring, spec.frac_bits)

        model = copy.deepcopy(self._shared)
        return PrivateModel(model.map_params(dealt), self.fxp, norm_headroom_bits=self.norm_headroom_bits)

    @contextlib.contextmanager
    def _party_model(self, party: mpc.Party) -> Iterator[Module]:
        source = self._sources[party.rank]
        with party_weights(self._shared, party, source, self._budget) as (local, prefetcher):
            try:
                yield local
            finally:
                self.prefetch_stats[party.rank] = prefetcher.stats


@contextlib.contextmanager
def party_weights(
    skeleton: Module, party: mpc.Party, source: PairSource, budget_bytes: int
) -> Iterator[tuple[Module, Prefetcher]]:
    """Party ``party``'s copy of ``skeleton`` holding :class:`StreamedShare` weights read from
    ``source`` by a prefetcher within ``budget_bytes``, and that prefetcher (closed on exit)."""
    specs = specs_in_order(skeleton)
    prefetcher = Prefetcher(
        lambda index, buffer: source.load_pair(specs[index].name, buffer).to(party.device),
        [spec.nbytes for spec in specs],
        budget_bytes,
        name=f"party{party.rank}-weights",
    )
    shared = {id(p): p for _, p in skeleton.named_params()}
    local = copy.deepcopy(skeleton, memo=dict(shared))
    local.map_params(
        lambda spec: StreamedShare(party, prefetcher, spec.index, spec.shape, spec.frac_bits)
    )
    try:
        yield local, prefetcher
    finally:
        end_request = getattr(source, "end_request", None)
        if end_request is not None:
            end_request()
        prefetcher.close()
