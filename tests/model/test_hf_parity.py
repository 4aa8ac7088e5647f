"""Our GPT-2 against transformers.GPT2LMHeadModel on the same weights: logits, loss, masks, round trips."""

from __future__ import annotations

import pytest
import torch
import transformers  # a dev dependency: a broken install fails here, it does not skip the parity suite

from gpt2 import GPT2Config, GPT2LMHeadModel

CONFIGS = {
    "tiny": dict(n_layer=2, n_head=4, n_embd=64, n_positions=128, vocab_size=512),
    # odd shapes: 6 heads of width 32, short context, a vocabulary that is no power of two, padded
    "odd-padded": dict(n_layer=3, n_head=6, n_embd=192, n_positions=100, vocab_size=1000, pad_vocab_size_multiple=64),
    "relu-inner": dict(n_layer=1, n_head=2, n_embd=48, n_positions=64, vocab_size=300, n_inner=80,
                       activation_function="relu", layer_norm_epsilon=1e-6),
    "one-head-exact-gelu": dict(n_layer=2, n_head=1, n_embd=40, n_positions=50, vocab_size=257,
                                activation_function="gelu", pad_vocab_size_multiple=128),
}
NO_DROP = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


def hf_model_from(config: GPT2Config) -> transformers.GPT2LMHeadModel:
    d = config.to_hf_dict()
    d.pop("pad_vocab_size_multiple")
    hf_cfg = transformers.GPT2Config(**d)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(hf_cfg).eval()


def pair(name: str, tmp_path, *, safe: bool = True) -> tuple[GPT2LMHeadModel, transformers.GPT2LMHeadModel]:
    """An HF model with random weights, saved by HF, loaded by us."""
    config = GPT2Config(**CONFIGS[name], **NO_DROP)
    hf = hf_model_from(config)
    # HF's init leaves biases at zero and LayerNorms at one; randomise them so every weight is exercised.
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    hf.save_pretrained(tmp_path / "hf", safe_serialization=safe)
    ours = GPT2LMHeadModel.from_pretrained(tmp_path / "hf", pad_vocab_size_multiple=config.pad_vocab_size_multiple)
    return ours, hf


def left_padded_batch(vocab: int, lengths: list[int], T: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (len(lengths), T), generator=g)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, T - n :] = 1
        ids[i, : T - n] = 0
    return ids, mask


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_logits_and_loss_match_hf(name: str, impl: str, tmp_path) -> None:
    ours, hf = pair(name, tmp_path)
    ours.config.attn_implementation = impl
    for block in ours.transformer.h:
        block.attn.attn_implementation = impl
    V = ours.config.vocab_size
    T = min(37, ours.config.n_positions)
    ids = torch.randint(0, V, (3, T), generator=torch.Generator().manual_seed(0))
    targets = torch.cat([ids[:, 1:], torch.full((3, 1), -100)], dim=1)
    with torch.no_grad():
        ref = hf(ids, labels=ids)
        out = ours(ids, targets=targets)
    assert out.logits.shape == ref.logits.shape
    assert (out.logits - ref.logits).abs().max().item() <= 1e-4
    assert abs(out.loss.item() - ref.loss.item()) <= 1e-5


@pytest.mark.parametrize("name", ["tiny", "odd-padded"])
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_left_padded_attention_mask_matches_hf(name: str, impl: str, tmp_path) -> None:
    ours, hf = pair(name, tmp_path)
    for block in ours.transformer.h:
        block.attn.attn_implementation = impl
    T = 24
    ids, mask = left_padded_batch(ours.config.vocab_size, [24, 17, 5, 1], T)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    # A padding position's prediction of the first real token is meaningless (and its logits are
    # implementation-defined), so that token is no label either.
    first_real = torch.zeros_like(mask).scatter_(1, (mask == 0).sum(1, keepdim=True).clamp(max=T - 1), 1)
    labels = ids.masked_fill((mask == 0) | (first_real == 1), -100)
    targets = torch.cat([labels[:, 1:], torch.full((4, 1), -100)], dim=1)
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask, position_ids=position_ids, labels=labels)
        out = ours(ids, attention_mask=mask, targets=targets)
    real = mask.bool()
    assert torch.isfinite(out.logits).all()
    assert (out.logits[real] - ref.logits[real]).abs().max().item() <= 1e-4
    assert abs(out.loss.item() - ref.loss.item()) <= 1e-5


def test_padded_row_equals_unpadded_row(tmp_path) -> None:
    ours, _ = pair("odd-padded", tmp_path)
    ids, mask = left_padded_batch(ours.config.vocab_size, [20, 9], 20)
    with torch.no_grad():
        batch = ours(ids, attention_mask=mask).logits
        alone = ours(ids[1:, 11:]).logits
    assert (batch[1, 11:] - alone[0]).abs().max().item() <= 1e-5


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "pytorch_model.bin"])
def test_our_save_loads_in_transformers(safe: bool, tmp_path) -> None:
    config = GPT2Config(**CONFIGS["odd-padded"], **NO_DROP)
    torch.manual_seed(3)
    ours = GPT2LMHeadModel(config).eval()
    ours.save_pretrained(tmp_path / "ours", safe_serialization=safe)
    expected = "model.safetensors" if safe else "pytorch_model.bin"
    assert (tmp_path / "ours" / expected).is_file()
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "ours").eval()
    ids = torch.randint(0, config.vocab_size, (2, 50))
    with torch.no_grad():
        assert (ours(ids).logits - hf(ids).logits).abs().max().item() <= 1e-4
    # and back: our loader reads what it wrote, bit for bit
    again = GPT2LMHeadModel.from_pretrained(tmp_path / "ours")
    for (k, a), (_, b) in zip(ours.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "pytorch_model.bin"])
def test_hf_save_loads_in_ours(safe: bool, tmp_path) -> None:
    ours, hf = pair("tiny", tmp_path, safe=safe)
    ids = torch.randint(0, 512, (2, 30))
    with torch.no_grad():
        assert (ours(ids).logits - hf(ids).logits).abs().max().item() <= 1e-4


def test_saved_keys_are_hf_names_without_wrapper_prefixes(tmp_path) -> None:
    from safetensors.torch import load_file

    model = GPT2LMHeadModel(GPT2Config.from_preset("tiny"))
    compiled_like = torch.nn.Module()
    compiled_like._orig_mod = model  # what torch.compile wraps the module in
    from gpt2.model.hf import save_pretrained

    save_pretrained(compiled_like, tmp_path / "m")  # type: ignore[arg-type]
    keys = set(load_file(tmp_path / "m" / "model.safetensors"))
    hf_keys = set(hf_model_from(model.config).state_dict()) - {"lm_head.weight"}
    assert keys == hf_keys
