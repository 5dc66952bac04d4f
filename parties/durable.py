"""Served models backed by the party's share store: written when shared, reloaded at start.

:class:`DurableModelStore` is the in-memory :class:`~veil.parties.models.ModelStore`
with one difference: a model is on disk (:mod:`veil.parties.store`) before it is
served, and :meth:`DurableModelStore.restore` serves again every model a previous run
of this party committed.  The public metadata stored with a model is every field of
:class:`~veil.parties.models.ServedModel` except the weights, so a field added there
is kept without changes here.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from veil.parties.models import (
    HeldShare,
    ModelStore,
    ServedModel,
    attach_shares,
    build_structure,
    unique_params,
)
from veil.parties.store import ShareStore

_WEIGHTS = "module"


class DurableModelStore(ModelStore):
    """A :class:`ModelStore` whose models survive a restart of the party."""

    def __init__(self, shares: ShareStore):
        super().__init__()
        self.shares = shares

    def put(self, name: str, model: ServedModel) -> None:
        writer = self.shares.begin_model(name, _public_meta(model))
        try:
            for param, held in unique_params(model.module).items():
                writer.put(param, held.pair, held.frac_bits)
            writer.commit()
        except BaseException:
            writer.abandon()
            raise
        super().put(name, model)

    def restore(self) -> list[str]:
        """Serve every committed model again (weights memory-mapped); returns their names."""
        names = self.shares.models()
        for name in names:
            meta = self.shares.meta(name)
            shares = {
                param: HeldShare(*self.shares.load(name, param))
                for param in self.shares.params(name)
            }
            module = attach_shares(build_structure(meta["family"], meta["config_json"]), shares)
            super().put(name, ServedModel(**meta, module=module))
        return names


def _public_meta(model: ServedModel) -> dict[str, Any]:
    return {f.name: getattr(model, f.name) for f in fields(model) if f.name != _WEIGHTS}
