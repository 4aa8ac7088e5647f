"""`gpt2 finetune instruct` end to end on a tiny base: checkpoints that carry their prompt format (chat.json
and the chat template), the held-out file, `gpt2 eval --instruct`, `gpt2 generate --chat`, exact resume of
full and LoRA runs, PEFT parity of a trained LM adapter, and the bad inputs through the command line.

The runs are in-process (gpt2.cli.main, what the CLI runs); the kill is an exception right after a save."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from finetune_helpers import save_model_dir, tiny_base

from gpt2 import GPT2Config, GPT2LMHeadModel
from gpt2.cli import main

pytestmark = pytest.mark.slow


def instruction_texts(shared_data: Path) -> list[dict]:
    return json.loads((shared_data / "instruction-data.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def base(tmp_path_factory, shared_data) -> Path:
    """A tiny random GPT-2 with a BPE trained on the instruction texts."""
    texts = [" ".join(e.values()) for e in instruction_texts(shared_data)]
    return tiny_base(tmp_path_factory, texts, vocab_size=600, n_positions=160)


@pytest.fixture(scope="module")
def data(tmp_path_factory, shared_data) -> Path:
    """The first 120 entries as jsonl."""
    path = tmp_path_factory.mktemp("data") / "alpaca.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in instruction_texts(shared_data)[:120]), encoding="utf-8")
    return path


def args(base: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["finetune", "instruct", "sft-alpaca", f"model.init_from={base}", f"finetune.train_file={data}",
            f"train.out_dir={out}", "train.seq_len=159", "train.micro_batch_size=4", "train.max_steps=8",
            "train.dtype=fp32", "eval.interval=4", "checkpoint.interval=4", "checkpoint.keep_last=2",
            "train.log_interval=1", "optim.warmup_steps=2", "optim.lr=3e-3", "finetune.split=[0.8,0.1,0.1]",
            "finetune.eval_batch_size=8", "sample.max_new_tokens=8", *extra]


def records(run_dir: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, base, data) -> Path:
    out = tmp_path_factory.mktemp("sft") / "run"
    assert main(args(base, data, out)) == 0
    return out


def test_checkpoints_carry_the_prompt_format_and_the_held_out_file(full_run, capsys) -> None:
    import transformers

    from gpt2.finetune.instruct_data import read_instruct

    ckpt = full_run / "step-000008"
    assert json.loads((ckpt / "chat.json").read_text()) == {"format": "alpaca"}
    assert "### Response:" in json.loads((ckpt / "tokenizer_config.json").read_text())["chat_template"]
    assert transformers.AutoModelForCausalLM.from_pretrained(ckpt) is not None
    held_out = read_instruct(full_run / "heldout.jsonl")
    assert len(held_out) == 12 and all(c[-1]["role"] == "assistant" for c in held_out)  # 120 × 0.1 test share
    start = records(full_run, "start")[0]
    assert start["task"] == "instruct" and start["splits"]["train"]["examples"] == 96
    assert start["trainable_parameters"] == start["parameters"]
    vals = records(full_run, "val")
    assert [v["step"] for v in vals] == [4, 8] and all(v["val_tokens"] > 0 for v in vals)
    losses = [r["loss"] for r in records(full_run, "train")]
    assert losses[-1] < losses[0]

    capsys.readouterr()
    assert main(["eval", str(full_run), "--instruct", str(full_run / "heldout.jsonl"), "--json",
                 "--max-new-tokens", "8"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["entries"] == 12 and len(result["answers"]) == 12 and result["format"] == "alpaca"
    assert 0 <= result["ended_rate"] <= 1 and result["response_loss"] > 0
    assert main(["generate", str(full_run), "Name a color.", "--chat", "--greedy", "--max-new-tokens", "5",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["prompt_tokens"] > 20  # the whole Alpaca prompt


def test_eval_scores_the_held_out_split_as_training_did(tmp_path, base, data, capsys) -> None:
    """`gpt2 eval --instruct` on the run's heldout.jsonl gives the loss the trainer's last evaluation logged.

    With no validation share the trainer evaluates on the test split, which is what heldout.jsonl holds, and
    its last evaluation (step 4) scores the weights the run's `latest` checkpoint holds: two code paths (the
    trainer's evaluator, batched by finetune.eval_batch_size; the eval command, batched its own way) over
    the same examples and weights."""
    out = tmp_path / "test-split"
    assert main(args(base, data, out, "finetune.split=[0.9,0,0.1]", "train.max_steps=4", "eval.interval=4",
                     "checkpoint.interval=4", "sample.interval=0")) == 0
    start = records(out, "start")[0]
    assert start["evaluated_on"] == "test"
    logged = records(out, "val")[-1]
    assert logged["step"] == 4 and (out / "latest").read_text().strip() == "step-000004"
    capsys.readouterr()
    assert main(["eval", str(out), "--instruct", str(out / "heldout.jsonl"), "--json", "--no-generate",
                 "--batch-size", "5"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["response_tokens"] == logged["val_tokens"]  # the same targets
    # fp64 sums of fp32 per-token losses, batched and padded differently: they agree to ~1e-7
    assert abs(result["response_loss"] - logged["val_loss"]) < 1e-5, (result["response_loss"], logged["val_loss"])


def _kill_after(monkeypatch, step: int):
    import gpt2.train.checkpointer as checkpointer

    class Killed(BaseException):
        pass

    save = checkpointer.save_checkpoint

    def save_then_die(run_dir, at, **kw):
        path = save(run_dir, at, **kw)
        if at == step:
            raise Killed
        return path

    monkeypatch.setattr(checkpointer, "save_checkpoint", save_then_die)
    return Killed, lambda: monkeypatch.setattr(checkpointer, "save_checkpoint", save)


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_killed_run_resumes_bit_for_bit(tmp_path, base, data, monkeypatch, kind) -> None:
    """Dropout on, two micro-steps per step, length-bucketed batches: every state must come back."""
    extra = ["model.dropout=0.1", "finetune.global_batch_size=8"]
    if kind == "lora":
        extra += ["finetune.lora.rank=4", "finetune.lora.dropout=0.1"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert main(args(base, data, whole, *extra)) == 0
    killed_error, restore = _kill_after(monkeypatch, 4)
    with pytest.raises(killed_error):
        main(args(base, data, killed, *extra))
    restore()
    assert main(["finetune", "instruct", "--resume", str(killed)]) == 0
    a = {x["step"]: x["loss"] for x in records(whole, "train")}
    b = {x["step"]: x["loss"] for x in records(killed, "train")}
    assert sorted(b) == list(range(1, 9)) and all(a[s] == b[s] for s in range(5, 9)), (a, b)
    assert records(whole, "val")[-1]["val_loss"] == records(killed, "val")[-1]["val_loss"]
    from safetensors.torch import load_file

    name = "adapter_model.safetensors" if kind == "lora" else "model.safetensors"
    wa, wb = load_file(whole / "step-000008" / name), load_file(killed / "step-000008" / name)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_lora_adapter_loads_in_peft_with_our_logits_and_merges(tmp_path, base, data, capsys) -> None:
    import peft
    import transformers

    from gpt2.load import load

    out = tmp_path / "lora"
    assert main(args(base, data, out, "finetune.lora.rank=4", "finetune.lora.targets=[c_attn,mlp.c_proj]")) == 0
    ckpt = out / "step-000008"
    config = json.loads((ckpt / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM" and config["base_model_name_or_path"] == str(base.resolve())
    assert config["target_modules"] == ["c_attn", "mlp.c_proj"] and (ckpt / "chat.json").is_file()
    ours = load(out, device="cpu")  # the run directory → its latest checkpoint → the adapter on its base
    assert ours.chat_format is not None and ours.chat_format.name == "alpaca"
    hf = peft.PeftModel.from_pretrained(transformers.GPT2LMHeadModel.from_pretrained(base), ckpt).eval()
    ids = torch.randint(0, 600, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = ours.model(ids).logits
        torch.testing.assert_close(hf(input_ids=ids).logits, expected, atol=1e-5, rtol=0)
    merged = tmp_path / "merged"
    assert main(["lora", "merge", str(ckpt), str(merged)]) == 0
    assert (merged / "chat.json").is_file()
    with torch.no_grad():
        plain = transformers.GPT2LMHeadModel.from_pretrained(merged).eval()
        torch.testing.assert_close(plain(input_ids=ids).logits, expected, atol=1e-5, rtol=0)
    # the tokenizer's chat template gives the prompt ids our chat uses
    from gpt2.generate.chat import encode_conversation

    hf_tok = transformers.AutoTokenizer.from_pretrained(ckpt)
    messages = [{"role": "user", "content": "Name a color."}]
    want = encode_conversation(messages, ours.tokenizer, ours.chat_format, add_generation_prompt=True)[0]
    assert hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                      return_dict=False) == want


@pytest.fixture(scope="module")
def other_base(tmp_path_factory, base) -> Path:
    """A base with other shapes (n_embd 48), and one with the same shapes but another tokenizer."""
    from gpt2.tokenizer import load_tokenizer, train_bpe

    tok = load_tokenizer(base)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=tok.n_vocab, n_positions=160, n_embd=48, n_layer=2, n_head=2,
                                       bos_token_id=tok.eot_token, eos_token_id=tok.eot_token))
    return save_model_dir(tmp_path_factory, "other", model, tok), train_bpe(
        ["some other corpus entirely " * 30], vocab_size=300, special_tokens=["<|endoftext|>"], progress=False)


def _adapter_on(tmp_path: Path, base: Path, new_base: Path) -> Path:
    """An adapter made on `base` (with its tokenizer, as training saves it) whose adapter_config.json names `new_base`."""
    from gpt2.model.lora import LoRAConfig, inject_lora, save_adapter
    from gpt2.tokenizer import load_tokenizer

    model = inject_lora(GPT2LMHeadModel.from_pretrained(base), LoRAConfig(rank=2))
    return save_adapter(model, tmp_path / "adapter", base_model_name_or_path=str(new_base),
                        tokenizer=load_tokenizer(base))


@pytest.mark.parametrize("case", ["no-output", "unknown-role", "chat-without-template", "eval-without-template",
                                  "generate-chat-without-template", "adapter-other-shapes",
                                  "adapter-other-tokenizer", "rank-0", "unknown-format"])
def test_bad_inputs_are_one_line_with_exit_2(tmp_path, base, data, other_base, capsys, monkeypatch, case) -> None:
    out = tmp_path / "run"
    bad = tmp_path / "bad.jsonl"
    if case == "no-output":
        bad.write_text(json.dumps({"instruction": "Say hi.", "input": ""}) + "\n", encoding="utf-8")
        argv, expect = args(base, bad, out), "output"
    elif case == "unknown-role":
        msgs = [{"role": "narrator", "content": "x"}, {"role": "assistant", "content": "y"}]
        bad.write_text(json.dumps({"messages": msgs}) + "\n", encoding="utf-8")
        argv, expect = args(base, bad, out), "narrator"
    elif case == "chat-without-template":
        monkeypatch.setattr("sys.stdin", __import__("io").StringIO("hello\n"))
        argv, expect = ["chat", str(base)], "chat.json"
    elif case == "eval-without-template":
        argv, expect = ["eval", str(base), "--instruct", str(data), "--no-generate"], "--format"
    elif case == "generate-chat-without-template":
        argv, expect = ["generate", str(base), "Hi", "--chat"], "chat.json"
    elif case == "adapter-other-shapes":
        argv, expect = ["generate", str(_adapter_on(tmp_path, base, other_base[0])), "Hi"], "shape"
    elif case == "adapter-other-tokenizer":
        other = tmp_path / "other-tok-base"
        GPT2LMHeadModel(GPT2Config.load(base)).save_pretrained(other)
        other_base[1].save(other)
        argv, expect = ["generate", str(_adapter_on(tmp_path, base, other)), "Hi"], "another tokenizer"
    elif case == "rank-0":
        argv, expect = args(base, data, out, "finetune.lora.rank=0"), "finetune.lora.rank=0"
    else:
        argv, expect = args(base, data, out, "finetune.format=vicuna"), "finetune.format='vicuna'"
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expect in err[0], err
    assert not (out / "latest").exists()
