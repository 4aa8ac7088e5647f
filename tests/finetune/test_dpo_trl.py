"""DPO parity with TRL (the reference implementation): on a tiny model and one padded batch of pairs of
different lengths, our DPOTask.loss_sum and its step metrics equal what TRL's own DPOTrainer computes
(`_compute_loss` on its DataCollatorForPreference batch, with its fused log-prob head), to 1e-5:
- summed log-probs: TRL's loss_type="sigmoid"; loss, rewards/chosen, rewards/rejected, rewards/margins,
  rewards/accuracies, logps/chosen, logps/rejected, for the batch and for every pair alone;
- averaged log-probs (finetune.dpo.average_logps): TRL's loss_type="sigmoid_norm" (the same sigmoid on the
  per-token mean log-ratios); TRL still logs summed log-probs and rewards there, so ours are checked
  against TRL's divided by each response's token count (its completion_mask).
The policy is the reference plus noise, so the rewards are neither 0 nor all of one sign."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gpt2 import GPT2Config, GPT2LMHeadModel

pytestmark = pytest.mark.slow
trl = pytest.importorskip("trl")

METRICS = ["rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
           "logps/rejected"]
# (prompt, chosen, rejected) lengths in tokens: every side of a different length, so the batch pads
LENGTHS = [(5, 3, 7), (9, 6, 2), (3, 8, 4), (7, 1, 5)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(reference dir, policy dir, tokenizer): a tiny GPT-2 and the same plus noise, as HF directories."""
    from gpt2.tokenizer import train_bpe

    tok = train_bpe(["a tiny corpus for a tiny tokenizer, nothing more " * 20], vocab_size=300,
                    special_tokens=["<|endoftext|>"], progress=False)
    torch.manual_seed(0)
    eot = tok.eot_token
    ref = GPT2LMHeadModel(GPT2Config(vocab_size=tok.n_vocab, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                     bos_token_id=eot, eos_token_id=eot))
    policy = GPT2LMHeadModel(ref.config)
    policy.load_state_dict(ref.state_dict())
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.2 * torch.randn_like(p))
    dirs = []
    for name, m in (("ref", ref), ("policy", policy)):
        d = tmp_path_factory.mktemp(name)
        m.save_pretrained(d)
        tok.save(d)
        dirs.append(d)
    return dirs[0], dirs[1], tok


def examples(tok) -> list[dict[str, list[int]]]:
    g = torch.Generator().manual_seed(1)
    ids = lambda n: torch.randint(0, tok.eot_token, (n,), generator=g).tolist()  # noqa: E731
    # each completion ends with <|endoftext|>, as TRL's tokenisation and ours both write it
    return [{"prompt_ids": ids(p), "chosen_ids": [*ids(c), tok.eot_token], "rejected_ids": [*ids(r), tok.eot_token]}
            for p, c, r in LENGTHS]


def trl_trainer(ref_dir: Path, policy_dir: Path, loss_type: str, out: Path):
    import datasets
    import transformers
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(output_dir=str(out), beta=0.1, loss_type=[loss_type], report_to=[], use_cpu=True, bf16=False,
                     fp16=False, per_device_train_batch_size=len(LENGTHS), max_length=None)
    tok = transformers.AutoTokenizer.from_pretrained(policy_dir)
    return DPOTrainer(model=transformers.GPT2LMHeadModel.from_pretrained(policy_dir),
                      ref_model=transformers.GPT2LMHeadModel.from_pretrained(ref_dir), args=args,
                      train_dataset=datasets.Dataset.from_list([{"prompt": "a", "chosen": " b", "rejected": " c"}]),
                      processing_class=tok)


def trl_metrics(trainer, batch_examples) -> dict[str, float]:
    """TRL's loss and logged metrics for one collated batch (evaluation mode: no dropout, nothing trained)."""
    trainer.model.eval()
    trainer._metrics["eval"].clear()
    with torch.no_grad():
        loss = trainer._compute_loss(trainer.model, trainer.data_collator(batch_examples), False)
    return {"loss": loss.item(), **{k: trainer._metrics["eval"][k][-1] for k in METRICS}}


def ours(ref_dir: Path, policy_dir: Path, tok, batch_examples, *, average: bool) -> tuple[dict[str, float], torch.Tensor]:
    """Our DPOTask.loss_sum on the same pairs (padded our way) and its step metrics, plus the per-pair losses."""
    from gpt2.config import load_config
    from gpt2.finetune.dpo import DPOTask, dpo_loss, pair_logps, sequence_logps
    from gpt2.finetune.preference_data import Pair, pad_pairs

    cfg = load_config(None, [f"model.init_from={ref_dir}", "finetune.train_file=unused",
                             f"finetune.dpo.average_logps={str(average).lower()}", "finetune.dpo.beta=0.1"])
    task = DPOTask(cfg)
    task.reference = GPT2LMHeadModel.from_pretrained(ref_dir).eval()
    policy = GPT2LMHeadModel.from_pretrained(policy_dir).eval()
    pairs = [Pair(chosen=(e["prompt_ids"] + e["chosen_ids"], [False] * len(e["prompt_ids"]) + [True] * len(e["chosen_ids"])),
                  rejected=(e["prompt_ids"] + e["rejected_ids"],
                            [False] * len(e["prompt_ids"]) + [True] * len(e["rejected_ids"])))
             for e in batch_examples]
    batch = pad_pairs(pairs, tok.eot_token)
    with torch.no_grad():
        loss_sum = task.loss_sum(policy, batch)
        metrics = {"loss": loss_sum.item() / task.count(batch), **task.step_metrics(world_size=1)}
        sums, counts = sequence_logps(policy, *batch)
        ref_sums, _ = sequence_logps(task.reference, *batch)
        losses, rc, rr = dpo_loss(pair_logps(sums, counts, average=average), pair_logps(ref_sums, counts, average=average),
                                  beta=0.1)
        per_pair = torch.stack([losses, rc, rr, *pair_logps(sums, counts, average=average).chunk(2)], 1)  # (B, 5)
    return metrics, per_pair


def test_summed_logps_equal_trls_sigmoid_dpo(models, tmp_path) -> None:
    ref_dir, policy_dir, tok = models
    batch = examples(tok)
    trainer = trl_trainer(ref_dir, policy_dir, "sigmoid", tmp_path)
    theirs = trl_metrics(trainer, batch)
    mine, per_pair = ours(ref_dir, policy_dir, tok, batch, average=False)
    assert 0 < theirs["rewards/accuracies"] < 1 and abs(theirs["loss"] - 0.6931) > 1e-3  # a real test
    for k, v in theirs.items():
        assert abs(mine[k] - v) <= 1e-5, (k, mine[k], v)
    # every pair alone, unpadded in TRL's batch of one, against its row of our padded batch
    for i, e in enumerate(batch):
        one = trl_metrics(trainer, [e])
        want = [one["loss"], one["rewards/chosen"], one["rewards/rejected"], one["logps/chosen"], one["logps/rejected"]]
        got = per_pair[i].tolist()
        for a, b in zip(got, want):
            assert abs(a - b) <= 1e-5, (i, got, want)


def test_averaged_logps_equal_trls_sigmoid_norm(models, tmp_path) -> None:
    ref_dir, policy_dir, tok = models
    batch = examples(tok)
    trainer = trl_trainer(ref_dir, policy_dir, "sigmoid_norm", tmp_path)
    theirs = trl_metrics(trainer, batch)
    mine, per_pair = ours(ref_dir, policy_dir, tok, batch, average=True)
    assert abs(mine["loss"] - theirs["loss"]) <= 1e-5, (mine["loss"], theirs["loss"])
    summed, _ = ours(ref_dir, policy_dir, tok, batch, average=False)
    assert abs(summed["loss"] - theirs["loss"]) > 1e-3  # averaging changes the loss: the comparison can fail
    for i, e in enumerate(batch):
        one = trl_metrics(trainer, [e])
        n_c, n_r = len(e["chosen_ids"]), len(e["rejected_ids"])  # TRL's completion_mask counts
        want = [one["loss"], one["rewards/chosen"] / n_c, one["rewards/rejected"] / n_r, one["logps/chosen"] / n_c,
                one["logps/rejected"] / n_r]
        got = per_pair[i].tolist()
        for a, b in zip(got, want):
            assert abs(a - b) <= 1e-5, (i, got, want)
    json.dumps(mine)  # plain floats, as the trainer logs them
