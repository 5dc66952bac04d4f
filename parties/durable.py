"""Served models backed by the party's share store: written as shared, streamed from it.

:class:`DurableModelStore` is the :class:`~veil.parties.models.ModelStore` of a deployed
party (``veil serve --store DIR``).  Two differences from the in-memory one:

- a share (:mod:`veil.parties.share_sessions`) writes each weight to an uncommitted model
  of the store *as it was dealt* (:meth:`veil.parties.store.ModelWriter.put_payload`):
  party 0 keeps two seeds per weight and no data, parties 1 and 2 a seed and one int64
  component, never the expanded pair; the model is served once the last part commits;
- a served model keeps no weights in memory (:class:`~veil.parties.stored_models.
  StoredServedModel`): each request streams them from the store within ``budget_bytes``.

:meth:`DurableModelStore.restore` serves again every model a previous run of this party
committed.  The public metadata stored with a model is every field of
:class:`~veil.parties.models.ServedModel` except the weights, so a field added there is
kept without changes here.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from veil.mpc.seeded import Payload
from veil.nn.streamed import DEFAULT_BUDGET_BYTES
from veil.parties.models import ModelError, ModelStore, ServedModel
from veil.parties.store import ShareStore
from veil.parties.stored_models import StoredServedModel, stored_skeleton, weightless_structure

_WEIGHTS = "module"


class DurableModelStore(ModelStore):
    """A :class:`ModelStore` whose models live in ``shares`` and survive a restart."""

    def __init__(self, shares: ShareStore, budget_bytes: int = DEFAULT_BUDGET_BYTES):
        super().__init__()
        self.shares = shares
        self.budget_bytes = budget_bytes

    def begin_share(self, name: str, model: ServedModel) -> _StoreShare:
        return _StoreShare(self, name, model)

    def restore(self) -> list[str]:
        """Serve every committed model again (weights left in the store); returns their names."""
        names = self.shares.models()
        for name in names:
            meta = self.shares.meta(name)
            structure = weightless_structure(meta["family"], meta["config_json"])
            self._serve(name, ServedModel(**meta, module=structure))
        return names

    def _serve(self, name: str, model: ServedModel) -> None:
        """Serve committed model ``name`` from the store; ``model.module`` is its structure."""
        source = self.shares.reader(name)
        skeleton = stored_skeleton(model.module, source)
        self.put(
            name,
            StoredServedModel(
                **_public_meta(model),
                module=skeleton,
                source=source,
                budget_bytes=self.budget_bytes,
            ),
        )


class _StoreShare:
    """A share under way into the store: an uncommitted :class:`~veil.parties.store.ModelWriter`."""

    def __init__(self, store: DurableModelStore, name: str, model: ServedModel):
        self._store, self._name, self._model = store, name, model
        self._writer = store.shares.begin_model(name, _public_meta(model))

    def put(self, param: str, payload: Payload, shape: tuple[int, ...]) -> None:
        self._writer.put_payload(param, payload, shape)

    def commit(self) -> None:
        current = self._store.owner(self._name)
        if current is not None and current != self._model.owner:
            raise ModelError(f"model {self._name!r} belongs to {current!r}")
        self._writer.commit()
        self._store._serve(self._name, self._model)

    def abandon(self) -> None:
        self._writer.abandon()


def _public_meta(model: ServedModel) -> dict[str, Any]:
    return {f.name: getattr(model, f.name) for f in fields(model) if f.name != _WEIGHTS}
