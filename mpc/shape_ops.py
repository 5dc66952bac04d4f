"""Shape manipulation shared by both share types.

A share's ``data`` is one tensor of shape (2, *shape): the party's two components
stacked, so every local operation is one torch call.  This mixin maps the torch-like
shape API onto the trailing dimensions of ``data``.
"""

from __future__ import annotations

from typing import Any

import torch


def _dim(d: int, ndim: int) -> int:
    """Index of logical dimension ``d`` inside ``data`` (which has one extra leading dim)."""
    if not -ndim <= d < max(ndim, 1):
        raise IndexError(f"dimension {d} out of range for a {ndim}-d share")
    return (d % max(ndim, 1)) + 1


class ShapeOps:
    data: torch.Tensor

    def _like(self, data: torch.Tensor) -> Any:  # pragma: no cover - implemented by subclasses
        raise NotImplementedError

    @property
    def shape(self) -> torch.Size:
        return self.data.shape[1:]

    @property
    def ndim(self) -> int:
        return self.data.dim() - 1

    def dim(self) -> int:
        return self.ndim

    def numel(self) -> int:
        return self.shape.numel()

    def size(self, d: int | None = None) -> Any:
        return self.shape if d is None else self.shape[d]

    @property
    def device(self) -> torch.device:
        return self.data.device

    def __len__(self) -> int:
        return self.shape[0]

    def reshape(self, *shape: Any) -> Any:
        if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)):
            shape = tuple(shape[0])
        return self._like(self.data.reshape(2, *shape))

    view = reshape

    def flatten(self, start_dim: int = 0, end_dim: int = -1) -> Any:
        if self.ndim == 0:
            return self.reshape(1)
        return self._like(self.data.flatten(_dim(start_dim, self.ndim), _dim(end_dim, self.ndim)))

    def transpose(self, d0: int, d1: int) -> Any:
        return self._like(self.data.transpose(_dim(d0, self.ndim), _dim(d1, self.ndim)))

    @property
    def T(self) -> Any:
        return self._like(self.data.permute(0, *range(self.ndim, 0, -1)))

    def permute(self, *dims: Any) -> Any:
        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = tuple(dims[0])
        return self._like(self.data.permute(0, *(_dim(d, self.ndim) for d in dims)))

    def movedim(self, source: int, destination: int) -> Any:
        return self._like(self.data.movedim(_dim(source, self.ndim), _dim(destination, self.ndim)))

    def unsqueeze(self, d: int) -> Any:
        return self._like(self.data.unsqueeze(d % (self.ndim + 1) + 1 if d < 0 else d + 1))

    def squeeze(self, d: int | None = None) -> Any:
        if d is None:
            keep = [s for s in self.shape if s != 1]
            return self.reshape(*keep)
        return self._like(self.data.squeeze(_dim(d, self.ndim)))

    def expand(self, *shape: Any) -> Any:
        if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)):
            shape = tuple(shape[0])
        data = self.data
        if len(shape) > self.ndim:
            data = data.reshape(2, *([1] * (len(shape) - self.ndim)), *self.shape)
        return self._like(data.expand(2, *shape))

    def contiguous(self) -> Any:
        return self._like(self.data.contiguous())

    def repeat_interleave(self, repeats: int, dim: int) -> Any:
        return self._like(self.data.repeat_interleave(repeats, dim=_dim(dim, self.ndim)))

    def flip(self, dim: int) -> Any:
        return self._like(self.data.flip(_dim(dim, self.ndim)))

    def __getitem__(self, index: Any) -> Any:
        if not isinstance(index, tuple):
            index = (index,)
        return self._like(self.data[(slice(None), *index)])

    def __setitem__(self, index: Any, value: Any) -> None:
        if not isinstance(index, tuple):
            index = (index,)
        if type(value) is not type(self):
            raise TypeError(f"can only assign a {type(self).__name__} into a {type(self).__name__}")
        if getattr(value, "frac_bits", None) != getattr(self, "frac_bits", None):
            raise ValueError("assigned share has a different fixed-point scale")
        target = self.data[(slice(None), *index)]
        extra = target.dim() - value.data.dim()
        self.data[(slice(None), *index)] = value.data.reshape(2, *([1] * extra), *value.shape)


def aligned_pair(a: Any, b: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Both shares' data, padded to a common rank so they broadcast like torch tensors."""
    ndim = max(a.ndim, b.ndim)
    da = a.data if a.ndim == ndim else a.data.reshape(2, *([1] * (ndim - a.ndim)), *a.shape)
    db = b.data if b.ndim == ndim else b.data.reshape(2, *([1] * (ndim - b.ndim)), *b.shape)
    return da, db
