"""Loading HF directories: what goes wrong gets one clear error naming it."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from gpt2 import GPT2Config, GPT2LMHeadModel
from gpt2.model.hf import expected_shapes, from_hf_state_dict, resolve_source, to_hf_state_dict


@pytest.fixture
def saved(tmp_path):
    model = GPT2LMHeadModel(GPT2Config.from_preset("tiny"))
    model.save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def test_missing_directory_and_missing_files(tmp_path, saved) -> None:
    with pytest.raises(FileNotFoundError, match="no model directory at"):
        GPT2LMHeadModel.from_pretrained(tmp_path / "nope")
    (saved / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="expected one of model.safetensors"):
        GPT2LMHeadModel.from_pretrained(saved)
    (saved / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        GPT2LMHeadModel.from_pretrained(saved)


def test_wrong_architecture(saved) -> None:
    cfg = json.loads((saved / "config.json").read_text())
    cfg["model_type"] = "llama"
    (saved / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="model_type is 'llama'"):
        GPT2LMHeadModel.from_pretrained(saved)
    cfg["model_type"] = "gpt2"
    cfg["scale_attn_by_inverse_layer_idx"] = True
    (saved / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx=True is not supported"):
        GPT2LMHeadModel.from_pretrained(saved)


def test_mismatched_shapes_name_the_weight(saved) -> None:
    cfg = json.loads((saved / "config.json").read_text())
    cfg["n_embd"] = 128
    (saved / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"weight transformer\.\S+ has shape \(\d+,\) but the config asks for \(\d+,\)"):
        GPT2LMHeadModel.from_pretrained(saved)


def test_missing_and_unexpected_weights(saved) -> None:
    sd = load_file(saved / "model.safetensors")
    del sd["transformer.h.1.mlp.c_fc.bias"]
    save_file(sd, saved / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"1 weight\(s\) missing, e\.g\. transformer\.h\.1\.mlp\.c_fc\.bias"):
        GPT2LMHeadModel.from_pretrained(saved)
    sd["transformer.h.1.mlp.c_fc.bias"] = torch.zeros(256)
    sd["score.weight"] = torch.zeros(2, 64)
    save_file(sd, saved / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="unexpected weight.*score.weight"):
        GPT2LMHeadModel.from_pretrained(saved)


def test_corrupt_weight_file(saved) -> None:
    (saved / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="could not read the weights"):
        GPT2LMHeadModel.from_pretrained(saved)


def test_openai_style_names_and_wrapper_prefixes_load() -> None:
    model = GPT2LMHeadModel(GPT2Config.from_preset("tiny"))
    sd = to_hf_state_dict(model)
    # the hub's openai-community/gpt2 file: no "transformer." prefix, causal-mask buffers included
    openai = {k.removeprefix("transformer."): v for k, v in sd.items()}
    openai["h.0.attn.bias"] = torch.ones(1, 1, 128, 128)
    ddp = {"module._orig_mod." + k: v for k, v in sd.items()}
    for variant in (openai, ddp):
        ours = from_hf_state_dict(variant, model.config, shapes=expected_shapes(model))
        for k, v in ours.items():
            assert torch.equal(v, model.state_dict()[k]), k


def test_hub_id_offline_fails_clearly(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(ValueError, match="could not fetch 'openai-community/gpt2' from the Hugging Face hub"):
        resolve_source("gpt2")
    with pytest.raises(FileNotFoundError, match="not a hub id"):
        resolve_source("./no/such/dir")


def test_save_keeps_other_files_and_refuses_a_file_target(tmp_path) -> None:
    model = GPT2LMHeadModel(GPT2Config.from_preset("tiny"))
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "tokenizer.json").write_text("{}")
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "tokenizer.json").read_text() == "{}"
    assert not [p for p in (tmp_path / "m").iterdir() if p.name.endswith(".tmp")]
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError):
        model.save_pretrained(tmp_path / "f")
