"""The client side of private inference: share inputs, run, reconstruct outputs.

The client never sends a plaintext input anywhere: it splits each tensor into three
replicated shares (:func:`mpc.deal`), gives party i only its pair, and rebuilds the
outputs from the three parties' pairs (:func:`mpc.reconstruct`, which also checks
that the parties' overlapping components agree).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import torch

from mpc.communicator import WORLD_SIZE, PeerError
from mpc.fixedpoint import FixedPoint
from mpc.sharing import deal, reconstruct
from parties import tls
from parties.config import ClusterConfig
from parties.wire import Reassembler, tensor_chunks
from proto import veil_pb2, veil_pb2_grpc

if TYPE_CHECKING:
    from typing_extensions import Self


class InferenceError(RuntimeError):
    """A party refused or failed a request; the message names the party."""

    def __init__(self, rank: int, error: grpc.RpcError):
        super().__init__(f"party {rank}: {error.code().name}: {error.details()}")
        self.rank = rank
        self.code = error.code()


class InferenceClient:
    """Talks to the three parties' Inference services with its own certificate."""

    def __init__(self, config: ClusterConfig, cert: Path | None = None, key: Path | None = None):
        self.config = config
        self.fxp = FixedPoint(config.frac_bits)
        self._channels = [
            tls.open_channel(config, spec.address, cert, key) for spec in config.parties
        ]
        self._stubs = [veil_pb2_grpc.InferenceStub(channel) for channel in self._channels]

    def infer(
        self,
        program: str,
        inputs: dict[str, torch.Tensor],
        options: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> dict[str, torch.Tensor]:
        """Run ``program`` on secret-shared ``inputs``; return the reconstructed outputs."""
        timeout = timeout or self.config.timeout
        request_id = uuid.uuid4().hex
        shares = {name: deal(value, self.fxp) for name, value in inputs.items()}
        run = veil_pb2.RunRequest(request_id=request_id, program=program, options=options or {})
        with ThreadPoolExecutor(WORLD_SIZE) as pool:

            def at_all_parties(call: Callable[[int], Any]) -> list[Any]:
                return list(pool.map(lambda rank: _named(rank, call), range(WORLD_SIZE)))

            at_all_parties(lambda rank: self._upload(rank, request_id, shares, timeout))
            replies = at_all_parties(lambda rank: self._stubs[rank].Run(run, timeout=timeout))
            names = list(replies[0].outputs)
            pairs = {
                name: at_all_parties(lambda rank, n=name: self._fetch(rank, request_id, n, timeout))
                for name in names
            }
        return {
            name: reconstruct(pairs[name], replies[0].frac_bits[name], self.fxp) for name in names
        }

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _upload(self, rank: int, request_id: str, shares: dict, timeout: float) -> None:
        def messages():
            for name, (pairs, frac_bits) in shares.items():
                for chunk in tensor_chunks(pairs[rank], tag=name):
                    yield veil_pb2.UploadChunk(
                        request_id=request_id, chunk=chunk, frac_bits=frac_bits
                    )

        self._stubs[rank].Upload(messages(), timeout=timeout)

    def _fetch(self, rank: int, request_id: str, name: str, timeout: float) -> torch.Tensor:
        reassembler = Reassembler()
        fetch = veil_pb2.FetchRequest(request_id=request_id, name=name)
        for chunk in self._stubs[rank].Fetch(fetch, timeout=timeout):
            tensor = reassembler.add(chunk)
            if tensor is not None:
                return tensor
        raise PeerError(rank, f"ended output {name!r} mid-tensor")


def _named(rank: int, call: Callable[[int], Any]) -> Any:
    """Run ``call(rank)``, turning gRPC errors into an InferenceError naming the party."""
    try:
        return call(rank)
    except grpc.RpcError as exc:
        raise InferenceError(rank, exc) from None
