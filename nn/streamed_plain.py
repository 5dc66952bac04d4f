"""The plaintext reference of a model larger than memory, its weights streamed like the shares'.

:class:`StreamedTensor` stands in for a float weight: any torch operation on it (``x @ w``,
``F.embedding``, indexing, ``.transpose``) loads the weight through a
:class:`~veil.mpc.prefetch.Prefetcher` first, so the unchanged model code runs on a
plaintext backend (:class:`veil.nn.backend.ExactBackend`) with only a weight or two
resident.  Used by ``python -m benchmarks.models llama7b`` to check the private result
against a float64 forward of the same 6.7 G weights.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from typing import Any

import torch

from veil.mpc.prefetch import Prefetcher, PrefetchStats
from veil.nn.modules import Module
from veil.nn.streamed import WeightSpec, specs_in_order


class StreamedTensor:
    """Weight ``spec`` of a plaintext model, loaded on use."""

    def __init__(self, prefetcher: Prefetcher, spec: WeightSpec):
        self._prefetcher = prefetcher
        self.spec = spec
        self.shape = torch.Size(spec.shape)

    def load(self) -> torch.Tensor:
        return self._prefetcher.get(self.spec.index)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        def loaded(value: Any) -> Any:
            return value.load() if isinstance(value, StreamedTensor) else value

        return func(*(loaded(a) for a in args), **{k: loaded(v) for k, v in (kwargs or {}).items()})

    def __getitem__(self, index: Any) -> torch.Tensor:
        return self.load()[index]

    def transpose(self, a: int, b: int) -> torch.Tensor:
        return self.load().transpose(a, b)


@contextlib.contextmanager
def streamed_plain_model(
    skeleton: Module, load: Callable[[WeightSpec], torch.Tensor], budget_bytes: int
) -> Iterator[tuple[Module, PrefetchStats]]:
    """A float copy of ``skeleton`` whose weight k is ``load(spec_k)``, streamed in order."""
    specs = specs_in_order(skeleton)
    sizes = [torch.Size(s.shape).numel() * 8 for s in specs]
    prefetcher = Prefetcher(lambda index, _buffer: load(specs[index]), sizes, budget_bytes, name="plain-weights")
    held = {id(p): p for _, p in skeleton.named_params()}
    local = copy.deepcopy(skeleton, memo=dict(held))
    local.map_params(lambda spec: StreamedTensor(prefetcher, spec))
    try:
        yield local, prefetcher.stats
    finally:
        prefetcher.close()
