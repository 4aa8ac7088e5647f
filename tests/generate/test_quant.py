"""--quantize int8: the int8 kernel equals its dequantized reference, stays close to fp32, merges LoRA first,
and reaches generate, chat and serve (bad values are one error line).

    python -m pytest -q tests/generate/test_quant.py
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from gpt2 import GPT2Config, GPT2LMHeadModel
from gpt2.generate import generate
from gpt2.generate.quant import Int8Linear, quantize


def sharp_model(vocab_size: int) -> GPT2LMHeadModel:
    """A tiny model with random weights scaled up, so logits are far from flat (as tests/generate's fixture)."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config.from_preset("tiny", vocab_size=vocab_size)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0)
    return model


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_int8_kernel_equals_dequantized_reference():
    model = sharp_model(300)
    ids = torch.randint(0, 300, (3, 40))
    fast, ref = quantize(model, "int8"), quantize(model, "int8", kernel=False)
    assert isinstance(fast.transformer.h[0].mlp.c_fc, Int8Linear) and fast.transformer.h[0].mlp.c_fc.kernel
    assert isinstance(fast.lm_head, Int8Linear)
    # the kernel reads an fp32 model's activations in bf16 (its vectorised path): equal within bf16's rounding
    got, want = _logits(fast, ids), _logits(ref, ids)
    assert got.dtype == torch.float32
    assert (got - want).norm() < 0.02 * want.norm()
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() > 0.95
    # and the int8 weights really are int8, one scale per output channel
    layer = fast.transformer.h[1].attn.c_attn
    assert layer.weight_int8.dtype == torch.int8 and layer.scales.shape == (layer.out_features,)


@pytest.mark.parametrize("rows", [1, 3, 128])
def test_int8_layer_kernel_is_the_reference_on_bf16_inputs(rows):
    """One layer, as decode (1 row) and prefill (128) run it: bf16 in, the reference's product to bf16 rounding;
    fp32 in, the same product on the input rounded to bf16."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 384)
    fast, ref = Int8Linear(linear), Int8Linear(linear, kernel=False)
    x = torch.randn(rows, 256)
    want = F.linear(x.bfloat16().float(), ref.dequantized(), linear.bias.detach())  # fp32 product, bf16 input
    torch.testing.assert_close(fast(x), want, rtol=2 ** -7, atol=2 ** -7 * want.abs().max().item())
    torch.testing.assert_close(fast(x.bfloat16()).float(), want, rtol=2 ** -6, atol=2 ** -6 * want.abs().max().item())
    # the stored weight is s · q with bf16 scales, within half a step of the original per element
    err = (ref.dequantized() - linear.weight.detach()).abs()
    assert (err <= 0.51 * ref.scales.float()[:, None] + 1e-6).all()


def test_int8_stays_close_to_fp32_and_leaves_the_model_alone():
    model = sharp_model(300)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(0, 300, (2, 30))
    full, q = _logits(model, ids), _logits(quantize(model), ids)
    # random ×4 weights compound the rounding through the layers; a trained model's error is far smaller
    assert (q - full).abs().mean() < 0.03 * full.abs().mean()
    assert not torch.equal(q, full)  # it did quantize
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(model.transformer.h[0].mlp.c_fc, torch.nn.Linear)


def test_lora_is_merged_before_quantizing():
    from gpt2.model.lora import LoRAConfig, inject_lora, lora_layers, merge_lora

    model = sharp_model(300)
    inject_lora(model, LoRAConfig(rank=4, alpha=8, targets=("c_attn", "c_fc")))
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.weight.normal_(0, 0.5)  # a non-zero update, so merging matters
    ids = torch.randint(0, 300, (2, 20))
    merged = merge_lora(copy.deepcopy(model))
    torch.testing.assert_close(_logits(quantize(model), ids), _logits(quantize(merged), ids), atol=1e-5, rtol=0)
    assert lora_layers(model)  # the caller's model keeps its adapters


def test_generate_quantize_int8_cli(gpt2_main, ckpt, tok):
    from gpt2.load import load

    r = gpt2_main("generate", str(ckpt), "The quick", "--greedy", "--max-new-tokens", "12", "--ignore-eot",
                  "--json", "--quantize", "int8")
    assert r.returncode == 0, r.stderr
    model = load(ckpt, device="cpu").model
    want = generate(quantize(model), tok, "The quick", max_new_tokens=12, temperature=0, stop_at_eot=False)
    assert json.loads(r.stdout)["results"][0]["tokens"] == want[0].tokens


@pytest.mark.parametrize("verb", ["generate", "chat", "serve"])
def test_quantize_other_than_int8_is_one_error_line(gpt2_main, ckpt, verb):
    args = {"generate": [str(ckpt), "hi"], "chat": [str(ckpt), "--format", "alpaca"], "serve": [str(ckpt)]}[verb]
    r = gpt2_main(verb, *args, "--quantize", "int4")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "int4" in lines[0], r.stderr
