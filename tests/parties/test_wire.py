"""Chunking and reassembly of tensors, and rejection of inconsistent chunks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from veil.parties import wire
from veil.parties.wire import CHUNK_BYTES, Reassembler, WireError, tensor_chunks
from veil.proto import veil_pb2

CASES = [
    torch.arange(10, dtype=torch.int64),
    torch.zeros(0, 3, dtype=torch.int64),
    torch.tensor(7, dtype=torch.int64),
    torch.tensor([True, False, True]),
    torch.randint(0, 255, (4, 5), dtype=torch.uint8),
    torch.randn(3, 4).to(torch.bfloat16),
    torch.randn(2, 3, 4, dtype=torch.float64),
    torch.randint(-(2**62), 2**62, (CHUNK_BYTES // 8 * 2 + 3,)),  # three chunks, last partial
]


def roundtrip(tensor: torch.Tensor) -> torch.Tensor:
    reassembler = Reassembler()
    chunks = list(tensor_chunks(tensor, sender=1, seq=4, tag="t"))
    outs = [reassembler.add(veil_pb2.TensorChunk.FromString(c.SerializeToString())) for c in chunks]
    assert all(out is None for out in outs[:-1])
    return outs[-1]


@pytest.mark.parametrize("tensor", CASES, ids=lambda t: f"{t.dtype}{list(t.shape)}")
def test_roundtrip(tensor: torch.Tensor) -> None:
    out = roundtrip(tensor)
    assert out.dtype == tensor.dtype and out.shape == tensor.shape
    assert torch.equal(out, tensor)
    # Received tensors own writable memory (no read-only protobuf buffer underneath).
    out.reshape(-1).view(torch.uint8).fill_(1)


def test_chunks_stay_below_grpc_limit() -> None:
    big = torch.zeros(5 * CHUNK_BYTES // 8, dtype=torch.int64)
    chunks = list(tensor_chunks(big))
    assert len(chunks) == 5
    assert max(c.ByteSize() for c in chunks) < 4 * 1024 * 1024


def test_non_contiguous_input() -> None:
    x = torch.arange(12).reshape(3, 4).t()
    assert torch.equal(roundtrip(x), x)


def header(**fields) -> veil_pb2.TensorChunk:
    valid = {"sender": 0, "seq": 0, "dtype": "int64", "shape": [2], "chunk_count": 1}
    return veil_pb2.TensorChunk(**{**valid, "data": b"\0" * 16, **fields})


@pytest.mark.parametrize(
    "chunk, message",
    [
        (header(dtype="int128"), "unknown dtype"),
        (header(dtype=""), "unknown dtype"),
        (header(shape=[-1]), "invalid shape"),
        (header(data=b"\0" * 15), "bytes"),
        (header(data=b"\0" * 17), "exceeds"),
        (header(chunk_count=2), "chunks"),
        (header(chunk_index=1), "starts at chunk"),
        (header(shape=[1 << 40]), "limit"),
        (header(shape=[1 << 31, 1 << 31]), "limit"),
    ],
)
def test_malformed_chunks_rejected(chunk: veil_pb2.TensorChunk, message: str) -> None:
    with pytest.raises(WireError, match=message):
        Reassembler().add(chunk)


def test_continuation_must_match_header() -> None:
    n = CHUNK_BYTES // 8 + 1
    first, second = tensor_chunks(torch.zeros(n, dtype=torch.int64), seq=3)
    for bad in (
        veil_pb2.TensorChunk(**{**_fields(second), "seq": 4}),
        veil_pb2.TensorChunk(**{**_fields(second), "shape": [n + 1]}),
        veil_pb2.TensorChunk(**{**_fields(second), "chunk_index": 0}),
    ):
        reassembler = Reassembler()
        reassembler.add(first)
        with pytest.raises(WireError):
            reassembler.add(bad)


def _fields(chunk: veil_pb2.TensorChunk) -> dict:
    return {f.name: getattr(chunk, f.name) for f in chunk.DESCRIPTOR.fields}


def test_unsupported_dtype_refused_at_send() -> None:
    with pytest.raises(TypeError):
        list(tensor_chunks(torch.zeros(2, dtype=torch.uint16)))
    assert "int64" in wire.DTYPES


@pytest.mark.parametrize("tensor", CASES, ids=lambda t: f"{t.dtype}{list(t.shape)}")
def test_encoded_chunks_are_the_protobuf_chunks(tensor: torch.Tensor) -> None:
    """The party link's hand-made messages parse, with protobuf, to the same chunks."""
    fields = {"sender": 2, "seq": 9, "tag": "mul/trunc", "clock": 300}
    encoded = list(wire.encoded_chunks(tensor, **fields))
    expected = list(tensor_chunks(tensor, **fields))
    assert [veil_pb2.TensorChunk.FromString(raw) for raw in encoded] == expected


@pytest.mark.parametrize("numel", [3, CHUNK_BYTES // 8], ids=["small", "large"])
def test_decode_chunk_reads_protobuf_field_order(numel: int) -> None:
    """Protobuf writes the data before the clock field; the decoder finds it anywhere."""
    tensor = torch.arange(numel, dtype=torch.int64)
    (chunk,) = tensor_chunks(tensor, sender=1, seq=4, tag="t", clock=2**40)
    decoded = wire.decode_chunk(chunk.SerializeToString())
    assert bytes(decoded.data) == chunk.data
    assert decoded.header == veil_pb2.TensorChunk(**{**_fields(chunk), "data": b""})
    assert torch.equal(Reassembler().add(decoded), tensor)


def test_decoded_tensor_owns_writable_memory() -> None:
    tensor = torch.arange(CHUNK_BYTES // 8 * 2 + 1)
    reassembler = Reassembler()
    outs = [reassembler.add(wire.decode_chunk(raw)) for raw in wire.encoded_chunks(tensor)]
    out = outs[-1]
    assert torch.equal(out, tensor)
    out.fill_(0)  # the received bytes are not aliased (and not read-only)


@pytest.mark.parametrize("cut", [1, 40, wire.SMALL_CHUNK_BYTES])
def test_decode_chunk_rejects_truncated_messages(cut: int) -> None:
    (raw,) = wire.encoded_chunks(torch.arange(CHUNK_BYTES // 8), tag="t")
    with pytest.raises(WireError):
        wire.decode_chunk(raw[:-cut])


@pytest.mark.parametrize(
    "tensor",
    [
        torch.arange(12, dtype=torch.int64).reshape(3, 4).t(),
        torch.randn(4, 3).to(torch.bfloat16).t(),
        torch.tensor([1 + 2j, -3j], dtype=torch.complex64).conj(),
        torch.arange(6, dtype=torch.int16)[::2],
    ],
    ids=["transposed", "bfloat16-transposed", "conjugate-view", "strided"],
)
def test_small_chunk_keeps_the_logical_layout(tensor: torch.Tensor) -> None:
    """The one-message path reads views as the tensor they show, not their storage."""
    (raw,) = wire.encoded_chunks(tensor, sender=1, seq=2, tag="t", clock=3)
    assert veil_pb2.TensorChunk.FromString(raw) == next(
        tensor_chunks(tensor, sender=1, seq=2, tag="t", clock=3)
    )
    assert torch.equal(Reassembler().add(wire.decode_chunk(raw)), tensor.resolve_conj())


def _vm_flags(address: int) -> list[str]:
    """The VmFlags of this process's mapping that holds ``address`` (Linux's smaps)."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        first = line.split(maxsplit=1)[0]
        if "-" in first and not first.endswith(":"):
            start, end = (int(x, 16) for x in first.split("-"))
            inside = start <= address < end
        elif inside and first == "VmFlags:":
            return line.split()[1:]
    raise AssertionError(f"no mapping holds address {address:#x}")


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="reads Linux's /proc")
def test_large_tensors_land_in_huge_pages_of_their_own() -> None:
    tensor = torch.arange(wire.HUGE_PAGE_TENSOR_BYTES // 8, dtype=torch.int64)
    reassembler = Reassembler()
    first, second = (
        [reassembler.add(wire.decode_chunk(raw)) for raw in wire.encoded_chunks(t)][-1]
        for t in (tensor, tensor + 1)
    )
    assert "hg" in _vm_flags(first.data_ptr())  # madvise(MADV_HUGEPAGE)
    first.fill_(0)  # writable, and no buffer is shared between messages
    assert torch.equal(second, tensor + 1)
