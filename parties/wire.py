"""Tensors <-> TensorChunk messages: chunking, reassembly and validation.

Both gRPC services move tensors the same way, so the rules live here once:
a tensor travels as its raw bytes split into ``CHUNK_BYTES`` pieces (far below
gRPC's 4 MB default message limit), every chunk repeating the header so a
receiver can check each one before trusting it.  Anything inconsistent raises
:class:`WireError`; the transport turns that into a ``PeerError`` naming the
sender.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from veil.proto import veil_pb2

CHUNK_BYTES = 1 << 20
MAX_TENSOR_BYTES = 16 << 30  # refuse absurd headers at once
MAX_DIMS = 32

DTYPES: dict[str, torch.dtype] = {
    name: getattr(torch, name)
    for name in (
        "bool",
        "uint8",
        "int8",
        "int16",
        "int32",
        "int64",
        "float16",
        "bfloat16",
        "float32",
        "float64",
        "complex64",
        "complex128",
    )
}
_DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}


class WireError(ValueError):
    """A received chunk does not describe a valid tensor."""


def dtype_name(dtype: torch.dtype) -> str:
    try:
        return _DTYPE_NAMES[dtype]
    except KeyError:
        raise TypeError(f"cannot send tensors of dtype {dtype}") from None


def tensor_chunks(
    tensor: torch.Tensor, *, sender: int = 0, seq: int = 0, tag: str = "", clock: int = 0
) -> Iterator[veil_pb2.TensorChunk]:
    """Split ``tensor`` (any device) into chunks; the bytes are copied once, into protobuf."""
    name = dtype_name(tensor.dtype)
    shape = list(tensor.shape)
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    raw = memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")
    count = max(1, math.ceil(len(raw) / CHUNK_BYTES))
    for index in range(count):
        yield veil_pb2.TensorChunk(
            sender=sender,
            seq=seq,
            tag=tag,
            dtype=name,
            shape=shape,
            chunk_index=index,
            chunk_count=count,
            data=raw[index * CHUNK_BYTES : (index + 1) * CHUNK_BYTES].tobytes(),
            clock=clock,
        )


class Reassembler:
    """Collects the chunks of one tensor at a time, validating each against the first.

    The buffer grows with the data that has arrived, never to the size a header
    claims: a sender that announces a huge tensor and sends little costs little.
    """

    def __init__(self) -> None:
        self._header: veil_pb2.TensorChunk | None = None
        self._buffer = bytearray()
        self._expected = 0

    @property
    def in_progress(self) -> bool:
        return self._header is not None

    def add(self, chunk: veil_pb2.TensorChunk) -> torch.Tensor | None:
        """Feed one chunk; return the tensor once its last chunk has arrived."""
        if self._header is None:
            self._start(chunk)
        else:
            self._check_continuation(chunk)
        header = self._header
        assert header is not None
        if len(self._buffer) + len(chunk.data) > self._expected:
            raise WireError(f"tensor data exceeds its header ({self._expected} bytes)")
        self._buffer += chunk.data
        if chunk.chunk_index + 1 < header.chunk_count:
            return None
        if len(self._buffer) != self._expected:
            raise WireError(
                f"tensor has {len(self._buffer)} bytes, its header says {self._expected}"
            )
        dtype = DTYPES[header.dtype]
        shape = tuple(header.shape)
        buffer = self._buffer
        self._header, self._buffer, self._expected = None, bytearray(), 0
        if not buffer:
            return torch.empty(shape, dtype=dtype)
        return torch.frombuffer(buffer, dtype=dtype).reshape(shape)

    def _start(self, chunk: veil_pb2.TensorChunk) -> None:
        if chunk.dtype not in DTYPES:
            raise WireError(f"unknown dtype {chunk.dtype!r}")
        if len(chunk.shape) > MAX_DIMS or any(d < 0 for d in chunk.shape):
            raise WireError(f"invalid shape {list(chunk.shape)}")
        if chunk.chunk_index != 0:
            raise WireError(f"tensor starts at chunk {chunk.chunk_index}, expected 0")
        nbytes = math.prod(chunk.shape) * DTYPES[chunk.dtype].itemsize
        if nbytes > MAX_TENSOR_BYTES:
            raise WireError(f"tensor of {nbytes} bytes exceeds the {MAX_TENSOR_BYTES}-byte limit")
        expected_chunks = max(1, math.ceil(nbytes / CHUNK_BYTES))
        if chunk.chunk_count != expected_chunks:
            raise WireError(
                f"{nbytes}-byte tensor announced in {chunk.chunk_count} chunks, "
                f"expected {expected_chunks}"
            )
        self._header = chunk
        self._expected = nbytes

    def _check_continuation(self, chunk: veil_pb2.TensorChunk) -> None:
        header = self._header
        assert header is not None
        expected_index = len(self._buffer) // CHUNK_BYTES
        if chunk.seq != header.seq:
            raise WireError(f"chunk of message {chunk.seq} inside message {header.seq}")
        if (
            chunk.dtype != header.dtype
            or list(chunk.shape) != list(header.shape)
            or chunk.chunk_count != header.chunk_count
            or chunk.tag != header.tag
        ):
            raise WireError(f"chunk {chunk.chunk_index} of message {header.seq} changes its header")
        if chunk.chunk_index != expected_index:
            raise WireError(f"chunk {chunk.chunk_index} arrived, expected {expected_index}")
