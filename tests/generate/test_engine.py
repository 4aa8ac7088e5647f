"""The engine: cache vs no-cache reference, batches vs single prompts, seeds, stopping, prompts, streaming."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from conftest import sharp_model

from gpt2.generate import PromptTruncatedWarning, SampleConfig, generate, stream
from gpt2.generate.engine import _TextStream
from gpt2.generate.fastpath import PackedLinear, inference_view
from gpt2.generate.reference import reference_generate

SAMPLING = dict(temperature=0.9, top_k=40, top_p=0.95, min_p=0.02, repetition_penalty=1.3, no_repeat_ngram_size=3)


def prompts_of(lengths, vocab, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab - 1, (n,), generator=g).tolist() for n in lengths]


def test_greedy_cache_equals_reference(model) -> None:
    prompts = prompts_of([5, 17, 1, 30], model.config.vocab_size)
    out = generate(model, None, prompts, max_new_tokens=64, temperature=0, stop_at_eot=False, pack=False)
    for p, g in zip(prompts, out):
        ref = reference_generate(model, p, max_new_tokens=64, temperature=0, stop_at_eot=False)
        assert g.tokens == ref
        assert g.finish_reason == "length" and g.completion_tokens == 64 and g.prompt_tokens == len(p)
    assert len({t for g in out for t in g.tokens}) > 20  # the text varies: not one repeated token


@pytest.fixture(scope="module")
def wide_model(model):
    """One block 512 wide: c_attn, attn.c_proj, c_fc and mlp.c_proj reach MIN_PACKED_NUMEL (the head does not)."""
    m = sharp_model(model.config.vocab_size, n_layer=1, n_embd=512, n_head=8)
    with torch.no_grad():  # GPT-2's init zeroes biases; non-zero ones make a packed layer that drops one show
        for name, p in m.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    return m


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_packed_generation_equals_plain(wide_model, dtype: torch.dtype) -> None:
    from gpt2.generate.fastpath import MIN_PACKED_NUMEL, can_pack

    m = wide_model if dtype == torch.float32 else copy.deepcopy(wide_model).to(dtype)
    big = [n for n, x in m.named_modules() if isinstance(x, torch.nn.Linear) and x.weight.numel() >= MIN_PACKED_NUMEL]
    assert len(big) == 4, big  # the model really is big enough to pack
    packed = [n for n, x in inference_view(m).named_modules() if isinstance(x, PackedLinear)]
    # Packed exactly where the capability check says the oneDNN path runs (not in bf16 on a CPU without
    # avx512bw/avx_ne_convert, where oneDNN refuses to reorder bf16 weights), plain elsewhere.
    assert packed == (big if can_pack(m) else []), (packed, can_pack(m))
    prompts = prompts_of([5, 12], m.config.vocab_size)
    out = generate(m, None, prompts, max_new_tokens=16, temperature=0, stop_at_eot=False, pack=True)
    plain = generate(m, None, prompts, max_new_tokens=16, temperature=0, stop_at_eot=False, pack=False)
    assert [g.tokens for g in out] == [g.tokens for g in plain]
    if dtype == torch.float32:
        for p, g in zip(prompts, out):
            assert g.tokens == reference_generate(m, p, max_new_tokens=16, temperature=0, stop_at_eot=False)


def test_sampling_cache_equals_reference(model) -> None:
    prompts = prompts_of([3, 11], model.config.vocab_size)
    out = generate(model, None, prompts, max_new_tokens=30, seed=5, num_samples=2, stop_at_eot=False, **SAMPLING)
    assert [(g.prompt_index, g.sample_index) for g in out] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for g in out:
        ref = reference_generate(model, prompts[g.prompt_index], max_new_tokens=30, seed=5, stop_at_eot=False,
                                 sample_index=g.sample_index, **SAMPLING)
        assert g.tokens == ref


@pytest.mark.parametrize("mode", ["greedy", "sampling"])
def test_batch_equals_each_prompt_alone(model, mode: str) -> None:
    opts = dict(temperature=0) if mode == "greedy" else dict(seed=3, **SAMPLING)
    prompts = prompts_of([2, 25, 9, 14, 1], model.config.vocab_size, seed=4)
    batch = generate(model, None, prompts, max_new_tokens=40, stop_at_eot=False, **opts)
    for p, g in zip(prompts, batch):
        alone = generate(model, None, [p], max_new_tokens=40, stop_at_eot=False, **opts)[0]
        assert g.tokens == alone.tokens
    # batch_size groups prompts by length into several batches; results keep their order and tokens
    chunked = generate(model, None, prompts, max_new_tokens=40, stop_at_eot=False, batch_size=2, **opts)
    assert [g.tokens for g in chunked] == [g.tokens for g in batch]


def test_same_seed_same_samples_and_reported_seed(model) -> None:
    p = prompts_of([6], model.config.vocab_size)
    a = generate(model, None, p, max_new_tokens=20, seed=11, num_samples=3, stop_at_eot=False)
    b = generate(model, None, p, max_new_tokens=20, seed=11, num_samples=3, stop_at_eot=False)
    c = generate(model, None, p, max_new_tokens=20, seed=12, num_samples=3, stop_at_eot=False)
    assert [g.tokens for g in a] == [g.tokens for g in b]
    assert [g.tokens for g in a] != [g.tokens for g in c]
    assert len({tuple(g.tokens) for g in a}) == 3  # the samples of one prompt differ
    # without a seed one is drawn and reported; passing it back reproduces the samples
    d = generate(model, None, p, max_new_tokens=20, stop_at_eot=False)
    assert d[0].seed is not None
    assert generate(model, None, p, max_new_tokens=20, seed=d[0].seed, stop_at_eot=False)[0].tokens == d[0].tokens


def test_eot_stops_and_is_not_text(model) -> None:
    p = prompts_of([4], model.config.vocab_size)
    free = generate(model, None, p, max_new_tokens=30, temperature=0, stop_at_eot=False)[0].tokens
    other = sharp_model(model.config.vocab_size)
    other.config.eos_token_id = free[5]  # pretend the 6th token is end-of-text
    g = generate(other, None, p, max_new_tokens=30, temperature=0)[0]
    first = free.index(free[5])
    assert g.finish_reason == "eot" and g.tokens == free[: first + 1]


def test_stop_strings_cut_the_text_and_stream_adds_up(model, tok) -> None:
    free = generate(model, tok, "The quick", max_new_tokens=40, temperature=0, stop_at_eot=False)[0]
    assert len(free.text) > 12
    stop = free.text[8:11]
    events = list(stream(model, tok, "The quick", max_new_tokens=40, temperature=0, stop_at_eot=False, stop=[stop]))
    g = events[-1].generation
    assert g is not None and g.finish_reason == "stop"
    assert g.text == free.text[: free.text.find(stop)]
    assert "".join(e.text for e in events) == g.text  # the streamed pieces are the final text
    assert all(e.generation is None for e in events[:-1])
    # streamed text of an unstopped run is the decoded tokens
    events = list(stream(model, tok, "The quick", max_new_tokens=40, temperature=0, stop_at_eot=False))
    assert "".join(e.text for e in events) == tok.decode(events[-1].generation.tokens) == free.text


def test_text_stream_utf8_and_held_back_stop_prefix() -> None:
    s = _TextStream(["STOP"])
    e = "é".encode()
    assert s.push(b"ab" + e[:1]) == "ab"  # half a character waits
    assert s.push(e[1:] + b"ST") == "é"  # "ST" could begin STOP: held
    assert s.push(b"x") == "STx"  # it did not
    assert s.push(b"yS") == "y"
    assert s.push(b"TOPzz") == "" and s.stopped and s.text == "abéSTxy"
    s = _TextStream([])
    assert s.push(e[:1]) == "" and s.push(b"", final=True) == "\ufffd"  # an unfinished character at the end


def test_max_new_tokens_and_counts(model, tok) -> None:
    g = generate(model, tok, ["Once upon", "a"], max_new_tokens=7, temperature=0, stop_at_eot=False)
    assert [x.completion_tokens for x in g] == [7, 7]
    assert [x.prompt_tokens for x in g] == [len(tok.encode("Once upon")), len(tok.encode("a"))]
    assert g[0].prompt == "Once upon" and g[0].finish_reason == "length"


def test_long_prompt_error_or_truncate(model) -> None:
    n_pos = model.config.n_positions  # 128
    long = prompts_of([120], model.config.vocab_size)[0]
    with pytest.raises(ValueError, match=r"prompt 0 has 120 tokens.*holds at most 108.*truncate"):
        generate(model, None, [long], max_new_tokens=20, temperature=0)
    with pytest.warns(PromptTruncatedWarning, match="kept its last 108"):
        g = generate(model, None, [long], max_new_tokens=20, temperature=0, long_prompt="truncate")[0]
    assert g.truncated_tokens == 12 and g.prompt_tokens == 108 and g.completion_tokens <= 20
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert generate(model, None, [long[12:]], max_new_tokens=20, temperature=0)[0].tokens == g.tokens
    with pytest.raises(ValueError, match="leaves no room"):
        generate(model, None, [[1]], max_new_tokens=n_pos, temperature=0)


def test_bos_policy(model, tok) -> None:
    with pytest.raises(ValueError, match="prompt 1 is empty and the BOS policy is 'never'"):
        generate(model, tok, ["hi", ""], max_new_tokens=3)
    bos = model.config.bos_token_id
    g = generate(model, tok, ["", "hi"], max_new_tokens=5, temperature=0, bos="if-empty", stop_at_eot=False)
    assert g[0].prompt_tokens == 1 and g[1].prompt_tokens == len(tok.encode("hi"))
    assert g[0].tokens == generate(model, None, [[bos]], max_new_tokens=5, temperature=0, stop_at_eot=False)[0].tokens
    g = generate(model, tok, ["hi"], max_new_tokens=5, temperature=0, bos="always", stop_at_eot=False)[0]
    assert g.prompt_tokens == len(tok.encode("hi")) + 1


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(top_p=0.0), r"top_p must be in \(0, 1\], got 0.0"),
        (dict(top_p=1.5), "top_p must be in"),
        (dict(temperature=-1.0), "temperature must be >= 0"),
        (dict(max_new_tokens=0), "max_new_tokens must be a positive integer"),
        (dict(min_p=2.0), "min_p"),
        (dict(repetition_penalty=0.0), "repetition_penalty"),
        (dict(top_k=-3), "top_k"),
        (dict(bos="sometimes"), "bos must be"),
        (dict(colour="red"), "unknown generation option"),
    ],
)
def test_bad_options_name_the_value(model, kw, match) -> None:
    with pytest.raises(ValueError, match=match):
        generate(model, None, [[1, 2]], **kw)


def test_bad_prompts(model) -> None:
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        generate(model, None, [[1, model.config.vocab_size]], max_new_tokens=2)
    with pytest.raises(ValueError, match="list of lists"):
        generate(model, None, [1, 2, 3], max_new_tokens=2)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="need a tokenizer"):
        generate(model, None, "text", max_new_tokens=2)


def test_top_probs_are_the_models(model) -> None:
    p = prompts_of([5], model.config.vocab_size)
    g = generate(model, None, p, max_new_tokens=4, temperature=0, top_probs=3, stop_at_eot=False)[0]
    with torch.no_grad():
        probs = torch.softmax(model(torch.tensor(p)).logits[0, -1], -1)
    step = g.steps[0]
    assert step.token == g.tokens[0] == step.top[0][0]
    assert abs(step.prob - probs.max().item()) < 1e-5 and len(step.top) == 3
    assert [t for t, _ in step.top] == probs.topk(3).indices.tolist()


def test_generation_leaves_the_model_alone(model) -> None:
    # wide enough to pack; dropout would change outputs in train mode
    m = sharp_model(model.config.vocab_size, n_layer=1, n_embd=512, n_head=8, resid_pdrop=0.5)
    m.train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    p = prompts_of([5], m.config.vocab_size)
    for pack in (True, False):
        a = generate(m, None, p, max_new_tokens=10, temperature=0, pack=pack)
        assert a[0].tokens == generate(m, None, p, max_new_tokens=10, temperature=0, pack=pack)[0].tokens
    assert m.training and not any(isinstance(x, PackedLinear) for x in m.modules())
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert not torch.is_inference_mode_enabled()


def test_packed_view_matches_plain_and_follows_weight_updates(model) -> None:
    assert inference_view(model) is model  # tiny layers stay plain: nothing to pack
    m = sharp_model(model.config.vocab_size, seed=2, n_layer=1, n_embd=512, n_head=8)  # c_fc: 2048 × 512
    ids = torch.tensor(prompts_of([9, 9], m.config.vocab_size))
    view = inference_view(m)
    assert view is not m and isinstance(view.transformer.h[0].mlp.c_fc, PackedLinear)
    assert not isinstance(view.lm_head, PackedLinear)  # 320 × 512 is below MIN_PACKED_NUMEL
    assert inference_view(m) is view  # cached
    with torch.no_grad():
        torch.testing.assert_close(view(ids).logits, m(ids).logits, atol=1e-3, rtol=1e-3)
        m.transformer.h[0].mlp.c_fc.weight.mul_(0.5)  # an in-place update (as an optimizer step)
        fresh = inference_view(m)
        assert fresh is not view
        torch.testing.assert_close(fresh(ids).logits, m(ids).logits, atol=1e-3, rtol=1e-3)


def test_bf16_weights_and_cache(model) -> None:
    m = sharp_model(model.config.vocab_size).to(torch.bfloat16)
    p = prompts_of([5, 12], m.config.vocab_size)
    out = generate(m, None, p, max_new_tokens=16, temperature=0, stop_at_eot=False)
    ref = generate(model, None, p, max_new_tokens=16, temperature=0, stop_at_eot=False)
    assert [g.completion_tokens for g in out] == [16, 16]
    # bf16 rounding may flip a near tie later on; the first tokens agree with fp32
    assert [g.tokens[:3] for g in out] == [g.tokens[:3] for g in ref]


def test_sample_config_replace_validates() -> None:
    c = SampleConfig(top_k=5)
    assert c.replace(top_p=0.5).top_k == 5
    with pytest.raises(ValueError, match="top_p"):
        c.replace(top_p=7.0)
