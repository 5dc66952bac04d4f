"""Tensors <-> TensorChunk messages: chunking, reassembly and validation.

Both gRPC services move tensors the same way, so the rules live here once:
a tensor travels as its raw bytes split into ``CHUNK_BYTES`` pieces (far below
gRPC's 4 MB default message limit), every chunk repeating the header so a
receiver can check each one before trusting it.  Anything inconsistent raises
:class:`WireError`; the transport turns that into a ``PeerError`` naming the
sender.

The party link moves most bytes, so it skips protobuf for the payload (the bytes on the
wire are still a serialized TensorChunk): :func:`encoded_chunks` writes the header with
protobuf and appends the data field itself, copying the tensor once, straight into the
message (protobuf would copy it three times: ``tobytes``, into the message, out of it);
:func:`decode_chunk` parses the header and leaves the data as a view into the received
bytes, which the :class:`Reassembler` copies once into the tensor's own buffer.
"""

from __future__ import annotations

import math
import mmap
from collections.abc import Iterator
from typing import NamedTuple

import torch

from veil.mpc.communicator import tensor_nbytes
from veil.proto import veil_pb2

CHUNK_BYTES = 1 << 20
DATA_FIELD = veil_pb2.TensorChunk.DESCRIPTOR.fields_by_name["data"].number
_DATA_KEY = bytes([DATA_FIELD << 3 | 2])  # field number and wire type 2 (length-delimited)
SMALL_CHUNK_BYTES = 1 << 14
"""Below this, protobuf's parser and its copy of the data beat parsing fields in Python."""
MAX_TENSOR_BYTES = 16 << 30  # refuse absurd headers at once
MAX_DIMS = 32
HUGE_PAGE_TENSOR_BYTES = 32 << 20
"""From this size on a received tensor goes into a buffer backed by huge pages: glibc's
malloc recycles smaller buffers without faults, but maps every one this large afresh."""

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
_NUMPY_DTYPES = frozenset(DTYPES.values()) - {torch.bfloat16}  # .numpy() refuses bfloat16


class WireError(ValueError):
    """A received chunk does not describe a valid tensor."""


def dtype_name(dtype: torch.dtype) -> str:
    try:
        return _DTYPE_NAMES[dtype]
    except KeyError:
        raise TypeError(f"cannot send tensors of dtype {dtype}") from None


def _pieces(
    tensor: torch.Tensor, *, sender: int, seq: int, tag: str, clock: int
) -> Iterator[tuple[veil_pb2.TensorChunk, memoryview]]:
    """``tensor`` cut into chunk headers (no data) and views of its bytes, one per chunk."""
    name = dtype_name(tensor.dtype)
    shape = list(tensor.shape)
    flat = tensor.detach().to("cpu").resolve_conj().contiguous().reshape(-1)
    raw = memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")
    count = max(1, math.ceil(len(raw) / CHUNK_BYTES))
    for index in range(count):
        header = veil_pb2.TensorChunk(
            sender=sender,
            seq=seq,
            tag=tag,
            dtype=name,
            shape=shape,
            chunk_index=index,
            chunk_count=count,
            clock=clock,
        )
        yield header, raw[index * CHUNK_BYTES : (index + 1) * CHUNK_BYTES]


def tensor_chunks(
    tensor: torch.Tensor, *, sender: int = 0, seq: int = 0, tag: str = "", clock: int = 0
) -> Iterator[veil_pb2.TensorChunk]:
    """Split ``tensor`` (any device) into chunks; the bytes are copied once, into protobuf."""
    for header, piece in _pieces(tensor, sender=sender, seq=seq, tag=tag, clock=clock):
        header.data = piece.tobytes()
        yield header


def encoded_chunks(
    tensor: torch.Tensor, *, sender: int = 0, seq: int = 0, tag: str = "", clock: int = 0
) -> Iterator[bytes]:
    """The serialized TensorChunks of :func:`tensor_chunks`, each made with one copy."""
    if tensor.device.type == "cpu" and tensor_nbytes(tensor) < SMALL_CHUNK_BYTES:
        yield small_chunk(tensor, sender=sender, seq=seq, tag=tag, clock=clock)
        return
    for header, piece in _pieces(tensor, sender=sender, seq=seq, tag=tag, clock=clock):
        yield encode_chunk(header, piece)


def small_chunk(tensor: torch.Tensor, *, sender: int, seq: int, tag: str, clock: int) -> bytes:
    """A CPU tensor below :data:`SMALL_CHUNK_BYTES` as its one serialized chunk.

    Most protocol rounds send a few elements, so this is the latency path: protobuf
    serializes the whole message at once, without the views and the join of
    :func:`encode_chunk` (which pay only for large data), in a few microseconds.
    """
    if tensor.dtype in _NUMPY_DTYPES:
        data = tensor.detach().resolve_conj().numpy().tobytes()
    else:
        data = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    return veil_pb2.TensorChunk(
        sender=sender,
        seq=seq,
        tag=tag,
        dtype=dtype_name(tensor.dtype),
        shape=tensor.shape,
        chunk_index=0,
        chunk_count=1,
        clock=clock,
        data=data,
    ).SerializeToString()


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_chunk(header: veil_pb2.TensorChunk, data: memoryview | bytes) -> bytes:
    """``header`` serialized with ``data`` as its data field (which ``header`` must lack).

    Protobuf parsers accept fields in any order, so appending the field is the same
    message as setting it; the data is copied once, by the join.
    """
    if not len(data):
        return header.SerializeToString()
    return b"".join((header.SerializeToString(), _DATA_KEY, _varint(len(data)), data))


class Chunk:
    """A received TensorChunk: its other fields in ``header``, its data a view of the wire bytes.

    The fields are read out of ``header`` once: the link and the :class:`Reassembler` read
    each several times per chunk, and a protobuf attribute read costs far more than a slot.
    """

    __slots__ = (
        "chunk_count",
        "chunk_index",
        "clock",
        "data",
        "dtype",
        "header",
        "sender",
        "seq",
        "shape",
        "tag",
    )

    def __init__(self, header: veil_pb2.TensorChunk, data: memoryview) -> None:
        self.header = header
        self.data = data
        self.sender = header.sender
        self.seq = header.seq
        self.tag = header.tag
        self.dtype = header.dtype
        self.shape = tuple(header.shape)
        self.chunk_index = header.chunk_index
        self.chunk_count = header.chunk_count
        self.clock = header.clock


def _read_varint(raw: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(raw) or shift > 63:
            raise WireError("truncated or overlong varint in a chunk")
        byte = raw[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            return value, pos


_FIXED_WIDTH = {1: 8, 5: 4}  # wire types 1 and 5: fixed 64- and 32-bit fields


def decode_chunk(raw: bytes) -> Chunk:
    """Parse a serialized TensorChunk without copying its data (a foreign field order is fine)."""
    if len(raw) < SMALL_CHUNK_BYTES:
        header = veil_pb2.TensorChunk.FromString(raw)
        data = memoryview(header.data)
        header.ClearField("data")
        return Chunk(header, data)
    view = memoryview(raw)
    header_parts: list[memoryview] = []
    data = memoryview(b"")
    pos = 0
    while pos < len(raw):
        start = pos
        key, pos = _read_varint(raw, pos)
        kind = key & 7
        if kind == 0:
            _, pos = _read_varint(raw, pos)
        elif kind == 2:
            size, pos = _read_varint(raw, pos)
            if pos + size > len(raw):
                raise WireError("a chunk's field runs past its end")
            if key >> 3 == DATA_FIELD:
                data = view[pos : pos + size]  # the last occurrence wins, as in protobuf
                pos += size
                continue
            pos += size
        elif kind in _FIXED_WIDTH:
            pos += _FIXED_WIDTH[kind]
        else:
            raise WireError(f"unsupported protobuf wire type {kind} in a chunk")
        header_parts.append(view[start:pos])
    if pos != len(raw):
        raise WireError("a chunk's last field runs past its end")
    return Chunk(veil_pb2.TensorChunk.FromString(b"".join(header_parts)), data)


def _huge_page_buffer(nbytes: int) -> mmap.mmap | bytearray:
    """An anonymous mapping of ``nbytes`` that the kernel backs with 2 MB pages where it can.

    Writing a large tensor into fresh 4 KB pages costs a page fault per 4 KB (a tenth of
    the link's CPU time at 256 MB); with huge pages it is one per 2 MB.  Only pages written
    are ever backed by memory, so a header that claims a huge tensor still costs only the
    data that actually arrives; where the kernel refuses the mapping, the buffer grows.
    """
    try:
        buffer = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except OSError:
        return bytearray()
    advice = getattr(mmap, "MADV_HUGEPAGE", None)  # Linux only
    if advice is not None:
        buffer.madvise(advice)
    return buffer


class _Header(NamedTuple):
    """What every chunk of a message repeats (kept apart from the first chunk's data)."""

    seq: int
    dtype: str
    shape: tuple[int, ...]
    chunk_count: int
    tag: str


class Reassembler:
    """Collects the chunks of one tensor at a time, validating each against the first.

    The memory used grows with the data that has arrived, never to the size a header
    claims: a sender that announces a huge tensor and sends little costs little (a
    huge-page mapping of the claimed size is only address space until it is written).
    """

    def __init__(self) -> None:
        self._header: _Header | None = None
        self._buffer: mmap.mmap | bytearray = bytearray()
        self._expected = 0
        self._filled = 0

    @property
    def in_progress(self) -> bool:
        return self._header is not None

    def add(self, chunk: veil_pb2.TensorChunk | Chunk) -> torch.Tensor | None:
        """Feed one chunk; return the tensor once its last chunk has arrived."""
        if self._header is None:
            self._start(chunk)
        else:
            self._check_continuation(chunk)
        header = self._header
        assert header is not None
        end = self._filled + len(chunk.data)
        if end > self._expected:
            raise WireError(f"tensor data exceeds its header ({self._expected} bytes)")
        if isinstance(self._buffer, bytearray):
            self._buffer += chunk.data
        else:
            self._buffer[self._filled : end] = chunk.data
        self._filled = end
        if chunk.chunk_index + 1 < header.chunk_count:
            return None
        if self._filled != self._expected:
            raise WireError(f"tensor has {self._filled} bytes, its header says {self._expected}")
        dtype = DTYPES[header.dtype]
        buffer = self._buffer
        self._header, self._buffer, self._expected, self._filled = None, bytearray(), 0, 0
        if not buffer:
            return torch.empty(header.shape, dtype=dtype)
        return torch.frombuffer(buffer, dtype=dtype).reshape(header.shape)

    def _start(self, chunk: veil_pb2.TensorChunk | Chunk) -> None:
        if chunk.dtype not in DTYPES:
            raise WireError(f"unknown dtype {chunk.dtype!r}")
        shape = tuple(chunk.shape)
        if len(shape) > MAX_DIMS or any(d < 0 for d in shape):
            raise WireError(f"invalid shape {list(shape)}")
        if chunk.chunk_index != 0:
            raise WireError(f"tensor starts at chunk {chunk.chunk_index}, expected 0")
        nbytes = math.prod(shape) * DTYPES[chunk.dtype].itemsize
        if nbytes > MAX_TENSOR_BYTES:
            raise WireError(f"tensor of {nbytes} bytes exceeds the {MAX_TENSOR_BYTES}-byte limit")
        expected_chunks = max(1, math.ceil(nbytes / CHUNK_BYTES))
        if chunk.chunk_count != expected_chunks:
            raise WireError(
                f"{nbytes}-byte tensor announced in {chunk.chunk_count} chunks, "
                f"expected {expected_chunks}"
            )
        self._header = _Header(chunk.seq, chunk.dtype, shape, chunk.chunk_count, chunk.tag)
        self._expected = nbytes
        if nbytes >= HUGE_PAGE_TENSOR_BYTES:
            self._buffer = _huge_page_buffer(nbytes)

    def _check_continuation(self, chunk: veil_pb2.TensorChunk | Chunk) -> None:
        header = self._header
        assert header is not None
        expected_index = self._filled // CHUNK_BYTES
        if chunk.seq != header.seq:
            raise WireError(f"chunk of message {chunk.seq} inside message {header.seq}")
        if (
            chunk.dtype != header.dtype
            or tuple(chunk.shape) != header.shape
            or chunk.chunk_count != header.chunk_count
            or chunk.tag != header.tag
        ):
            raise WireError(f"chunk {chunk.chunk_index} of message {header.seq} changes its header")
        if chunk.chunk_index != expected_index:
            raise WireError(f"chunk {chunk.chunk_index} arrived, expected {expected_index}")
