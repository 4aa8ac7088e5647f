"""bf16 generation on any CPU: oneDNN's packed kernels only where the CPU runs them, the plain path
otherwise (forced here with GPT2_NO_FAST_PATH=1, so the fallback is tested on every machine)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import sharp_model

from gpt2.generate import SampleConfig, fastpath, generate
from gpt2.generate.fastpath import PackedLinear, can_pack, inference_view


@pytest.fixture(scope="module")
def packable_ckpt(tok, tmp_path_factory):
    """A model whose MLP linears are big enough to pack (256 × 1024 = MIN_PACKED_NUMEL weights)."""
    model = sharp_model(tok.n_vocab, n_embd=256, n_head=4, n_layer=1)
    assert model.transformer.h[0].mlp.c_fc.weight.numel() >= fastpath.MIN_PACKED_NUMEL
    d = tmp_path_factory.mktemp("packable")
    model.save_pretrained(d)
    tok.save(d)
    return d, model


def _generate_cli(ckpt, *extra: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "gpt2", "generate", str(ckpt), "Once upon", "--greedy",
                           "--max-new-tokens", "8", *extra], capture_output=True, text=True, env=env, timeout=300)


def test_bf16_falls_back_to_the_plain_path_when_the_cpu_cannot_pack(packable_ckpt, tok, monkeypatch) -> None:
    _, model = packable_ckpt
    bf16 = model.to(torch.bfloat16)
    try:
        monkeypatch.setattr(fastpath, "packed_bf16_supported", lambda: False)
        assert not can_pack(bf16)
        view = inference_view(bf16)
        assert not any(isinstance(m, PackedLinear) for m in view.modules())
        out = generate(bf16, tok, ["Once upon"], SampleConfig(max_new_tokens=6, temperature=0.0))
        assert out[0].completion_tokens == 6
        # fp32 packs wherever oneDNN is built in, whatever the CPU
        fp32 = model.float()
        if torch.backends.mkldnn.is_available():
            assert can_pack(fp32) and any(isinstance(m, PackedLinear) for m in inference_view(fp32).modules())
    finally:
        model.float()


@pytest.mark.parametrize("supported", [False, True], ids=["avx2", "avx512"])
def test_the_bf16_packing_decision_and_its_note_on_either_cpu(packable_ckpt, supported, monkeypatch, capsys) -> None:
    """The decision alone, with oneDNN's answer simulated (an AVX2-only CPU cannot run the packed bf16 kernels
    themselves: test_engine.py's test_packed_generation_equals_plain runs them where the CPU can)."""
    from gpt2.generate.commands import _say_dtype_path

    _, model = packable_ckpt
    bf16 = model.to(torch.bfloat16)
    try:
        monkeypatch.setattr(fastpath, "packed_bf16_supported", lambda: supported)
        assert can_pack(bf16) == supported
        _say_dtype_path(bf16)
        note = capsys.readouterr().err
        assert ("packed kernels" in note) == supported and ("emulated" in note) != supported, note
        monkeypatch.setenv("GPT2_NO_FAST_PATH", "1")
        assert not can_pack(bf16)
        _say_dtype_path(bf16)
        note = capsys.readouterr().err
        assert ("GPT2_NO_FAST_PATH is set" in note) == supported and "packed kernels" not in note, note
    finally:
        model.float()


def test_gpt2_no_fast_path_forces_the_plain_path(packable_ckpt, monkeypatch) -> None:
    _, model = packable_ckpt
    monkeypatch.setenv("GPT2_NO_FAST_PATH", "1")
    assert not can_pack(model)
    assert not any(isinstance(m, PackedLinear) for m in inference_view(model).modules())


def test_cli_generate_bf16_runs_on_any_cpu_and_says_which_path(packable_ckpt, tok) -> None:
    ckpt, model = packable_ckpt
    forced = _generate_cli(ckpt, "--dtype", "bf16", "--json", env_extra={"GPT2_NO_FAST_PATH": "1"})
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert "dtype: bf16 on the plain path" in forced.stderr and "Traceback" not in forced.stderr
    # the plain bf16 path in this process gives the same greedy tokens
    import json

    bf16 = model.to(torch.bfloat16)
    try:
        os.environ["GPT2_NO_FAST_PATH"] = "1"
        ours = generate(bf16, tok, ["Once upon"], SampleConfig(max_new_tokens=8, temperature=0.0))[0]
    finally:
        del os.environ["GPT2_NO_FAST_PATH"]
        model.float()
    assert json.loads(forced.stdout)["results"][0]["text"] == ours.text

    # as it runs by default: packed where this CPU supports it, the plain path (and a note) where not
    default = _generate_cli(ckpt, "--dtype", "bf16")
    assert default.returncode == 0, default.stderr[-2000:]
    expected = "packed kernels" if fastpath.packed_bf16_supported() else "emulated"
    assert expected in default.stderr


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="PyTorch built without oneDNN: nothing is packed")
def test_an_fp32_model_generates_under_bf16_autocast_on_the_packed_path() -> None:
    """A trainer's samples: fp32 weights under bf16 autocast, where the attention output reaches the packed
    c_proj in bf16 (oneDNN has no bf16-input/fp32-weight primitive; it crashed at 768 wide). fp32 packing runs on
    every CPU kind, so this holds everywhere; the result matches the plain path under the same autocast."""
    from gpt2 import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config.from_preset("mini", n_layer=1, n_head=12, n_embd=768, vocab_size=512)).eval()
    view = inference_view(model)
    assert isinstance(view.transformer.h[0].attn.c_proj, PackedLinear)  # 768 × 768: above MIN_PACKED_NUMEL
    x = torch.randint(0, 512, (2, 9))
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        fast, plain = view(x).logits.float(), model(x).logits.float()
    assert torch.isfinite(fast).all()
    assert (fast - plain).abs().max().item() < 0.1 * plain.abs().max().item()  # bf16 rounding, not a wrong path
