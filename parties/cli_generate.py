"""``veil infer --task generate``: print each token as it arrives from the parties.

With a tokenizer and one prompt the text is printed piece by piece; otherwise each step's
ids.  ``--stop-at-eos`` and ``--stop`` end generation early, at the parties too, which tells
them the output's length (the README's threat model); without them the parties always run
``--max-new-tokens`` steps and the text is only cut here.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch


def stream_generation(client: Any, args: argparse.Namespace, tokenizer: Any, ids) -> torch.Tensor:
    """Generate with ``client`` (a VeilClient), printing as it goes; the ids kept (batch, n)."""
    from veil.nn.text_stream import TextStream

    if (args.stop_at_eos or args.stop) and tokenizer is None:
        raise ValueError("--stop-at-eos and --stop need a tokenizer (give --text, not --ids)")
    if args.stop and len(ids) > 1:
        raise ValueError("--stop works on one prompt at a time")
    steps = client.generate_stream(
        args.model,
        ids,
        args.max_new_tokens,
        do_sample=args.do_sample,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        stop_at_eos=tokenizer.eos_token_id if args.stop_at_eos else None,
        stoppable=bool(args.stop),
    )
    text = TextStream(tokenizer, args.stop, args.stop_at_eos) if tokenizer and len(ids) == 1 else None
    kept = []
    for step in steps:
        kept.append(step)
        if text is None:
            print(f"step {len(kept)}: {step.tolist()}", flush=True)
            continue
        sys.stdout.write(text.push(int(step[0])))
        sys.stdout.flush()
        if text.done:
            steps.close()
            break
    if text is not None:
        print(text.flush(), flush=True)
    return torch.stack(kept, dim=-1)
