"""LoRA through the trainer (`gpt2 finetune classify ... finetune.lora.rank=R`), on a tiny base:
the checkpoints are PEFT adapters that `peft` loads on `transformers` with our logits, the base stays
frozen, a killed run resumes bit for bit, and bad LoRA settings are one-line errors.

The runs are in-process (gpt2.cli.main), which is what the CLI runs; the subprocess boundary is tested
by test_finetune.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from finetune_helpers import sms_texts, tiny_base

from gpt2.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base(tmp_path_factory, shared_data) -> Path:
    """A tiny random GPT-2 with a BPE trained on the SMS texts."""
    return tiny_base(tmp_path_factory, sms_texts(shared_data)[:2000], vocab_size=400)


@pytest.fixture(scope="module")
def sms(tmp_path_factory, shared_data) -> Path:
    lines = (shared_data / "sms_spam.tsv").read_text(encoding="utf-8").splitlines()[:400]
    path = tmp_path_factory.mktemp("sms") / "sms.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def args(base: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["finetune", "classify", "finetune-sms-spam", f"model.init_from={base}", f"finetune.train_file={data}",
            f"train.out_dir={out}", "train.seq_len=48", "train.micro_batch_size=8", "train.max_steps=8",
            "train.dtype=fp32", "eval.interval=4", "checkpoint.interval=4", "checkpoint.keep_last=2",
            "train.log_interval=1", "optim.warmup_steps=2", "optim.lr=1e-2", "finetune.balance=none",
            "finetune.lora.rank=4", "finetune.lora.alpha=8", *extra]


def records(run_dir: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, base, sms) -> Path:
    out = tmp_path_factory.mktemp("lora") / "run"
    assert main(args(base, sms, out)) == 0
    return out


def test_checkpoints_are_peft_adapters_on_a_frozen_base(lora_run, base) -> None:
    from safetensors.torch import load_file

    ckpt = lora_run / "step-000008"
    assert (ckpt / "adapter_model.safetensors").is_file() and not (ckpt / "model.safetensors").exists()
    config = json.loads((ckpt / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS" and config["r"] == 4 and config["fan_in_fan_out"] is True
    assert config["base_model_name_or_path"] == str((lora_run / "base").resolve())
    # the adapters' base is the LM of model.init_from, untouched, with the classifier's labels
    written = load_file(lora_run / "base" / "model.safetensors")
    original = load_file(base / "model.safetensors")
    assert all(torch.equal(written[k], original[k]) for k in original if k in written)
    assert json.loads((lora_run / "base" / "config.json").read_text())["id2label"] == {"0": "ham", "1": "spam"}
    # trainable: 2 blocks × (A + B of each of the 4 targets) + the head
    n, r = 32, 4
    lora = 2 * r * ((n + 3 * n) + (n + n) + (n + 4 * n) + (4 * n + n))
    start = records(lora_run, "start")[0]
    assert start["trainable_parameters"] == lora + 2 * n
    assert start["lora"]["rank"] == 4 and start["lora"]["targets"] == ["c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"]
    trained = load_file(ckpt / "adapter_model.safetensors")
    b = [v for k, v in trained.items() if "lora_B" in k]
    assert b and all(v.abs().sum() > 0 for v in b)  # B starts at zero: the adapters did train
    assert records(lora_run, "test")[-1]["examples"] > 0  # the best adapter scored the test split


def test_peft_on_transformers_gives_our_logits_and_the_merged_ones(lora_run, tmp_path) -> None:
    import peft
    import transformers

    from gpt2.load import load

    ckpt = lora_run / "step-000008"
    ours = load(ckpt, task="classify", device="cpu").model
    hf_base = transformers.AutoModelForSequenceClassification.from_pretrained(lora_run / "base")
    hf = peft.PeftModel.from_pretrained(hf_base, ckpt).eval()
    ids = torch.randint(0, 300, (3, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ours(ids).logits
        torch.testing.assert_close(hf(input_ids=ids).logits, expected, atol=1e-5, rtol=0)
    merged = tmp_path / "merged"
    assert main(["lora", "merge", str(ckpt), str(merged)]) == 0
    plain = transformers.AutoModelForSequenceClassification.from_pretrained(merged).eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, expected, atol=1e-5, rtol=0)


def test_killed_lora_run_resumes_bit_for_bit(tmp_path, base, sms, monkeypatch) -> None:
    """Adapter dropout on and two micro-steps per step: the RNG, the data position and the optimizer
    state of the adapters must all come back. The kill is an exception right after the step-4 save."""
    import gpt2.train.checkpointer as checkpointer

    extra = ["finetune.lora.dropout=0.1", "model.dropout=0.1", "finetune.global_batch_size=16"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert main(args(base, sms, whole, *extra)) == 0

    class Killed(BaseException):
        pass

    save = checkpointer.save_checkpoint

    def save_then_die(run_dir, step, **kw):
        path = save(run_dir, step, **kw)
        if step == 4:
            raise Killed
        return path

    monkeypatch.setattr(checkpointer, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        main(args(base, sms, killed, *extra))
    monkeypatch.setattr(checkpointer, "save_checkpoint", save)
    assert main(["finetune", "classify", "--resume", str(killed)]) == 0
    a = {x["step"]: x["loss"] for x in records(whole, "train")}
    b = {x["step"]: x["loss"] for x in records(killed, "train")}
    assert sorted(b) == list(range(1, 9)) and all(a[s] == b[s] for s in range(5, 9)), (a, b)
    from safetensors.torch import load_file

    wa = load_file(whole / "step-000008" / "adapter_model.safetensors")
    wb = load_file(killed / "step-000008" / "adapter_model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize(("extra", "expect"), [
    (["finetune.lora.rank=0"], "finetune.lora.rank=0 must be at least 1"),
    (["finetune.lora.rank=-2"], "finetune.lora.rank=-2"),
    (["finetune.lora.targets=[c_attn,wte]"], "choose among c_attn"),
    (["finetune.lora.alpha=0"], "finetune.lora.alpha"),
    (["finetune.trainable=head"], "finetune.trainable=head is for full fine-tuning"),
    (["train.distributed=fsdp"], "FSDP"),
    (["optim.name=muon"], "optim.name=adamw"),
])
def test_bad_lora_settings_are_one_line_errors(tmp_path, base, sms, capsys, extra, expect) -> None:
    out = tmp_path / "run"
    assert main(args(base, sms, out, *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.strip().count("\n") == 0 and expect in err, err
    assert not out.exists()
