"""Transformer models that run unchanged in plaintext and on secret shares.

One file per family (:mod:`veil.nn.bert`, :mod:`veil.nn.gpt2`, :mod:`veil.nn.llama`) on the building
blocks of :mod:`veil.nn.modules`; every nonlinear or data-dependent step goes through a backend
``ops`` (:mod:`veil.nn.backend`): exact float, the float twins of the MPC approximations, or the
MPC protocols on secret shares (:mod:`veil.nn.private`).  Example::

    model = LlamaForCausalLM.from_hf(hf_model)       # explicit Hugging Face name mapping
    ops = ExactBackend()
    logits = model(ops, input_ids)                    # (batch, seq, vocab)
    tokens = generate(model, ops, input_ids, 8)       # per-step indices, KV cache inside
"""
