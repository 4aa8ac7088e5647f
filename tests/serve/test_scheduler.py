"""The continuous-batching scheduler driven step by step (no thread): a request's tokens are the same alone
or joining a busy batch mid-way, equal to the engine's; the cache shifts and grows correctly; cancelled
and finished rows leave at once; the queue is bounded."""

from __future__ import annotations

import pytest

from gpt2.generate import generate
from gpt2.serve.scheduler import Job, QueueFull, Scheduler, SeqParams


class Collector:
    """emit() target: every piece per choice."""

    def __init__(self) -> None:
        self.pieces: dict[int, list] = {}

    def __call__(self, items) -> None:
        assert not isinstance(items, BaseException), items
        for p in items:
            self.pieces.setdefault(p.choice, []).append(p)

    def tokens(self, choice: int = 0) -> list[int]:
        return [p.token.token for p in self.pieces[choice]]

    def text(self, choice: int = 0) -> str:
        return "".join(p.text for p in self.pieces[choice])

    def done(self) -> bool:
        return bool(self.pieces) and all(ps[-1].finish_reason for ps in self.pieces.values())


def submit(sched: Scheduler, tok, prompt: str, n: int = 1, **params) -> Collector:
    out = Collector()
    sched.submit(Job([tok.encode(prompt)], SeqParams(**params), n=n, emit=out))
    return out


def run_until(sched: Scheduler, *outs: Collector, limit: int = 500) -> None:
    for _ in range(limit):
        if all(o.done() for o in outs):
            return
        sched.step_once()
    raise AssertionError("requests did not finish")


SEEDED = {"max_tokens": 40, "temperature": 0.9, "top_p": 0.95, "seed": 11, "ignore_eos": True}
GREEDY = {"max_tokens": 40, "temperature": 0, "ignore_eos": True}


@pytest.mark.parametrize("params", [SEEDED, GREEDY], ids=["seeded", "greedy"])
def test_a_request_joining_a_busy_batch_mid_way_gets_the_tokens_it_gets_alone(model, tok, params) -> None:
    alone = Scheduler(model, tok, max_batch=8, start=False)
    a = submit(alone, tok, "Once upon a time", n=2, **params)
    run_until(alone, a)

    busy = Scheduler(model, tok, max_batch=8, start=False)
    # Neighbours of other lengths and settings, started earlier, some ending while the request runs.
    others = [submit(busy, tok, "héllo wörld " * (i + 1), max_tokens=15 + 10 * i, temperature=0.7, seed=i,
                     ignore_eos=True, frequency_penalty=0.5 * i) for i in range(4)]
    for _ in range(7):
        busy.step_once()
    assert busy.cache.rows == 4 and busy.cache.pos > 7
    b = submit(busy, tok, "Once upon a time", n=2, **params)
    late = []
    for step in range(60):
        if step == 5:  # more neighbours join while it runs
            late = [submit(busy, tok, "The quick brown fox jumps over the lazy dog", max_tokens=30, temperature=1.0)]
        busy.step_once()
    run_until(busy, b, *others, *late)
    assert b.tokens(0) == a.tokens(0) and b.tokens(1) == a.tokens(1)
    assert b.text(0) == a.text(0)
    # ... and they are the engine's (gpt2 generate's) tokens for the same request
    ref = generate(model, tok, "Once upon a time", max_new_tokens=40, num_samples=2, stop_at_eot=False,
                   temperature=params["temperature"], top_p=params.get("top_p", 1.0), seed=params.get("seed"))
    assert [g.tokens for g in ref] == [a.tokens(0), a.tokens(1)]


def test_prompts_admitted_together_are_prefilled_in_one_padded_forward(model, tok) -> None:
    prompts = ["The quick brown fox", "Once upon a time there", "héllo wörld", "The quick brown"]
    sched = Scheduler(model, tok, max_batch=8, start=False)
    outs = [submit(sched, tok, p, n=2 if i == 1 else 1, max_tokens=25, temperature=0.8, seed=i, ignore_eos=True)
            for i, p in enumerate(prompts)]
    sched.step_once()
    assert sched.stats["prefills"] == 4 and sched.cache.rows == 5
    run_until(sched, *outs)
    for i, (p, out) in enumerate(zip(prompts, outs)):
        ref = generate(model, tok, p, max_new_tokens=25, temperature=0.8, seed=i, stop_at_eot=False,
                       num_samples=2 if i == 1 else 1)
        assert [out.tokens(c) for c in range(len(ref))] == [g.tokens for g in ref], p


def test_cache_shifts_and_grows_and_rows_stay_exact(model, tok) -> None:
    """A long prompt joining a short batch shifts it right; a row running past the others compacts the
    cache left once it reaches n_positions; both must leave every row's tokens unchanged."""
    n_pos = model.config.n_positions
    sched = Scheduler(model, tok, max_batch=4, start=False)
    first = submit(sched, tok, "a", max_tokens=40, temperature=0, ignore_eos=True)
    for _ in range(3):
        sched.step_once()
    long_prompt = "The quick brown fox jumps over the lazy dog. " * 3
    joined = submit(sched, tok, long_prompt, max_tokens=n_pos - len(tok.encode(long_prompt)), temperature=0,
                    ignore_eos=True)
    sched.step_once()
    assert sched.cache.pos >= len(tok.encode(long_prompt))  # shifted right to fit the longer prompt
    run_until(sched, first, joined)
    assert sched.cache.rows == 0 and sched.inflight == 0
    for out, prompt, n in ((first, "a", 40), (joined, long_prompt, n_pos - len(tok.encode(long_prompt)))):
        ref = generate(model, tok, prompt, max_new_tokens=n, temperature=0, stop_at_eot=False)[0]
        assert out.tokens() == ref.tokens

    # A row that outlives its neighbours by more than the context: the cache must drop their columns.
    sched = Scheduler(model, tok, max_batch=4, start=False)
    early = submit(sched, tok, "Once", max_tokens=60, temperature=0, ignore_eos=True)
    for _ in range(50):
        sched.step_once()
    late = submit(sched, tok, "a", max_tokens=n_pos - 2, temperature=0, ignore_eos=True)
    run_until(sched, early, late)
    ref = generate(model, tok, "a", max_new_tokens=n_pos - 2, temperature=0, stop_at_eot=False)[0]
    assert late.tokens() == ref.tokens
    assert sched.cache.max_len <= n_pos


def test_cancel_frees_the_rows_before_the_next_step(model, tok) -> None:
    sched = Scheduler(model, tok, max_batch=4, start=False)
    out = Collector()
    job = Job([tok.encode("Once")], SeqParams(max_tokens=100, temperature=0, ignore_eos=True), n=2, emit=out)
    sched.submit(job)
    other = submit(sched, tok, "a", max_tokens=100, temperature=0, ignore_eos=True)
    for _ in range(3):
        sched.step_once()
    assert sched.cache.rows == 3
    sched.cancel(job)
    sched.step_once()
    assert sched.cache.rows == 1 and sched.load()["running"] == 1 and sched.stats["cancelled"] == 2
    assert len(out.pieces[0]) == 3  # no token after the cancel
    assert len(other.pieces[0]) == 4


def test_finished_rows_leave_and_waiting_prompts_take_their_place(model, tok) -> None:
    sched = Scheduler(model, tok, max_batch=2, max_queue=2, start=False)
    short = submit(sched, tok, "a", max_tokens=2, temperature=0, ignore_eos=True)
    long = submit(sched, tok, "Once", max_tokens=10, temperature=0, ignore_eos=True)
    queued = submit(sched, tok, "The", max_tokens=3, temperature=0, ignore_eos=True)
    with pytest.raises(QueueFull):
        submit(sched, tok, "x", n=2, max_tokens=3)
    sched.step_once()
    assert sched.cache.rows == 2 and sched.load()["waiting"] == 1
    sched.step_once()  # `short` finishes here and leaves
    assert short.done() and sched.cache.rows == 1
    sched.step_once()  # `queued` is admitted into the free row
    assert sched.cache.rows == 2 and sched.load()["waiting"] == 0
    run_until(sched, long, queued)
    assert sched.load()["running"] == 0 and sched.inflight == 0


def test_scoring_only_requests_never_take_a_row(model, tok) -> None:
    sched = Scheduler(model, tok, max_batch=2, start=False)
    out = Collector()
    ids = tok.encode("Once upon a time")
    sched.submit(Job([ids], SeqParams(max_tokens=0, temperature=0, logprobs=1, prompt_logprobs=True), emit=out))
    sched.step_once()
    (piece,) = out.pieces[0]
    assert piece.finish_reason == "length" and piece.completion_tokens == 0 and sched.cache.rows == 0
    assert [t.token for t in piece.prompt_logprobs] == ids and piece.prompt_logprobs[0].logprob is None
    assert sched.inflight == 0
