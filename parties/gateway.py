"""An OpenAI-compatible HTTP endpoint on the client's machine, in front of the three parties.

``veil gateway`` serves ``/v1/models``, ``/v1/completions`` and ``/v1/chat/completions``
(streamed or not) with FastAPI on 127.0.0.1, so any OpenAI client library works unchanged.
It is a Veil client (:class:`~veil.parties.client.VeilClient`): it tokenizes the prompt
here, secret-shares the ids to the parties and reconstructs each token here, so the prompt
and the answer are in the clear only on this machine.  Streamed answers are server-sent
events exactly as OpenAI sends them (``data: {chunk}`` lines, then ``data: [DONE]``).

The answer is cut at the tokenizer's end-of-sequence token and at ``stop`` strings, as
OpenAI cuts it.  By default the parties still run all ``max_tokens`` steps, so they learn
nothing of the answer's length; with ``early_stop`` they stop at the cut and so learn it
(:mod:`veil.nn.stopping`).  Options Veil cannot honour are refused with OpenAI's 400 error
naming the option (:mod:`veil.parties.openai_request`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from veil.parties.openai_request import Generation, OpenAIError, read_chat, read_completion

if TYPE_CHECKING:
    from veil.parties.client import InferenceError, VeilClient

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


@dataclass
class Answer:
    """One generation as the gateway streams it: text pieces, then why it ended."""

    pieces: Iterator[str]
    prompt_tokens: int
    completion_tokens: int = 0
    finish_reason: str = "length"


@dataclass
class Gateway:
    """The served models (names shared with the cluster) and the tokenizer they share."""

    client: VeilClient
    tokenizer: Any
    models: list[str]
    early_stop: bool = False
    created: int = field(default_factory=lambda: int(time.time()))

    def generate(self, request: Generation) -> Answer:
        """Start ``request`` at the parties; the first token is in when this returns, so a
        refused request raises here, before any HTTP answer has begun."""
        from veil.nn.text_stream import TextStream
        from veil.parties.client import InferenceError
        from veil.parties.validation import RequestInvalid

        if request.model not in self.models:
            raise OpenAIError(
                f"model {request.model!r} is not served here; served: {self.models}",
                "model",
                status=404,
            )
        ids = self._prompt_ids(request.prompt)
        steps = self.client.generate_stream(
            request.model,
            ids,
            request.max_new_tokens,
            do_sample=request.do_sample,
            temperature=request.temperature,
            top_p=request.top_p,
            stoppable=self.early_stop,
        )
        try:
            first = next(steps)
        except RequestInvalid as exc:
            raise OpenAIError(str(exc)) from None
        except InferenceError as exc:
            raise _server_error(exc) from None
        answer = Answer(iter(()), prompt_tokens=int(ids.shape[1]))
        text = TextStream(self.tokenizer, request.stop, stop_at_eos=True)

        def decoded() -> Iterator[str]:
            step = first
            try:
                while True:
                    answer.completion_tokens += 1
                    piece = text.push(int(step[0]))
                    if piece:
                        yield piece
                    if text.done:
                        answer.finish_reason = "stop"
                        return
                    step = next(steps, None)
                    if step is None:
                        break
                rest = text.flush()
                if rest:
                    yield rest
            finally:
                steps.close()  # stoppable: the parties stop; else they finish every step

        def pieces() -> Iterator[str]:
            try:
                yield from decoded()
            except InferenceError as exc:
                raise _server_error(exc) from None

        answer.pieces = pieces()
        return answer

    def _prompt_ids(self, prompt: str | list[dict[str, str]]):
        if isinstance(prompt, str):
            return self.tokenizer(prompt, return_tensors="pt")["input_ids"]
        if not getattr(self.tokenizer, "chat_template", None):
            raise OpenAIError("the gateway's tokenizer has no chat template", "messages")
        text = self.tokenizer.apply_chat_template(
            prompt, tokenize=False, add_generation_prompt=True
        )
        return self.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]


def _server_error(exc: InferenceError) -> OpenAIError:
    return OpenAIError(f"the parties failed: {exc}", status=502, kind="server_error")


def create_app(gateway: Gateway):
    """The FastAPI application of ``gateway`` (run it with uvicorn)."""
    from fastapi import Body, FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse

    app = FastAPI(title="Veil gateway", docs_url=None, redoc_url=None)

    @app.exception_handler(OpenAIError)
    def refused(request: Request, exc: OpenAIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": gateway.created, "owned_by": "veil"}
                for name in gateway.models
            ],
        }

    def respond(request: Generation, chat: bool):
        answer = gateway.generate(request)
        reply = _Reply(request, answer, chat)
        if request.stream:
            return StreamingResponse(reply.events(), media_type="text/event-stream")
        return reply.whole()

    @app.post("/v1/completions")
    def completions(body: Any = Body(...)):  # noqa: B008 - FastAPI's way to take the raw body
        return respond(read_completion(body), chat=False)

    @app.post("/v1/chat/completions")
    def chat_completions(body: Any = Body(...)):  # noqa: B008
        return respond(read_chat(body), chat=True)

    return app


@dataclass
class _Reply:
    """An answer in OpenAI's shapes: one JSON object, or a stream of chunks."""

    request: Generation
    answer: Answer
    chat: bool
    id: str = field(init=False)
    created: int = field(default_factory=lambda: int(time.time()), init=False)

    def __post_init__(self) -> None:
        self.id = f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex}"

    def whole(self) -> dict[str, Any]:
        text = "".join(self.answer.pieces)
        if self.chat:
            choice = {"message": {"role": "assistant", "content": text}}
        else:
            choice = {"text": text}
        return self._object(
            "chat.completion" if self.chat else "text_completion",
            [{"index": 0, **choice, "finish_reason": self.answer.finish_reason, "logprobs": None}],
            usage=self._usage(),
        )

    def events(self) -> Iterator[str]:
        """Server-sent events: a chunk per text piece, a last one with the finish reason."""
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        try:
            if self.chat:
                yield _event(self._object(kind, [self._choice({"role": "assistant"})]))
            for piece in self.answer.pieces:
                yield _event(self._object(kind, [self._choice(piece)]))
            end = self._choice({} if self.chat else "", self.answer.finish_reason)
            yield _event(self._object(kind, [end]))
            if self.request.include_usage:
                yield _event(self._object(kind, [], usage=self._usage()))
        except OpenAIError as exc:  # the answer had begun: report it in the stream
            yield _event(exc.body())
        yield "data: [DONE]\n\n"

    def _choice(self, content: str | dict[str, str], finish: str | None = None) -> dict:
        if self.chat:
            delta = content if isinstance(content, dict) else {"content": content}
            return {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return {"index": 0, "text": content, "finish_reason": finish, "logprobs": None}

    def _object(self, kind: str, choices: list[dict], usage: dict | None = None) -> dict:
        body = {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.request.model,
            "choices": choices,
        }
        return body if usage is None else {**body, "usage": usage}

    def _usage(self) -> dict[str, int]:
        prompt, completion = self.answer.prompt_tokens, self.answer.completion_tokens
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }


def _event(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body)}\n\n"


# -- the command -----------------------------------------------------------------------


def add_command(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    """``veil gateway``: its options, beside the client's (--config, --cert, --key)."""
    from veil.parties.cli_help import texts

    cmd = sub.add_parser(
        "gateway", parents=parents, help="OpenAI-compatible endpoint on localhost", **texts("gateway")
    )
    cmd.add_argument(
        "--model", action="append", required=True, help="a decoder shared with `veil share`"
    )
    cmd.add_argument("--tokenizer", required=True, help="smollm2 or a tokenizer directory")
    cmd.add_argument("--host", default=DEFAULT_HOST, help="address to listen on")
    cmd.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on")
    cmd.add_argument(
        "--early-stop",
        action="store_true",
        help="stop the parties at EOS / a stop string (they learn the answer's length)",
    )
    cmd.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    import uvicorn

    from veil.parties.cli import _client_files
    from veil.parties.cli_errors import explain
    from veil.parties.cli_inputs import load_hf
    from veil.parties.client import InferenceError, VeilClient
    from veil.parties.config import ConfigError, load_config

    try:
        config = load_config(args.config, insecure=True if args.insecure else None)
        _, tokenizer = load_hf(args.tokenizer, model=False)
    except (ConfigError, ValueError, OSError) as exc:
        print(f"veil gateway: {exc}", file=sys.stderr)
        return 2
    with VeilClient(config, *_client_files(args, config), run_timeout=args.timeout) as client:
        try:
            for model in args.model:
                check_servable(client, model, tokenizer)
        except ValueError as exc:
            print(f"veil gateway: {exc}", file=sys.stderr)
            return 2
        except (InferenceError, ConfigError) as exc:
            print(f"veil gateway: {explain(exc, config, args.config)}", file=sys.stderr)
            return 1
        gateway = Gateway(client, tokenizer, list(args.model), args.early_stop)
        print(f"veil gateway: serving {', '.join(args.model)} at http://{args.host}:{args.port}/v1")
        sys.stdout.flush()
        uvicorn.run(create_app(gateway), host=args.host, port=args.port, log_level="warning")
    return 0


def check_servable(client: VeilClient, model: str, tokenizer: Any) -> None:
    """Refuse a model the gateway cannot serve: not shared, not a decoder, or a smaller
    vocabulary than the tokenizer's (its ids would be refused request by request)."""
    from veil.parties.validation import DECODERS, fetch_spec

    spec = fetch_spec(client.api, model)
    if spec.family not in DECODERS:
        raise ValueError(f"model {model!r} is a {spec.family}; the gateway serves decoders")
    if len(tokenizer) > spec.vocab_size:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but model {model!r} only "
            f"{spec.vocab_size}: they do not belong together"
        )
