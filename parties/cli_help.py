"""What ``veil <command> --help`` says: a description, examples, and every option's default."""

from __future__ import annotations

import argparse
from typing import Any


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults appended to each option's help; examples kept as written.  An empty default
    (None, [], off) says nothing, so it is left out rather than printed as "None"."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, [], False) or action.required:
            return action.help or ""
        return super()._get_help_string(action)


CONFIG = "cluster/cluster.toml"
DESCRIPTIONS = {
    "certs": (
        "Create a cluster CA, a certificate and key for each party and client, and the "
        "cluster config (cluster.toml) that every party and client reads."
    ),
    "party": (
        "Run one compute party: connect to its peers over mutual TLS, run one SPMD program "
        "fn(party) (the cluster health check by default), print its result and exit."
    ),
    "serve": (
        "Run one compute party that serves the model programs (and any --program) to "
        "clients until stopped; start it on each party's host."
    ),
    "launch": (
        "Run all three parties on this machine: once with a program (default), or as "
        "serving parties with --serve, restarted after a failure."
    ),
    "share": (
        "Model owner: secret-share a transformers model's weights to the serving parties "
        "under a name; each party receives only its own shares. A directory of "
        "*.safetensors or pytorch_model*.bin weights is read one layer at a time, so the "
        "model may be larger than this machine's memory."
    ),
    "infer": (
        "Client: tokenize here, secret-share the token ids, run a task on a shared model "
        "and print what only this client reconstructs; or, with --program, run a served "
        "program on torch.save'd tensors."
    ),
    "gateway": (
        "Client: serve an OpenAI-compatible API (/v1/models, /v1/completions, "
        "/v1/chat/completions, streaming included) on this machine for shared decoders; "
        "prompts are tokenized and answers reconstructed here, never sent in the clear."
    ),
    "estimate": (
        "Price a request before running it: bytes per party, critical-path rounds and "
        "LAN/WAN time, from a dry run of the same protocol code with no cryptography."
    ),
}
EXAMPLES = {
    "certs": [
        "veil certs --out cluster/ --client alice --client owner",
        "veil certs --out cluster/ --address p0:50051 --address p1:50051 --address p2:50051",
    ],
    "party": [f"veil party --config {CONFIG} --rank 0"],
    "serve": [f"veil serve --config {CONFIG} --rank 0"],
    "launch": [f"veil launch --config {CONFIG}", f"veil launch --config {CONFIG} --serve"],
    "share": [
        (
            f"veil share --config {CONFIG} --cert cluster/owner.pem --key cluster/owner.key "
            "--model minilm --hf minilm"
        )
    ],
    "infer": [
        f'veil infer --config {CONFIG} --model minilm --task embed --text "A man eats."',
        (
            f"veil infer --config {CONFIG} --model smol --task generate --tokenizer smollm2 "
            '--text "Hi" --max-new-tokens 4'
        ),
    ],
    "gateway": [
        (
            f"veil gateway --config {CONFIG} --cert cluster/client.pem --key cluster/client.key "
            "--model smol --tokenizer smollm2 --port 8000"
        )
    ],
    "estimate": [
        "veil estimate --model smollm2 --seq 32 --new-tokens 8",
        "veil estimate --model bert --seq 128 --batch 4 --rtt-ms 10 --bandwidth 1000",
    ],
}


def texts(name: str) -> dict[str, Any]:
    """The keyword arguments of ``add_parser`` for subcommand ``name``."""
    indented = "\n".join(f"  {line}" for line in EXAMPLES[name])
    return {
        "description": DESCRIPTIONS[name],
        "epilog": f"examples:\n{indented}",
        "formatter_class": Formatter,
    }
