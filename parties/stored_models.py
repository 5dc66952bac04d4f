"""A served model that stays in the party's share store: its weights are read per request.

:class:`StoredServedModel` keeps only the model's public structure, with a
:class:`~veil.nn.streamed.WeightSpec` (name, shape, scale, place in the load order) where
each weight would be.  Each request opens it (:meth:`StoredServedModel.open`): the party's
model is built with :class:`~veil.mpc.streamed_share.StreamedShare` weights over a
:class:`~veil.mpc.prefetch.Prefetcher` reading the stored model
(:class:`~veil.parties.store.StoredModel`: data components memory-mapped, seeded ones
expanded by AES-CTR), one weight ahead of use within ``budget_bytes``, and the loader is
closed when the request ends, whether it succeeds or fails.  Resident memory per party is
the budget plus the activations, whatever the size of the model.

Every family streams (BERT, GPT-2, LLaMA, Gemma 3): the weights the parties hold are the
parameters of our imported model (:func:`veil.nn.private.import_hf`), so what the import
derives from the Hugging Face tensors (split or fused projections, scaled embeddings) is
already in the stored weights, and a tied weight is one stored parameter that the
structure uses twice (:meth:`~veil.nn.modules.Module.map_params` keeps it tied).  The
cost is reading every weight once per forward pass (a generate step is one pass).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from veil.mpc.party import Party
from veil.nn.modules import Module
from veil.nn.streamed import DEFAULT_BUDGET_BYTES, WeightSpec, party_weights
from veil.parties.models import ServedModel, build_structure, unique_params
from veil.parties.store import StoredModel, StoreError


def weightless_structure(family: str, config_json: str) -> Module:
    """:func:`~veil.parties.models.build_structure` with every weight a meta tensor: the
    names and shapes a party checks received weights against, built without allocating
    them (the Hugging Face parameters are created on meta, its public tables such as RoPE
    frequencies or Gemma 3's embedding scale stay real; :mod:`veil.nn.lazy_import`)."""
    return build_structure(family, config_json, meta=True)


def stored_skeleton(structure: Module, source: StoredModel) -> Module:
    """``structure`` with each parameter replaced by the :class:`WeightSpec` of its stored
    weight (names and shapes checked against the store), numbered in forward order."""
    params = unique_params(structure)
    missing, extra = set(params) - set(source.params), set(source.params) - set(params)
    if missing or extra:
        raise StoreError(
            f"{source.directory} does not match its config: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(extra)[:5]}"
        )
    specs = {}
    for index, (name, value) in enumerate(params.items()):
        if source.shape(name) != tuple(value.shape):
            raise StoreError(
                f"{source.directory}: weight {name!r} has shape {source.shape(name)}, "
                f"the config says {tuple(value.shape)}"
            )
        specs[id(value)] = WeightSpec(index, name, source.shape(name), source.frac_bits(name))
    return structure.map_params(lambda value: specs[id(value)])


@dataclass
class StoredServedModel(ServedModel):
    """A :class:`ServedModel` whose ``module`` holds :class:`WeightSpec`\\ s; the weights
    stay in ``source`` and are streamed to each request within ``budget_bytes``."""

    source: StoredModel | None = None
    budget_bytes: int = DEFAULT_BUDGET_BYTES

    @contextlib.contextmanager
    def open(self, party: Party) -> Iterator[Module]:
        with party_weights(self.module, party, self.source, self.budget_bytes) as (local, _):
            yield local
