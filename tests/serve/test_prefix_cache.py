"""Prefix caching: the cache's own rules (hash chain, LRU by bytes, the budget at every moment), and the
scheduler with the cache on giving the tokens it gives with the cache off, for the turns of a conversation
and for requests that share a header while they run in one batch.

Why tokens equal and log-probabilities to 1e-4: with the cache a prompt's tail is prefilled after its cached
past (a masked attention over C + S columns) instead of in one causal pass, so the same sums run in other
matrix shapes and orders; fp32 rounding then differs in the last bits (measured here: at most ~1e-6 on these
log-probabilities), far below the gap between the sharpened model's top tokens. 1e-4 leaves a 100× margin and
still catches a wrong position or a mask off by one column, which move log-probabilities by whole units.
"""

from __future__ import annotations

import random

import pytest
import torch
from test_scheduler import Collector, run_until

from gpt2.generate import generate
from gpt2.serve.prefix_cache import PrefixCache, block_keys
from gpt2.serve.scheduler import Job, Scheduler, SeqParams

TOL = 1e-4
GREEDY = {"temperature": 0, "ignore_eos": True, "logprobs": 3}


def kv(n_tokens: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values of n_tokens for a 2-layer, 2-head, head_dim 4 model: (2, 2, n_tokens, 4) each."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 2, n_tokens, 4, generator=g), torch.randn(2, 2, n_tokens, 4, generator=g)


BLOCK_BYTES = 2 * 2 * 2 * 4 * 4 * 4  # k and v, 2 layers, 2 heads, 4 tokens, head_dim 4, fp32


# ------------------------------------------------------------------------------------- the cache
def test_a_block_is_found_only_after_the_same_tokens_and_up_to_the_limit() -> None:
    cache = PrefixCache(budget_bytes=100 * BLOCK_BYTES, block_size=4)
    tokens = list(range(10))
    k, v = kv(10)
    assert cache.insert(tokens, k, v) == 2  # two whole blocks; the last 2 tokens are not a block
    hit = cache.lookup([*tokens, 99], limit=10)
    assert hit.tokens == 8 and len(hit.blocks) == 2
    torch.testing.assert_close(torch.cat([b[0] for b in hit.blocks], dim=2), k[:, :, :8], rtol=0, atol=0)
    torch.testing.assert_close(torch.cat([b[1] for b in hit.blocks], dim=2), v[:, :, :8], rtol=0, atol=0)
    assert cache.lookup(tokens, limit=7).tokens == 4  # at most `limit` tokens: the scheduler keeps one to prefill
    assert cache.lookup([0, 1, 2, 3, 4, 5, 6, 0], limit=8).tokens == 4  # second block differs: first only
    # The second block's tokens after another first block are another prefix: a miss from the first block on.
    assert cache.lookup([9, 9, 9, 9, 4, 5, 6, 7], limit=8).tokens == 0
    assert cache.insert(tokens, k, v) == 0 and cache.bytes == 2 * BLOCK_BYTES  # nothing twice
    assert block_keys([1, 23], 2, 1) != block_keys([12, 3], 2, 1)
    assert cache.lookup(tokens, limit=10, salt=b"adapter-a").tokens == 0  # other weights: other keys


def test_eviction_is_least_recently_used_and_takes_leaves_before_their_parents() -> None:
    cache = PrefixCache(budget_bytes=5 * BLOCK_BYTES, block_size=4)
    a, b = list(range(12)), list(range(100, 112))  # 3 blocks each
    cache.insert(a, *kv(12, 1))
    cache.insert(b, *kv(12, 2))  # 6 blocks over a budget of 5: one of a's goes, its last block
    assert len(cache) == 5 and cache.bytes == 5 * BLOCK_BYTES and cache.evicted == 1
    assert cache.lookup(a, limit=12).tokens == 8  # a's first two blocks are still reachable
    assert cache.lookup(b, limit=12).tokens == 12
    cache.lookup(a, limit=12)  # a is now the more recent: inserting a third prefix evicts b's leaves first
    cache.insert(list(range(200, 208)), *kv(8, 3))
    assert cache.lookup(a, limit=12).tokens == 8 and cache.lookup(b, limit=12).tokens == 4
    assert cache.bytes == sum(blk.nbytes for blk in cache.blocks.values()) <= cache.budget


def test_the_budget_holds_at_every_insert_and_a_prefix_longer_than_it_keeps_its_start() -> None:
    cache = PrefixCache(budget_bytes=3 * BLOCK_BYTES, block_size=4)
    long = list(range(40))  # 10 blocks: only its first 3 fit
    assert cache.insert(long, *kv(40)) == 3
    assert cache.lookup(long, limit=40).tokens == 12 and cache.bytes == 3 * BLOCK_BYTES
    assert PrefixCache(budget_bytes=BLOCK_BYTES - 1, block_size=4).insert(long, *kv(40)) == 0


# ---------------------------------------------------------------------------------- the scheduler
def run_job(sched: Scheduler, prompt: list[int], *, n: int = 1, **params) -> tuple[Job, Collector]:
    out = Collector()
    job = Job([prompt], SeqParams(**params), n=n, emit=out)
    sched.submit(job)
    return job, out


def assert_same(on: Collector, off: Collector) -> None:
    """Same choices, same tokens; log-probabilities within TOL (module docstring)."""
    assert on.pieces.keys() == off.pieces.keys()
    for c in on.pieces:
        assert on.tokens(c) == off.tokens(c)
        lp_on = [p.token.logprob for p in on.pieces[c] if p.token.logprob is not None]
        lp_off = [p.token.logprob for p in off.pieces[c] if p.token.logprob is not None]
        if lp_on:
            assert max(abs(a - b) for a, b in zip(lp_on, lp_off)) < TOL


def test_conversation_turns_reuse_earlier_turns_and_give_the_tokens_of_no_cache(model, tok) -> None:
    on = Scheduler(model, tok, max_batch=4, start=False)
    off = Scheduler(model, tok, max_batch=4, start=False, prefix_cache_mb=0)
    users = ["Once upon a time there was a little model", " The quick brown fox jumps over the lazy dog.",
             " héllo wörld, naïve café", " and more text. Once upon a time"]
    prompt, seen = tok.encode(users[0]), 0
    for turn in range(4):
        (job_on, a), (job_off, b) = run_job(on, prompt, max_tokens=12, **GREEDY), run_job(off, prompt, max_tokens=12,
                                                                                           **GREEDY)
        run_until(on, a)
        run_until(off, b)
        assert_same(a, b)
        # The previous turn's row left the cache holding its prompt and the replies it fed back (all but the
        # last token): whole blocks of that, up to one token short of this prompt.
        assert job_on.cached_tokens == [min(seen // 16, (len(prompt) - 1) // 16) * 16]
        assert job_off.cached_tokens == [0]
        if turn:
            assert job_on.cached_tokens[0] >= 16
        seen = len(prompt) + len(a.tokens()) - 1
        prompt = prompt + a.tokens() + tok.encode(users[(turn + 1) % 4])
    assert on.stats["prefix_cache_hits"] > 0 and off.stats["prefix_cache_queries"] == 0
    assert on.stats["prefix_cache_queries"] == on.stats["prompt_tokens"] == off.stats["prompt_tokens"]
    assert on.prefix.bytes <= on.prefix.budget


def test_requests_sharing_a_header_in_one_batch_match_no_cache_and_the_engine(model, tok) -> None:
    """A request prefills a header; more join the running batch reusing it, with n=2 seeded sampling, and one
    group prefills a cached row (short new part, a gap in its mask) beside an uncached one."""
    header = "The quick brown fox jumps over the lazy dog. Once upon a time there was"
    texts = [header + " a little model", header + " héllo wörld", header + " naïve café, 日本語",
             "Once upon a time there was a little model that wanted to"]
    sampled = {"temperature": 0.9, "top_p": 0.95, "seed": 7, "ignore_eos": True, "logprobs": 2}
    outs, jobs = {}, {}
    for mode, mb in (("on", 256), ("off", 0)):
        sched = Scheduler(model, tok, max_batch=8, start=False, prefix_cache_mb=mb)
        groups = []
        prefill = sched._prefill
        sched._prefill = lambda units, f=prefill, g=groups: (g.append(len(units)), f(units))[1]
        first = run_job(sched, tok.encode(texts[0]), max_tokens=30, **GREEDY)
        for _ in range(3):
            sched.step_once()
        joined = [run_job(sched, tok.encode(texts[1]), n=2, max_tokens=20, **sampled),
                  run_job(sched, tok.encode(texts[2]), max_tokens=20, **GREEDY),
                  run_job(sched, tok.encode(texts[3]), max_tokens=20, **GREEDY)]
        run_until(sched, first[1], *(o for _, o in joined))
        outs[mode] = [first[1], *(o for _, o in joined)]
        jobs[mode] = [first[0], *(j for j, _ in joined)]
        assert groups[0] == 1 and sum(groups) == 4
        if mode == "on":
            assert groups[1] == 3  # the three that joined, cached or not, in one forward
    for a, b in zip(outs["on"], outs["off"]):
        assert_same(a, b)
    ids = [tok.encode(t) for t in texts]
    common = next(i for i, (x, y) in enumerate(zip(ids[0], ids[1])) if x != y)
    assert common >= 16
    assert [j.cached_tokens[0] for j in jobs["on"]] == [0, common // 16 * 16, common // 16 * 16, 0]
    # ... and the engine's own tokens for each request alone
    assert outs["on"][1].tokens(1) == generate(model, tok, texts[1], max_new_tokens=20, num_samples=2,
                                               stop_at_eot=False, temperature=0.9, top_p=0.95, seed=7)[1].tokens
    for i in (2, 3):
        assert outs["on"][i].tokens() == generate(model, tok, texts[i], max_new_tokens=20, temperature=0,
                                                  stop_at_eot=False)[0].tokens


def test_prompt_logprobs_requests_skip_the_cache(model, tok) -> None:
    sched = Scheduler(model, tok, max_batch=2, start=False)
    ids = tok.encode("The quick brown fox jumps over the lazy dog. " * 2)
    got = []
    for _ in range(2):
        job, out = run_job(sched, ids, max_tokens=0, temperature=0, logprobs=1, prompt_logprobs=True)
        sched.step_once()
        got.append(out.pieces[0][0].prompt_logprobs)
        assert job.cached_tokens == [0]
    assert len(sched.prefix) == len(ids) // 16  # the prompt was still cached for others
    assert [t.logprob for t in got[0]] == [t.logprob for t in got[1]]


@pytest.mark.parametrize("budget_blocks", [3, 7])
def test_the_budget_holds_under_many_distinct_prompts(model, tok, budget_blocks) -> None:
    block = 2 * model.config.n_layer * model.config.n_head * 16 * model.config.head_dim * 4  # bytes, fp32
    sched = Scheduler(model, tok, max_batch=4, max_queue=64, start=False,
                      prefix_cache_mb=budget_blocks * block / 2**20)
    rng = random.Random(0)
    prompts = [[rng.randrange(tok.n_vocab - 1) for _ in range(rng.randint(17, 70))] for _ in range(24)]
    outs = [run_job(sched, p, max_tokens=rng.randint(1, 20), temperature=0.8, seed=i)[1] for i, p in enumerate(prompts)]
    for _ in range(500):
        if all(o.done() for o in outs):
            break
        sched.step_once()
        assert sched.prefix.bytes == sum(b.nbytes for b in sched.prefix.blocks.values()) <= sched.prefix.budget
        assert sched.load()["prefix_cache_bytes"] == sched.prefix.bytes
    assert all(o.done() for o in outs) and sched.prefix.evicted > 0 and len(sched.prefix) == budget_blocks
    # A full cache still takes a new prefix (evicting the least recently used) and serves it next time.
    fresh = [rng.randrange(tok.n_vocab - 1) for _ in range(40)]
    for cached in (0, 32):
        job, out = run_job(sched, [*fresh, cached], max_tokens=3, temperature=0)
        run_until(sched, out)
        assert job.cached_tokens == [min(cached, budget_blocks * 16)]


# ------------------------------------------------------------------------------------------ the API
def test_usage_reports_cached_tokens_for_completions_chat_and_streams(start_server, tok) -> None:
    from openai import OpenAI

    server = start_server(max_batch=4)
    client = OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=20)
    prompt = "The quick brown fox jumps over the lazy dog. Once upon a time there was a little model"
    n = len(tok.encode(prompt))
    first = client.completions.create(model="tiny", prompt=prompt, max_tokens=4, temperature=0)
    again = client.completions.create(model="tiny", prompt=prompt, max_tokens=4, temperature=0)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert again.usage.prompt_tokens_details.cached_tokens == (n - 1) // 16 * 16 > 0
    assert again.choices[0].text == first.choices[0].text
    chunks = list(client.completions.create(model="tiny", prompt=prompt + " that", max_tokens=4, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens >= 16

    messages = [{"role": "user", "content": "Once upon a time there was a little model that wanted to write"}]
    turn1 = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0)
    messages += [{"role": "assistant", "content": turn1.choices[0].message.content},
                 {"role": "user", "content": "héllo wörld"}]
    turn2 = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0)
    assert turn1.usage.prompt_tokens_details.cached_tokens == 0
    assert 16 <= turn2.usage.prompt_tokens_details.cached_tokens < turn2.usage.prompt_tokens
    off = start_server(max_batch=4, prefix_cache_mb=0)
    r = OpenAI(base_url=off.url + "/v1", api_key="unused", max_retries=0, timeout=20).chat.completions.create(
        model="tiny", messages=messages, max_tokens=8, temperature=0)
    assert r.usage.prompt_tokens_details.cached_tokens == 0 and r.choices[0].message == turn2.choices[0].message
