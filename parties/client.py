"""The client side of private inference: share inputs, run, reconstruct outputs.

The client never sends a plaintext input anywhere: it splits each tensor into three
replicated shares (:func:`veil.mpc.deal`), gives party i only its pair, and rebuilds the
outputs from the three parties' pairs (:func:`veil.mpc.reconstruct`, which also checks
that the parties' overlapping components agree).  A model owner's weights go
seed-compressed instead (:mod:`veil.mpc.seeded`): party 0 gets two AES-CTR seeds per
weight and no weight data, parties 1 and 2 a seed and one component each.

:class:`InferenceClient` runs any named program; :class:`VeilClient` adds the model
API on top: a model owner shares a ``transformers`` model once
(:meth:`VeilClient.share_model`), and clients ask for sentence embeddings, logits or
greedy generations of that model by name.  Token ids are secret-shared at the client
and the results (embeddings, logits, generated ids) are reconstructed only there.

When a request fails the client waits a short grace period for every party's answer
and raises one :class:`InferenceError` that names the party at fault (the one whose
own call failed, rather than those that only saw it go) and quotes every party.
"""

from __future__ import annotations

import json
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import torch

from veil.mpc.communicator import WORLD_SIZE
from veil.mpc.fixedpoint import FixedPoint
from veil.mpc.seeded import deal_seeded, uploads
from veil.mpc.sharing import deal, reconstruct
from veil.parties import retry, tls
from veil.parties.config import ClusterConfig
from veil.parties.costs import RequestCost
from veil.parties.party_identity import misdirected
from veil.parties.wire import Reassembler, tensor_chunks
from veil.proto import veil_pb2, veil_pb2_grpc

if TYPE_CHECKING:
    from typing_extensions import Self

FAILURE_GRACE_SECONDS = 3.0
"""After one party's call fails, how long to wait for the others' answers."""
VERIFY_TIMEOUT_SECONDS = 10.0
"""How long the first handshake with each party may take before the client looks closer."""
RUN_TIMEOUT_FACTOR = 4.0
"""Default deadline of a Run call (queueing + running): this many times the config timeout."""


class InferenceError(RuntimeError):
    """A request failed or was refused; ``rank`` is the party at fault, ``code`` its status.

    ``parties`` holds what each party that failed answered (``"CODE: details"``) and
    ``answers`` the same as (status, text), by rank.
    """

    def __init__(
        self,
        rank: int,
        code: grpc.StatusCode | None,
        message: str,
        parties: dict[int, str] | None = None,
        answers: dict[int, tuple[grpc.StatusCode | None, str]] | None = None,
    ):
        super().__init__(message)
        self.rank = rank
        self.code = code
        self.parties = parties or {}
        self.answers = answers or {}


class InferenceClient:
    """Talks to the three parties' Inference services with its own certificate."""

    def __init__(
        self,
        config: ClusterConfig,
        cert: Path | None = None,
        key: Path | None = None,
        run_timeout: float | None = None,
    ):
        self.config = config
        self.fxp = FixedPoint(config.frac_bits)
        self.run_timeout = run_timeout or RUN_TIMEOUT_FACTOR * config.timeout
        self._cert, self._key = cert, key
        self._verified = False
        self._channels = [tls.party_channel(config, rank, cert, key) for rank in range(WORLD_SIZE)]
        self._stubs = [veil_pb2_grpc.InferenceStub(channel) for channel in self._channels]
        self.last_cost: RequestCost | None = None
        """What the last successful request cost: the wall time here and each party's report."""

    def infer(
        self,
        program: str,
        inputs: dict[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
        options: dict[str, str] | None = None,
        timeout: float | None = None,
        seeded: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Run ``program`` on secret-shared ``inputs``; return the reconstructed outputs.

        ``seeded`` deals the inputs seed-compressed (a model owner's weights, see
        :meth:`_upload`).

        ``timeout`` bounds the upload and each fetch (default: ``run_timeout``, the bound
        of the Run call, which includes waiting in the parties' queue).

        ``inputs`` may be a lazy iterable of (name, tensor): each tensor is dealt and
        streamed to the parties before the next is produced (a model's weights).

        A request the parties refuse for now (busy, reconnecting) is sent again with
        backoff until ``run_timeout`` has passed (:mod:`veil.parties.retry`); lazy
        inputs cannot be replayed, so their request is not.
        """
        timeout = timeout or self.run_timeout  # uploads of large models take a while
        self._verify_parties()
        if not isinstance(inputs, dict):
            return self._infer_once(program, inputs, options, timeout, seeded)
        return retry.with_retries(
            lambda: self._infer_once(program, inputs, options, timeout, seeded),
            deadline=time.monotonic() + self.run_timeout,
            should_retry=lambda exc: (
                isinstance(exc, InferenceError) and retry.retryable(exc.answers)
            ),
        )

    def _infer_once(
        self,
        program: str,
        inputs: dict[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
        options: dict[str, str] | None,
        timeout: float,
        seeded: bool = False,
    ) -> dict[str, torch.Tensor]:
        start = time.perf_counter()
        request_id = uuid.uuid4().hex
        items = inputs.items() if isinstance(inputs, dict) else inputs
        self._upload(request_id, items, timeout, seeded)
        run = veil_pb2.RunRequest(request_id=request_id, program=program, options=options or {})
        replies = _at_all(
            [self._stubs[rank].Run.future(run, timeout=self.run_timeout) for rank in range(3)]
        )
        names = list(replies[0].outputs)
        outputs = {}
        for name in names:
            calls = [self._fetch_call(rank, request_id, name, timeout) for rank in range(3)]
            pairs = _at_all(calls)
            outputs[name] = reconstruct(pairs, replies[0].frac_bits[name], self.fxp)
        self.last_cost = RequestCost(time.perf_counter() - start, tuple(r.cost for r in replies))
        return outputs

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _verify_parties(self) -> None:
        """Refuse, before sending anything, if an address leads to the wrong party."""
        if self._verified:
            return
        wait = min(self.config.connect_timeout, VERIFY_TIMEOUT_SECONDS)
        for rank, channel in enumerate(self._channels):
            why = misdirected(self.config, rank, channel, self._cert, self._key, wait)
            if why is not None:
                raise InferenceError(rank, grpc.StatusCode.UNAUTHENTICATED, why)
        self._verified = True

    def _upload(
        self,
        request_id: str,
        items: Iterable[tuple[str, torch.Tensor]],
        timeout: float,
        seeded: bool = False,
    ) -> None:
        """Deal each tensor and stream party i its pair, one tensor at a time (bounded memory).

        ``seeded`` deals seed-compressed instead (:mod:`veil.mpc.seeded`): party 0 gets two
        seeds per tensor, parties 1 and 2 a seed and one component, as upload parts.
        """
        feeds: list[queue.Queue] = [queue.Queue(maxsize=4) for _ in range(WORLD_SIZE)]
        stop = threading.Event()

        def messages(rank: int) -> Iterator[veil_pb2.UploadChunk]:
            while (item := feeds[rank].get()) is not None:
                name, tensor, frac_bits = item
                for chunk in tensor_chunks(tensor, tag=name):
                    yield veil_pb2.UploadChunk(
                        request_id=request_id, chunk=chunk, frac_bits=frac_bits
                    )

        calls = [
            self._stubs[rank].Upload.future(messages(rank), timeout=timeout)
            for rank in range(WORLD_SIZE)
        ]

        def put(rank: int, item: Any) -> None:
            while not stop.is_set():
                if calls[rank].done():
                    return  # the call failed: _at_all reports why
                try:
                    feeds[rank].put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue

        try:
            for name, value in items:
                if seeded:
                    for payload in deal_seeded(torch.as_tensor(value), self.fxp):
                        for part in uploads(name, payload):
                            put(payload.rank, (*part, payload.frac_bits))
                    continue
                pairs, frac_bits = deal(torch.as_tensor(value), self.fxp)
                for rank in range(WORLD_SIZE):
                    put(rank, (name, pairs[rank], frac_bits))
        finally:
            for rank in range(WORLD_SIZE):
                put(rank, None)
        try:
            _at_all(calls)
        finally:
            stop.set()

    def _fetch_call(self, rank: int, request_id: str, name: str, timeout: float) -> _Background:
        fetch = veil_pb2.FetchRequest(request_id=request_id, name=name)
        call = self._stubs[rank].Fetch(fetch, timeout=timeout)

        def read() -> torch.Tensor:
            reassembler = Reassembler()
            for chunk in call:
                tensor = reassembler.add(chunk)
                if tensor is not None:
                    return tensor
            raise InferenceError(rank, None, f"party {rank} ended output {name!r} mid-tensor")

        return _Background(read, cancel=call.cancel)


class _Background:
    """A callable run on its own thread, with the ``done/result/cancel`` of a gRPC future."""

    def __init__(self, fn: Callable[[], Any], cancel: Callable[[], Any]):
        self._result: Any = None
        self._error: BaseException | None = None
        self._cancel = cancel
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self._result = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised by result()
            self._error = exc

    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self, timeout: float | None = None) -> Any:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise grpc.FutureTimeoutError()
        if self._error is not None:
            raise self._error
        return self._result

    def cancel(self) -> None:
        self._cancel()


def _at_all(calls: list[Any]) -> list[Any]:
    """Every party's result; on failure one InferenceError naming the party at fault.

    Once a call has failed the others get :data:`FAILURE_GRACE_SECONDS` to answer (a
    party whose peer failed fails too, naming it); calls still pending are cancelled,
    so a stalled party cannot stall the client.
    """
    results: list[Any] = [None] * len(calls)
    errors: dict[int, BaseException] = {}
    first_failure: float | None = None
    pending = set(range(len(calls)))

    while pending:
        for rank in sorted(pending):
            call = calls[rank]
            if not call.done():
                continue
            pending.discard(rank)
            try:
                results[rank] = call.result()
            except (grpc.RpcError, InferenceError, grpc.FutureCancelledError) as exc:
                errors[rank] = exc
                first_failure = first_failure or time.monotonic()
        if pending and first_failure and time.monotonic() - first_failure > FAILURE_GRACE_SECONDS:
            for rank in pending:
                calls[rank].cancel()
                errors[rank] = _Unanswered(rank)
            break
        if pending:
            time.sleep(0.01)
    if errors:
        raise _diagnose(errors)
    return results


class _Unanswered(Exception):
    def __init__(self, rank: int):
        super().__init__(f"no answer within {FAILURE_GRACE_SECONDS:g} s of the others failing")
        self.rank = rank


def _describe(rank: int, error: BaseException) -> tuple[grpc.StatusCode | None, str]:
    if isinstance(error, grpc.RpcError) and hasattr(error, "code"):
        return error.code(), f"{error.code().name}: {error.details()}"
    return None, str(error)


def _diagnose(errors: dict[int, BaseException]) -> InferenceError:
    """The party at fault: one unreachable/silent itself, else the peer the others name."""
    described = {rank: _describe(rank, err) for rank, err in errors.items()}
    culprit: int | None = None
    for rank, (code, text) in sorted(described.items()):
        silent = code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        answered = any(
            phrase in text for phrase in ("stopped serving", "is not serving", "reconnecting")
        )
        if (silent and not answered) or isinstance(errors[rank], _Unanswered):
            culprit = rank
            break
    if culprit is None:  # a party that failed on its own, not because of a peer
        for rank, (code, text) in sorted(described.items()):
            own = re.search(rf"party {rank} failed: (\w+)", text)
            peer_failure = own is not None and own.group(1) in ("PeerError", "PeerTimeoutError")
            if code == grpc.StatusCode.INTERNAL and own is not None and not peer_failure:
                culprit = rank
                break
    if culprit is None:  # a party refusing on its own ground; the others only saw it refuse
        for rank, (_, text) in sorted(described.items()):
            if f"party {rank}: " in text and "not every party is ready" not in text:
                culprit = rank
                break
    if culprit is None:  # the peer the others name; in a chain, the innermost mention
        for rank, (_, text) in sorted(described.items()):
            mentions = re.findall(r"Peer(?:Timeout)?Error: party (\d)", text)
            if mentions:
                culprit = int(mentions[-1])
                break
    if culprit is None:
        culprit = min(described)
    code = described.get(culprit, described[min(described)])[0]
    if code is None:  # the culprit did not answer: report what the others said
        code = next((c for c, _ in described.values() if c is not None), None)
    texts = {rank: text for rank, (_, text) in sorted(described.items())}
    reasons = {re.sub(r"party \d: ", "", text) for text in texts.values()}
    if len(texts) == WORLD_SIZE and len(reasons) == 1:  # the same refusal everywhere
        message = f"refused by every party: {reasons.pop()}"
    else:
        detail = "; ".join(f"party {rank}: {text}" for rank, text in texts.items())
        message = f"request failed at party {culprit} ({detail})"
    return InferenceError(culprit, code, message, texts, answers=described)


# -- models ------------------------------------------------------------------------------


class VeilClient:
    """Model-level private inference: share a model once, then embed / logits / generate.

    ``VeilClient(config, cert, key)``; the model owner calls :meth:`share_model` once,
    clients then call :meth:`embed`, :meth:`logits` or :meth:`generate` with token ids
    (or :meth:`embed_texts` / :meth:`generate_text` with a tokenizer, which runs here).
    """

    def __init__(
        self,
        config: ClusterConfig,
        cert: Path | None = None,
        key: Path | None = None,
        run_timeout: float | None = None,
    ):
        self.api = InferenceClient(config, cert, key, run_timeout=run_timeout)
        self._specs: dict[str, Any] = {}  # model name -> validation.ModelSpec, asked once

    def share_model(
        self,
        name: str,
        hf_model: Any,
        norm_headroom_bits: int | None = None,
        show_progress: bool = False,
        part_bytes: int | None = None,
    ) -> int:
        """Secret-share a ``transformers`` model's weights to the parties under ``name``.

        ``hf_model`` is a loaded ``transformers`` model, or a
        :class:`~veil.nn.lazy_import.LazyCheckpoint` for a model read from its checkpoint one
        layer at a time (larger than the owner's memory).
        Returns the number of weight tensors sent.  The weights are dealt seed-compressed
        (:mod:`veil.mpc.seeded`): party 0 receives two 16-byte seeds per weight and no
        weight data, parties 1 and 2 a seed and one component (8 bytes per parameter);
        each party expands them into its pair.  The class name and config (public)
        travel as options.
        ``show_progress`` draws a bar over the weights as they are dealt and sent.
        The weights go in parts of at most ``part_bytes`` of data per party (default
        :data:`~veil.parties.share_sessions.SHARE_PART_BYTES`), one request each, so no
        party holds more than one part before storing it; the last part commits.
        """
        from veil.nn.lazy_import import LazyCheckpoint
        from veil.nn.private import NORM_HEADROOM_BITS, import_hf
        from veil.nn.progress import Progress, tracked
        from veil.parties.models import FAMILIES, SHARE_PROGRAM, WEIGHT_PREFIX, unique_params
        from veil.parties.share_sessions import SHARE_PART_BYTES, part_options, stream_parts

        if isinstance(hf_model, LazyCheckpoint):
            family, config_json = hf_model.family, hf_model.config_json
            count, weights = len(hf_model.shapes), hf_model.weights()
        else:
            family, config_json = type(hf_model).__name__, None
        if family not in FAMILIES:
            raise ValueError(f"unsupported model class {family}; supported: {', '.join(FAMILIES)}")
        if config_json is None:
            with torch.no_grad():
                params = unique_params(import_hf(hf_model))
            config_json = hf_model.config.to_json_string(use_diff=False)
            count = len(params)
            weights = ((n, v.detach().float()) for n, v in params.items())
        if norm_headroom_bits is None:
            norm_headroom_bits = NORM_HEADROOM_BITS.get(family, 0)
        options = {
            "model": name,
            "family": family,
            "config": config_json,
            "norm_headroom_bits": str(norm_headroom_bits),
        }
        progress = Progress(count, "sharing weights") if show_progress else None
        parts = stream_parts(
            tracked(weights, progress), SHARE_PART_BYTES if part_bytes is None else part_bytes
        )
        session = uuid.uuid4().hex
        total: RequestCost | None = None
        for index, (part, last) in enumerate(parts):
            named = ((WEIGHT_PREFIX + n, v) for n, v in part)
            placed = options | part_options(session, index, last=last)
            self.api.infer(SHARE_PROGRAM, named, placed, seeded=True)
            total = self.api.last_cost if total is None else total.then(self.api.last_cost)
        self.api.last_cost = total  # what the whole share cost, every part
        return count

    @property
    def last_cost(self) -> RequestCost | None:
        """What the last successful request cost (see :class:`InferenceClient`)."""
        return self.api.last_cost

    def embed(
        self,
        model: str,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean-pooled BERT/MiniLM embeddings (batch, hidden), not normalised (float64)."""
        from veil.parties.models import EMBED_PROGRAM

        options = {"model": model}
        if attention_mask is not None:
            options["attention_mask"] = json.dumps(attention_mask.tolist())
        if token_type_ids is not None:
            options["token_type_ids"] = json.dumps(token_type_ids.tolist())
        ids = self._checked(EMBED_PROGRAM, model, input_ids, options)
        return self.api.infer(EMBED_PROGRAM, {"input_ids": ids}, options)["embedding"]

    def logits(self, model: str, input_ids: torch.Tensor) -> torch.Tensor:
        """The model's raw output for secret ids (decoders: (batch, seq, vocab))."""
        from veil.parties.models import LOGITS_PROGRAM

        ids = self._checked(LOGITS_PROGRAM, model, input_ids, {"model": model})
        return self.api.infer(LOGITS_PROGRAM, {"input_ids": ids}, {"model": model})["logits"]

    def generate(
        self,
        model: str,
        input_ids: torch.Tensor | list[list[int]],
        max_new_tokens: int,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Continuation (batch, max_new_tokens); only this client sees the ids.

        Greedy by default; ``do_sample`` samples with ``temperature``, ``top_k`` and
        ``top_p`` as transformers' ``generate`` does, the parties drawing the random value
        jointly (:mod:`veil.protocols.approx.sampling`).  Prompts of different lengths come
        as a list (left padded here) or left padded with their ``attention_mask``, which
        the parties see (the ids stay secret).
        """
        from veil.nn.padding import as_batch
        from veil.parties.models import GENERATE_PROGRAM

        input_ids, attention_mask = as_batch(input_ids, attention_mask)
        options = _generate_options(model, max_new_tokens, do_sample, temperature, top_k, top_p)
        if attention_mask is not None:
            options["attention_mask"] = json.dumps(torch.as_tensor(attention_mask).tolist())
        ids = self._checked(GENERATE_PROGRAM, model, input_ids, options)
        out = self.api.infer(GENERATE_PROGRAM, {"input_ids": ids}, options)
        return out["tokens"].to(torch.int64)

    def generate_stream(
        self,
        model: str,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        stop_at_eos: int | None = None,
        stoppable: bool = False,
    ) -> Iterator[torch.Tensor]:
        """:meth:`generate`, yielding each step's ids (batch,) as soon as the parties end it.

        By default the parties run all ``max_new_tokens`` steps whatever this client does,
        so they learn nothing of the output's length (closing the iterator early then waits
        for them to finish).  ``stop_at_eos`` (an end-of-sequence id) ends the stream once
        every row has produced it and ``stoppable`` lets the caller end it by closing the
        iterator; either way the parties stop a step or two later, and so learn roughly
        how long the output was (:mod:`veil.nn.stopping`).
        """
        from veil.nn.stopping import EosWatch
        from veil.parties.client_stream import stream_steps
        from veil.parties.models import GENERATE_PROGRAM, STOPPABLE_OPTION
        from veil.parties.step_streams import STREAM_OPTION

        options = _generate_options(model, max_new_tokens, do_sample, temperature, top_k, top_p)
        options[STREAM_OPTION] = "true"
        if stoppable or stop_at_eos is not None:
            options[STOPPABLE_OPTION] = "true"
        ids = self._checked(GENERATE_PROGRAM, model, input_ids, options)
        eos = EosWatch(stop_at_eos) if stop_at_eos is not None else None
        for step in stream_steps(self.api, GENERATE_PROGRAM, {"input_ids": ids}, options, "tokens"):
            yield step
            if eos is not None and eos.ended(step):
                return

    def embed_texts(self, model: str, tokenizer: Any, texts: list[str]) -> torch.Tensor:
        """L2-normalised sentence embeddings of ``texts`` (tokenised here, at the client)."""
        from veil.nn.bert import normalize

        enc = tokenizer(texts, padding=True, return_tensors="pt")
        types = enc.get("token_type_ids")
        return normalize(self.embed(model, enc["input_ids"], enc["attention_mask"], types).float())

    def generate_text(
        self, model: str, tokenizer: Any, prompt: str, max_new_tokens: int, chat: bool = False
    ) -> str:
        """Greedy continuation of ``prompt`` as text, cut at the end-of-sequence token."""
        if chat:
            from veil.nn.demo import chat_ids

            ids = chat_ids(tokenizer, prompt)
        else:
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        tokens = self.generate(model, ids, max_new_tokens)[0].tolist()
        eos = tokenizer.eos_token_id
        if eos in tokens:
            tokens = tokens[: tokens.index(eos)]
        return tokenizer.decode(tokens)

    def _checked(
        self, program: str, model: str, input_ids: torch.Tensor, options: dict[str, str]
    ) -> torch.Tensor:
        """``input_ids`` as int64 once the request passed :func:`validation.client_ids`
        (raises :class:`validation.RequestInvalid` naming the problem, before any upload)."""
        from veil.parties.validation import client_ids, fetch_spec

        if model not in self._specs:
            self._specs[model] = fetch_spec(self.api, model)
        return client_ids(program, options, input_ids, self._specs[model])

    def close(self) -> None:
        self.api.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _generate_options(
    model: str,
    max_new_tokens: int,
    do_sample: bool,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
) -> dict[str, str]:
    """A generate request's options, named as the parties read them."""
    options = {"model": model, "max_new_tokens": str(max_new_tokens)}
    if do_sample:
        options |= {"do_sample": "true", "temperature": repr(float(temperature))}
        options |= {} if top_k is None else {"top_k": str(int(top_k))}
        options |= {} if top_p is None else {"top_p": repr(float(top_p))}
    return options
