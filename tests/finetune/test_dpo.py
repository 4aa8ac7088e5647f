"""`gpt2 finetune dpo` on a tiny instruction model: the first loss is ln 2 with zero rewards (full, LoRA,
precomputed reference, averaged log-probs), the loss is normalised per pair across micro-steps, the
preference files' forms read alike, TRL's metric names are logged in training and at each evaluation,
`gpt2 eval --preference` scores the held-out pairs as training did, a SIGKILLed run resumes bit for bit,
and bad input is one `error:` line with exit 2 and nothing written.

The runs are in-process (gpt2.cli.main) except the killed ones (a real SIGKILL, in a subprocess)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from finetune_helpers import save_model_dir

from gpt2 import GPT2Config, GPT2LMHeadModel
from gpt2.cli import main

WORDS = ["apples", "rivers", "music", "the moon", "winter", "bread", "trains", "maps", "gardens", "clocks"]


def preference_entries(n: int = 40) -> list[dict]:
    """Alpaca entries with a polite chosen and a curt rejected answer, of different lengths."""
    out = []
    for i in range(n):
        w = WORDS[i % len(WORDS)]
        out.append({"instruction": f"Tell me about {w}.", "input": "" if i % 3 else f"Keep it short, {i}.",
                    "chosen": f"Thank you for asking! {w.capitalize()} are lovely, and I am happy to help." + " Yes." * (i % 4),
                    "rejected": f"Ugh. {w} whatever." + " No." * (i % 5)})
    return out


@pytest.fixture(scope="module")
def tok():
    from gpt2.generate.chat import FORMATS
    from gpt2.tokenizer import train_bpe

    # the prompt format's own text too, so a pair is tens of tokens, not hundreds
    texts = [" ".join(e.values()) + FORMATS["alpaca"].render(e["instruction"], e["input"]) for e in preference_entries()]
    return train_bpe(texts, vocab_size=400, special_tokens=["<|endoftext|>"], progress=False)


@pytest.fixture(scope="module")
def base(tmp_path_factory, tok) -> Path:
    """A tiny random instruction model: 2 layers, 32 wide, with chat.json (alpaca)."""
    from gpt2.generate.chat import save_chat_format

    torch.manual_seed(0)
    eot = tok.eot_token
    model = GPT2LMHeadModel(GPT2Config(vocab_size=tok.n_vocab, n_positions=128, n_embd=32, n_layer=2, n_head=2,
                                       bos_token_id=eot, eos_token_id=eot))
    d = save_model_dir(tmp_path_factory, "base", model, tok)
    save_chat_format(d, "alpaca")
    return d


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in preference_entries()), encoding="utf-8")
    return path


def args(base: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["finetune", "dpo", "dpo-polite", f"model.init_from={base}", f"finetune.train_file={data}",
            f"train.out_dir={out}", "train.seq_len=127", "train.micro_batch_size=4", "train.max_steps=6",
            "train.dtype=fp32", "train.max_minutes=0", "eval.interval=3", "checkpoint.interval=3",
            "checkpoint.keep_last=2", "train.log_interval=1", "optim.warmup_steps=0", "optim.lr=3e-3",
            "finetune.split=[0.8,0.1,0.1]", "finetune.eval_batch_size=8", "sample.max_new_tokens=4",
            "finetune.dpo.precompute_reference=false", *extra]


def records(run_dir: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


METRICS = ["rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
           "logps/rejected"]


# ----------------------------------------------------------------------------------------------- must show 1
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["full", "lora", "precompute", "average", "micro-steps"])
def test_first_loss_is_ln2_and_every_reward_zero(tmp_path, base, data, mode) -> None:
    """Step 0: the policy is the reference, so every log-ratio is 0: loss ln 2, rewards 0 (to 1e-6), and the
    reference is what the mode says (a frozen copy; LoRA: no second model; precomputed: none kept)."""
    from gpt2.config import load_config
    from gpt2.finetune.dpo import DPOTask
    from gpt2.train.loop import run

    extra = {"full": [], "lora": ["finetune.lora.rank=4"], "precompute": ["finetune.dpo.precompute_reference=true"],
             "average": ["finetune.dpo.average_logps=true"], "micro-steps": ["finetune.global_batch_size=8"]}[mode]
    argv = args(base, data, tmp_path / "run", "train.max_steps=1", *extra)
    task = DPOTask(load_config(argv[2], argv[3:]))
    run(task.cfg, task, progress=False)
    first = records(tmp_path / "run", "train")[0]
    assert abs(first["loss"] - math.log(2)) < 1e-6, first
    for k in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert abs(first[k]) < 1e-6, (k, first)
    assert first["rewards/accuracies"] == 0.0  # TRL counts chosen > rejected, strictly
    assert first["logps/chosen"] < 0 and first["logps/rejected"] < 0
    if mode in ("lora", "precompute"):
        assert task.reference is None
    else:
        assert task.reference is not None and task.reference is not task.policy
        assert all(not p.requires_grad for p in task.reference.parameters())


# ------------------------------------------------------------------------------------------------ the loss
def test_loss_is_normalised_per_pair_across_micro_steps(base, data) -> None:
    """accumulate over 2 micro-batches of 2 pairs gives the gradients and loss of 1 micro-batch of 4 pairs:
    the mean of the 4 pair losses, whatever their token counts."""
    from gpt2.config import load_config
    from gpt2.finetune.dpo import DPOTask
    from gpt2.finetune.preference_data import pad_pairs
    from gpt2.train.loop import accumulate

    argv = args(base, data, Path("unused"))
    task = DPOTask(load_config(argv[2], argv[3:]))
    task.prepare(progress=False)
    task.master = False
    policy = task.build_model(None)
    with torch.no_grad():  # move the policy away from the reference, so the losses differ from pair to pair
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    pairs = task.pairs["train"][:4]
    assert len({len(p.chosen[0]) for p in pairs}) > 1  # different lengths, different padding

    def run(batches):
        policy.zero_grad(set_to_none=True)
        step = accumulate(task, policy, policy, batches, mode="single", world_size=1, device=torch.device("cpu"))
        return step, [p.grad.clone() for p in policy.parameters()]

    whole, g1 = run([pad_pairs(pairs, task.pad_id)])
    halves, g2 = run([pad_pairs(pairs[:2], task.pad_id), pad_pairs(pairs[2:], task.pad_id)])
    assert whole.count == halves.count == 4
    assert abs(whole.loss - halves.loss) < 1e-6 and abs(whole.loss - math.log(2)) > 1e-3
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    losses = []
    for p in pairs:  # one pair at a time: the mean of the pair losses
        losses.append(run([pad_pairs([p], task.pad_id)])[0].loss)
    assert abs(whole.loss - sum(losses) / 4) < 1e-6


def test_the_forms_of_a_preference_file_read_alike(tmp_path, tok) -> None:
    """Alpaca with preferences, TRL's string prompt, TRL's conversations (explicit and implicit prompt): one pair."""
    from gpt2.finetune.preference_data import encode_pairs, read_preference
    from gpt2.generate.chat import FORMATS

    user = {"role": "user", "content": "Tell me about maps."}
    forms = [
        {"instruction": "Tell me about maps.", "input": "", "chosen": "Gladly!", "rejected": "No."},
        {"prompt": "Tell me about maps.", "chosen": "Gladly!", "rejected": "No."},
        {"prompt": [user], "chosen": [{"role": "assistant", "content": "Gladly!"}],
         "rejected": [{"role": "assistant", "content": "No."}]},
        {"chosen": [user, {"role": "assistant", "content": "Gladly!"}],
         "rejected": [user, {"role": "assistant", "content": "No."}]},
    ]
    path = tmp_path / "forms.jsonl"
    path.write_text("".join(json.dumps(f) + "\n" for f in forms), encoding="utf-8")
    prefs = read_preference(path)
    pairs, kept, _ = encode_pairs(prefs, tok, FORMATS["alpaca"], max_tokens=1000)
    assert kept == [0, 1, 2, 3]
    assert all(p.chosen == pairs[0].chosen and p.rejected == pairs[0].rejected for p in pairs)
    ids, mask = pairs[0].chosen
    assert tok.decode([t for t, m in zip(ids, mask) if m]) == "Gladly!<|endoftext|>"
    assert "### Response:" in tok.decode([t for t, m in zip(ids, mask) if not m])
    # the held-out file's form (TRL's conversational, explicit prompt) reads back as it was written
    from gpt2.finetune.preference_data import write_preference

    write_preference(tmp_path / "back.jsonl", prefs)
    assert read_preference(tmp_path / "back.jsonl") == [prefs[0]] * 4


# ------------------------------------------------------------------------------------- training and eval
@pytest.fixture(scope="module")
def full_run(tmp_path_factory, base, data) -> Path:
    out = tmp_path_factory.mktemp("dpo") / "run"
    # no validation share: the held-out test pairs (heldout.jsonl) are what evaluation reports
    assert main(args(base, data, out, "finetune.split=[0.8,0,0.2]")) == 0
    return out


@pytest.mark.slow
def test_metrics_carry_trls_names_and_checkpoints_are_instruction_checkpoints(full_run) -> None:
    import transformers

    train, vals = records(full_run, "train"), records(full_run, "val")
    assert [r["step"] for r in train] == list(range(1, 7)) and all(k in r for r in train for k in METRICS)
    assert [v["step"] for v in vals] == [3, 6] and all(f"eval_{k}" in v for v in vals for k in METRICS)
    assert vals[-1]["val_pairs"] == 8 and train[-1]["rewards/margins"] > 0  # the policy moved towards chosen
    ckpt = full_run / "step-000006"
    assert json.loads((ckpt / "chat.json").read_text()) == {"format": "alpaca"}
    assert transformers.AutoModelForCausalLM.from_pretrained(ckpt) is not None
    assert records(full_run, "start")[0]["splits"]["train"]["pairs"] == 32


@pytest.mark.slow
def test_eval_preference_scores_the_held_out_pairs_as_training_did(full_run, base, capsys) -> None:
    capsys.readouterr()
    assert main(["eval", str(full_run), "--preference", str(full_run / "heldout.jsonl"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    last = records(full_run, "val")[-1]
    assert result["pairs"] == last["val_pairs"] == 8 and result["reference"] == str(base)
    assert abs(result["reward_accuracy"] - last["eval_rewards/accuracies"]) < 1e-9
    assert abs(result["mean_margin"] - last["eval_rewards/margins"]) < 1e-6
    assert abs(result["loss"] - last["val_loss"]) < 1e-6
    # against itself as the reference: every reward is 0 and the loss ln 2; the model alone ranks as before
    assert main(["eval", str(full_run), "--preference", str(full_run / "heldout.jsonl"), "--reference",
                 str(full_run / "step-000006"), "--json"]) == 0
    itself = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert abs(itself["loss"] - math.log(2)) < 1e-6 and itself["mean_margin"] == 0
    assert itself["policy_accuracy"] == result["policy_accuracy"]


# ----------------------------------------------------------------------------------------- must show 5
KILL = """
import os, signal, sys
import gpt2.train.checkpointer as checkpointer
from gpt2.cli import main
orig = checkpointer.save_checkpoint
def save_then_die(run_dir, step, **kw):
    path = orig(run_dir, step, **kw)
    if step == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return path
checkpointer.save_checkpoint = save_then_die
sys.exit(main({argv!r}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["full", "lora"])
def test_sigkilled_run_resumes_bit_for_bit(tmp_path, base, data, kind) -> None:
    """Killed (SIGKILL) right after the step-3 checkpoint, resumed: the same losses, rewards and weights as a run
    never stopped (two micro-steps per step, length-bucketed batches, dropout on)."""
    import subprocess
    import sys

    from safetensors.torch import load_file

    extra = ["finetune.global_batch_size=8", "model.dropout=0.1"]
    if kind == "lora":
        extra += ["finetune.lora.rank=4", "finetune.lora.dropout=0.1"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert main(args(base, data, whole, *extra)) == 0
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[2] / "src"),
                                                       os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", KILL.format(argv=args(base, data, killed, *extra))], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == -9, r.stderr[-2000:]
    assert (killed / "step-000003").is_dir() and not (killed / "step-000006").exists()
    assert main(["finetune", "dpo", "--resume", str(killed)]) == 0
    a = {x["step"]: x for x in records(whole, "train")}
    b = {x["step"]: x for x in records(killed, "train")}
    assert sorted(b) == list(range(1, 7))
    for s in range(4, 7):
        assert all(a[s][k] == b[s][k] for k in ["loss", "grad_norm", *METRICS]), (a[s], b[s])
    assert records(whole, "val")[-1] == {**records(killed, "val")[-1]}
    name = "adapter_model.safetensors" if kind == "lora" else "model.safetensors"
    wa, wb = load_file(whole / "step-000006" / name), load_file(killed / "step-000006" / name)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def bare_base(tmp_path_factory, base) -> Path:
    """The base without chat.json (a pretrained model, not an instruction model)."""
    from gpt2.tokenizer import load_tokenizer

    return save_model_dir(tmp_path_factory, "bare", GPT2LMHeadModel.from_pretrained(base), load_tokenizer(base))


@pytest.fixture(scope="module")
def other_tokenizer_model(tmp_path_factory, base) -> Path:
    """A model of the same shapes whose tokenizer is another one."""
    from gpt2.tokenizer import train_bpe

    tok = train_bpe(["some other corpus entirely " * 30], vocab_size=300, special_tokens=["<|endoftext|>"],
                    progress=False)
    return save_model_dir(tmp_path_factory, "other", GPT2LMHeadModel(GPT2Config.load(base)), tok)


@pytest.mark.parametrize("case", ["no-chosen", "no-rejected", "no-chat-format", "beta-0", "beta-negative",
                                  "reference-tokenizer", "eval-reference-tokenizer"])
def test_bad_input_is_one_error_line_exit_2_and_nothing_written(tmp_path, base, data, bare_base,
                                                                other_tokenizer_model, capsys, case) -> None:
    out = tmp_path / "run"
    bad = tmp_path / "bad.jsonl"
    entries = preference_entries(10)
    if case in ("no-chosen", "no-rejected"):
        del entries[7][case.removeprefix("no-")]
        bad.write_text("".join(json.dumps(e) + "\n" for e in entries), encoding="utf-8")
        argv, expect = args(base, bad, out), f"{bad}:8 has no '{case.removeprefix('no-')}'"
    elif case == "no-chat-format":
        argv, expect = args(bare_base, data, out), "--format"
    elif case == "beta-0":
        argv, expect = args(base, data, out, "finetune.dpo.beta=0"), "finetune.dpo.beta=0.0 must be positive"
    elif case == "beta-negative":
        argv, expect = args(base, data, out, "finetune.dpo.beta=-0.1"), "finetune.dpo.beta=-0.1 must be positive"
    elif case == "reference-tokenizer":
        argv = args(base, data, out, f"finetune.dpo.reference={other_tokenizer_model}")
        expect = "another tokenizer"
    else:
        argv, expect = ["eval", str(base), "--preference", str(data), "--reference", str(other_tokenizer_model)], \
            "another tokenizer"
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expect in err[0], err
    assert not out.exists()


@pytest.mark.slow
def test_format_flag_stands_in_for_a_missing_chat_format(tmp_path, bare_base, data) -> None:
    out = tmp_path / "run"
    assert main([*args(bare_base, data, out, "train.max_steps=1"), "--format", "alpaca"]) == 0
    assert json.loads((out / "step-000001" / "chat.json").read_text()) == {"format": "alpaca"}
