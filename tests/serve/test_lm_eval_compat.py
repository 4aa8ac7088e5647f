"""lm-evaluation-harness compatibility: HellaSwag scored through the server the way `lm_eval --model
local-completions` asks (token-id prompts, echo, logprobs 1, max_tokens 1 or 0, temperature 0), giving the
per-ending log-likelihoods of `gpt2 eval --hellaswag` (gpt2.eval.hellaswag.score_endings) to 1e-4; and lm-eval's
own local-completions model (lm-eval is in the dev extra) on a local task file, whose per-ending log-likelihoods
and accuracy equal our scorer's on the same examples."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest
from serve_helpers import LiveServer, sharp_model

from gpt2.eval.hellaswag import evaluate_hellaswag, load_examples, render, score_endings


@pytest.fixture(scope="module")
def gpt2_tok(shared_data):
    from gpt2.tokenizer import load_tokenizer

    return load_tokenizer(shared_data / "gpt2")


@pytest.fixture(scope="module")
def gpt2_vocab_model(gpt2_tok):
    """A tiny random model over GPT-2's 50,257-token vocabulary (n_positions 256)."""
    return sharp_model(gpt2_tok.n_vocab, n_positions=256)


@pytest.fixture(scope="module")
def hs_server(gpt2_vocab_model, gpt2_tok, tmp_path_factory):
    from gpt2.serve.app import create_app

    s = LiveServer(create_app(gpt2_vocab_model, gpt2_tok, name="hs", max_batch=8, max_queue=64))
    yield s
    s.stop()


def lm_eval_loglikelihood(url: str, requests: list[tuple[list[int], list[int]]], *, max_tokens: int) -> list[float]:
    """What lm-eval's local-completions does for loglikelihood requests: a batch of token-id prompts
    (context + continuation), echo, logprobs 1, and the sum of token_logprobs over the continuation
    (token_logprobs[ctxlen:-1] with max_tokens 1, whose last entry is the generated token)."""
    body = {"model": "hs", "prompt": [ctx + cont for ctx, cont in requests], "temperature": 0,
            "max_tokens": max_tokens, "logprobs": 1, "seed": 1234, "echo": True}
    r = httpx.post(url + "/v1/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    out = []
    for choice, (ctx, cont) in zip(sorted(r.json()["choices"], key=lambda c: c["index"]), requests):
        lps = choice["logprobs"]["token_logprobs"]
        assert len(lps) == len(ctx) + len(cont) + max_tokens
        out.append(sum(lps[len(ctx) : len(lps) - max_tokens]))
    return out


@pytest.mark.parametrize("max_tokens", [1, 0])
def test_hellaswag_through_the_server_equals_gpt2_eval(shared_data, gpt2_tok, gpt2_vocab_model, hs_server,
                                                       max_tokens) -> None:
    examples = load_examples(shared_data / "hellaswag_val_sample1000.jsonl", limit=4)
    expected = score_endings(gpt2_vocab_model, gpt2_tok, examples)  # per example, per ending: (sum, n tokens)
    requests = []
    for ex in examples:
        ctx, endings = render(gpt2_tok, ex, gpt2_vocab_model.config.n_positions)
        requests += [(ctx, e) for e in endings]
    got = lm_eval_loglikelihood(hs_server.url, requests, max_tokens=max_tokens)
    flat = [ll for per_example in expected for ll, _ in per_example]
    assert len(got) == len(flat) == 16
    for g, e in zip(got, flat):
        assert abs(g - e) <= 1e-4, (g, e)
    # the argmax ending (what HellaSwag accuracy counts) is the same too
    for i in range(4):
        assert max(range(4), key=lambda j: got[4 * i + j]) == max(range(4), key=lambda j: flat[4 * i + j])


TASK = """task: serve_hellaswag_local
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {data}
validation_split: validation
output_type: multiple_choice
doc_to_text: "{{{{ctx}}}}"
doc_to_target: "{{{{label}}}}"
doc_to_choice: "{{{{endings}}}}"
target_delimiter: " "
metric_list:
  - metric: acc
"""


# What `lm_eval --model local-completions --tasks serve_hellaswag_local --include_path TASKS --model_args ...`
# runs, less the index of lm-eval's ~14,000 built-in task files that its command line builds first (27 s of
# the 42 s the command took, measured): only the local task directory is indexed.
LM_EVAL = """
import json
from lm_eval import simple_evaluate
from lm_eval.tasks import TaskManager
tasks = TaskManager(include_path={tasks!r}, include_defaults=False)
out = simple_evaluate(model="local-completions", model_args={model_args!r}, tasks=["serve_hellaswag_local"],
                      task_manager=tasks, log_samples=True)
open({out!r}, "w").write(json.dumps({{"results": out["results"], "samples": out["samples"]}}, default=str))
"""


@pytest.mark.slow
def test_lm_eval_local_completions_scores_as_gpt2_eval(shared_data, gpt2_tok, gpt2_vocab_model, hs_server,
                                                      tmp_path) -> None:
    """lm-eval's own client through the server: every ending's log-likelihood is our scorer's (1e-4), and its
    acc is exactly the acc of `gpt2 eval --hellaswag` (gpt2.eval.hellaswag.evaluate_hellaswag) on the same six
    examples."""
    source = shared_data / "hellaswag_val_sample1000.jsonl"
    rows = [json.loads(line) for line in source.open()][:6]
    data = tmp_path / "hs.jsonl"
    data.write_text("".join(json.dumps({"ctx": r["ctx"], "endings": r["endings"], "label": int(r["label"])}) + "\n"
                            for r in rows))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "serve_hellaswag_local.yaml").write_text(TASK.format(data=data))
    tok_dir = tmp_path / "tok"
    gpt2_tok.save(tok_dir)  # includes HF's tokenizer.json, which lm-eval's huggingface tokenizer backend reads
    out = tmp_path / "results.json"
    model_args = (f"model=hs,base_url={hs_server.url}/v1/completions,tokenizer_backend=huggingface,"
                  f"tokenizer={tok_dir},num_concurrent=1,max_retries=1,tokenized_requests=True")
    prefills = hs_server.scheduler.stats["prefills"]
    r = subprocess.run([sys.executable, "-c", LM_EVAL.format(tasks=str(tasks), model_args=model_args, out=str(out))],
                       capture_output=True, text=True, timeout=600,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(out.read_text())
    examples = load_examples(source, limit=6)
    expected = score_endings(gpt2_vocab_model, gpt2_tok, examples)  # per example, per ending: (sum, n tokens)
    samples = sorted(got["samples"]["serve_hellaswag_local"], key=lambda s: s["doc_id"])
    assert [s["doc_id"] for s in samples] == list(range(6))
    for sample, ours in zip(samples, expected):
        theirs = [float(resp[0]) for resp in sample["filtered_resps"]]  # (loglikelihood, is_greedy) per ending
        assert len(theirs) == 4
        for t, (o, _) in zip(theirs, ours):
            assert abs(t - o) <= 1e-4, (sample["doc_id"], t, o)
    acc = evaluate_hellaswag(gpt2_vocab_model, gpt2_tok, examples).acc
    assert got["results"]["serve_hellaswag_local"]["acc,none"] == acc
    # every one of the 6 × 4 endings was scored through the server
    assert hs_server.scheduler.stats["prefills"] - prefills >= 24
