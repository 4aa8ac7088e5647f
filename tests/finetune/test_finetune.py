"""`gpt2 finetune classify` end to end on a tiny base: HF checkpoints, metrics, best checkpoint, exact
resume after SIGKILL, DDP, and the bad inputs through the command line (gpt2.cli.main, in this process
except for the kill and torchrun)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from finetune_helpers import save_model_dir, sms_texts, tiny_base

from gpt2 import GPT2Config, GPT2LMHeadModel

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def base(tmp_path_factory, shared_data) -> Path:
    """A tiny random GPT-2 with a BPE trained on the SMS texts, saved like any model directory."""
    return tiny_base(tmp_path_factory, sms_texts(shared_data), vocab_size=512)


@pytest.fixture(scope="module")
def sms(tmp_path_factory, shared_data) -> Path:
    """The first 600 messages of the SMS Spam Collection (headerless TSV: label, text)."""
    lines = (shared_data / "sms_spam.tsv").read_text(encoding="utf-8").splitlines()[:600]
    path = tmp_path_factory.mktemp("sms") / "sms.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def args(base: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["finetune-sms-spam", f"model.init_from={base}", f"finetune.train_file={data}", f"train.out_dir={out}",
            "train.seq_len=48", "train.micro_batch_size=8", "train.max_steps=12", "train.threads=1",
            "train.dtype=fp32", "eval.interval=4", "checkpoint.interval=4", "checkpoint.keep_last=1",
            "train.log_interval=1", "optim.warmup_steps=2", "optim.lr=3e-3", *extra]


def records(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_finetune_writes_hf_checkpoints_metrics_and_the_best_one(tmp_path, base, sms, gpt2_main) -> None:
    import transformers

    out = tmp_path / "run"
    r = gpt2_main("finetune", "classify", *args(base, sms, out, "finetune.balance=downsample"), "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    start = records(out, "start")[0]
    assert start["task"] == "classify" and start["labels"] == ["ham", "spam"]
    assert start["examples"]["train"] + start["examples"]["val"] + start["examples"]["test"] == 2 * sum(
        1 for line in sms.read_text().splitlines() if line.startswith("spam"))  # down-sampled to the minority
    vals = records(out, "val")
    assert [v["step"] for v in vals] == [4, 8, 12]
    for v in vals:
        assert {"val_loss", "accuracy", "macro_f1", "per_class", "confusion"} <= set(v)
        assert sum(map(sum, v["confusion"])) == start["examples"]["val"]
    assert (out / "confusion-val.png").stat().st_size > 0 and (out / "confusion-test.png").stat().st_size > 0

    # the checkpoint named `best` is the one with the best validation accuracy (first of equals)
    best = (out / "best").read_text().strip()
    best_step = max(vals, key=lambda v: (v["accuracy"], -v["step"]))["step"]
    assert best == f"step-{best_step:06d}" and (out / best / "model.safetensors").is_file()
    test = records(out, "test")[-1]
    assert test["checkpoint"].endswith(best) and sum(map(sum, test["confusion"])) == start["examples"]["test"]
    assert json.loads(r.stdout.strip().splitlines()[-3])["test"]["accuracy"] == test["accuracy"]

    # an HF GPT2ForSequenceClassification directory, loaded by transformers as it is
    cfg = json.loads((out / best / "config.json").read_text())
    assert cfg["architectures"] == ["GPT2ForSequenceClassification"]
    assert cfg["id2label"] == {"0": "ham", "1": "spam"} and cfg["pad_token_id"] is not None
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(out / best)
    from gpt2.model.classify import GPT2ForSequenceClassification

    ours = GPT2ForSequenceClassification.from_pretrained(out / best).eval()
    ids = torch.randint(0, cfg["pad_token_id"], (3, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours(ids).logits, atol=1e-4, rtol=1e-4)


KILL_AFTER_SAVE = """
import os, signal, sys
import gpt2.train.checkpointer as checkpointer
from gpt2.cli import main
orig = checkpointer.save_checkpoint
def save_then_die(run_dir, step, **kw):
    path = orig(run_dir, step, **kw)
    if step == 8:
        os.kill(os.getpid(), signal.SIGKILL)
    return path
checkpointer.save_checkpoint = save_then_die
sys.exit(main({argv!r}))
"""


def test_resume_after_sigkill_is_bit_for_bit(tmp_path, base, sms, gpt2_main) -> None:
    """The kill is a process of its own; the uninterrupted run and the resume run in this one."""
    # dropout on and two micro-steps per step, so the RNG state and the data position must both resume
    extra = ["model.dropout=0.1", "finetune.global_batch_size=16", "finetune.balance=class_weights"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    r = gpt2_main("finetune", "classify", *args(base, sms, whole, *extra))
    assert r.returncode == 0, r.stderr[-3000:]
    argv = ["finetune", "classify", *args(base, sms, killed, *extra)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", KILL_AFTER_SAVE.format(argv=argv)], capture_output=True, text=True,
                       env=env, timeout=300, cwd=REPO)
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    assert (killed / "latest").read_text().strip() == "step-000008"
    r = gpt2_main("finetune", "classify", "--resume", str(killed))
    assert r.returncode == 0, r.stderr[-3000:]
    a = {x["step"]: x["loss"] for x in records(whole, "train")}
    b = {x["step"]: x["loss"] for x in records(killed, "train")}
    assert sorted(b) == list(range(1, 13)) and all(a[s] == b[s] for s in range(9, 13)), (a, b)
    assert records(whole, "val")[-1]["accuracy"] == records(killed, "val")[-1]["accuracy"]
    from safetensors.torch import load_file

    wa, wb = load_file(whole / "step-000012" / "model.safetensors"), load_file(killed / "step-000012" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def base_without_eot(tmp_path_factory, shared_data) -> Path:
    from gpt2.tokenizer import train_bpe

    tok = train_bpe(sms_texts(shared_data)[:500], vocab_size=300, special_tokens=[], progress=False)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=tok.n_vocab, n_positions=64, n_embd=32, n_layer=2, n_head=2))
    return save_model_dir(tmp_path_factory, "base-no-eot", model, tok)


@pytest.mark.parametrize("case", ["no-text-column", "no-label-column", "label-only-in-test", "no-base",
                                  "no-eot-in-the-base"])
def test_bad_inputs_are_one_line_with_exit_2(tmp_path, base, base_without_eot, sms, case, gpt2_main) -> None:
    out = tmp_path / "run"
    if case == "no-text-column":
        argv = ["finetune", "classify", *args(base, sms, out, "finetune.text_field=body")]
        expect = "body"
    elif case == "no-label-column":
        argv = ["finetune", "classify", *args(base, sms, out, "finetune.label_field=7")]
        expect = "7"
    elif case == "no-eot-in-the-base":
        argv = ["finetune", "classify", *args(base_without_eot, sms, out)]
        expect = "end-of-text"
    elif case == "label-only-in-test":
        test = tmp_path / "test.tsv"
        test.write_text("ham\thello there\nmaybe\twho knows\n", encoding="utf-8")
        argv = ["finetune", "classify", *args(base, sms, out, f"finetune.test_file={test}")]
        expect = "maybe"
    else:  # a language model given to `gpt2 classify` is tested in test_classify_cli.py
        argv = ["finetune", "classify", *args(base, sms, out), "model.init_from=null"]
        expect = "model.init_from"
    r = gpt2_main(*argv)
    assert r.returncode == 2, r.stderr[-3000:]
    assert r.stderr.startswith("error: ") and r.stderr.strip().count("\n") == 0, r.stderr
    assert expect in r.stderr
    assert not (out / "latest").exists()


def test_empty_texts_are_skipped_and_counted(tmp_path, base, sms, gpt2_main) -> None:
    data = tmp_path / "with-empties.tsv"
    data.write_text(sms.read_text(encoding="utf-8") + "ham\t \nspam\t\n", encoding="utf-8")
    out = tmp_path / "run"
    r = gpt2_main("finetune", "classify", *args(base, data, out, "train.max_steps=2", "eval.interval=0"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert records(out, "start")[0]["skipped_empty"] == 2
    assert "skipped 2 empty text(s)" in r.stderr


def test_ddp_two_processes_match_one_process(tmp_path, base, sms, gpt2_main) -> None:
    """torchrun: 2 processes × 1 micro-step of 8 give the losses of 1 process × 2 micro-steps of 8."""
    extra = ["finetune.global_batch_size=16", "train.max_steps=6", "eval.interval=3", "checkpoint.interval=0"]
    one, two = tmp_path / "one", tmp_path / "two"
    r = gpt2_main("finetune", "classify", *args(base, sms, one, *extra))  # one process: this one
    assert r.returncode == 0, r.stderr[-3000:]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "gpt2", "finetune", "classify", *args(base, sms, two, *extra)],
                       capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    start = records(two, "start")[0]
    assert (start["world_size"], start["grad_accum"]) == (2, 1)
    a = {x["step"]: x["loss"] for x in records(one, "train")}
    b = {x["step"]: x["loss"] for x in records(two, "train")}
    assert sorted(a) == sorted(b) == list(range(1, 7))
    assert all(abs(a[s] - b[s]) <= 1e-5 for s in a), (a, b)
    va, vb = records(one, "val"), records(two, "val")
    assert [v["confusion"] for v in va] == [v["confusion"] for v in vb]  # every val example scored once
    assert all(abs(x["val_loss"] - y["val_loss"]) <= 1e-5 for x, y in zip(va, vb))
    assert len(records(two, "test")) == 1  # rank 0 alone scores the test split
