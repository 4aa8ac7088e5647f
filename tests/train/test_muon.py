"""optim.name=muon: which parameters Muon takes, its update against torch.optim.Muon, the composite optimizer
under the loop's calls (set_lr, GradScaler, state_dict), and `gpt2 train` with it: convergence, exact resume
after SIGKILL, DDP against one process, and the one-line errors."""

from __future__ import annotations

import copy
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_helpers import KILL_AFTER_SAVE, REPO, overrides, run_python

from gpt2 import GPT2Config, GPT2LMHeadModel
from gpt2.config import OptimConfig
from gpt2.errors import UserError
from gpt2.train.optim import (
    Muon,
    MuonWithAdamW,
    build_optimizer,
    describe,
    newton_schulz,
    set_lr,
    split_for_muon,
)

TINY = str(REPO / "configs" / "tiny-test.yaml")
CPU = torch.device("cpu")


def tiny_model(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config.from_preset("tiny"))


def loss_of(model: GPT2LMHeadModel, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, model.config.vocab_size, (2, 16), generator=g)
    return model(x, targets=x, return_logits=False).loss


# ---------------------------------------------------------------------------------- the parameter split
def test_muon_takes_exactly_the_blocks_hidden_matrices_and_every_parameter_is_held_once() -> None:
    model = tiny_model()
    muon, adamw = split_for_muon(model)
    expected = {f"transformer.h.{i}.{m}.weight" for i in range(model.config.n_layer)
                for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    assert {n for n, _ in muon} == expected
    assert all(p.dim() == 2 for _, p in muon)
    names = {n for n, _ in adamw}
    assert {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight"} <= names
    assert not any(n.endswith(".weight") and ("c_attn" in n or "c_fc" in n or "c_proj" in n) for n in names)

    opt = build_optimizer(model, OptimConfig(name="muon"), device=CPU)
    assert isinstance(opt, MuonWithAdamW)
    held = [p for g in opt.param_groups for p in g["params"]]
    assert len(held) == len({id(p) for p in held})  # nothing twice
    assert {id(p) for p in held} == {id(p) for p in model.parameters()}  # nothing left out
    assert model.lm_head.weight is model.transformer.wte.weight
    assert sum(p is model.lm_head.weight for p in held) == 1  # the tied head once, on AdamW
    assert any(p is model.lm_head.weight for g in opt.adamw.param_groups for p in g["params"])
    assert sum(p.numel() for p in held) == model.num_parameters()
    # AdamW still decays its matrices (the embeddings), not biases or LayerNorm gains
    decay, no_decay = opt.adamw.param_groups
    assert decay["weight_decay"] == 0.1 and all(p.dim() == 2 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.dim() == 1 for p in no_decay["params"])
    assert describe(opt).startswith(f"Muon on {len(expected)} matrices (")


# --------------------------------------------------------------------------- the update against torch's
def test_newton_schulz_in_bf16_is_torchs_bit_for_bit_and_fp32_orthogonalises() -> None:
    from torch.optim._muon import DEFAULT_A, DEFAULT_B, DEFAULT_C, _zeropower_via_newtonschulz

    g = torch.randn(96, 32, generator=torch.Generator().manual_seed(0))
    for shape_g in (g, g.T.contiguous()):  # tall and wide
        ref = _zeropower_via_newtonschulz(shape_g, (DEFAULT_A, DEFAULT_B, DEFAULT_C), 5, 1e-7)
        assert torch.equal(newton_schulz(shape_g, dtype=torch.bfloat16), ref)
        out = newton_schulz(shape_g, dtype=torch.float32)
        assert out.dtype == torch.float32 and out.shape == shape_g.shape
        # the quintic iteration pushes every singular value into roughly [0.5, 1.5] (Keller Jordan's post)
        s = torch.linalg.svdvals(out)
        assert s.min() > 0.5 and s.max() < 1.5, s
        assert (out - ref.float()).abs().max() < 0.1  # the same map, up to bf16's rounding


@pytest.mark.parametrize("adjust", ["match_rms_adamw", "original"])
def test_our_muon_with_bf16_newton_schulz_steps_exactly_as_torch_optim_muon(adjust: str) -> None:
    a, b = tiny_model(), tiny_model()
    pa = [p for _, p in split_for_muon(a)[0]]
    pb = [p for _, p in split_for_muon(b)[0]]
    ours = Muon(pa, lr=0.01, weight_decay=0.1, adjust_lr_fn=adjust, ns_dtype=torch.bfloat16)
    ref = torch.optim.Muon(pb, lr=0.01, weight_decay=0.1, adjust_lr_fn=adjust)
    for step in range(3):
        for model, opt in ((a, ours), (b, ref)):
            opt.zero_grad(set_to_none=True)
            loss_of(model, step).backward()
            opt.step()
    for x, y in zip(pa, pb):
        assert torch.equal(x, y)
    assert all(torch.equal(ours.state[x]["momentum_buffer"], ref.state[y]["momentum_buffer"]) for x, y in zip(pa, pb))


# ---------------------------------------------------------------------- the composite under the loop's calls
def train_steps(model: GPT2LMHeadModel, opt: torch.optim.Optimizer, steps: range, *,
                scaler: torch.amp.GradScaler | None = None) -> None:
    """What the loop does each step: set_lr, backward (scaled), unscale_, clip, scaler.step, update, zero_grad."""
    scaler = scaler or torch.amp.GradScaler("cpu", enabled=False)
    for step in steps:
        set_lr(opt, 1e-3 * (step + 1))
        scaler.scale(loss_of(model, step)).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)


def test_set_lr_scales_muon_by_its_own_lr_and_reaches_both_inner_optimizers() -> None:
    model = tiny_model()
    opt = build_optimizer(model, OptimConfig(name="muon", lr=1e-3, muon_lr=5e-3), device=CPU)
    set_lr(opt, 2e-4)  # the schedule's value, part way through warm-up
    assert opt.muon.param_groups[0]["lr"] == pytest.approx(1e-3)  # 2e-4 × 5e-3 / 1e-3
    assert all(g["lr"] == pytest.approx(2e-4) for g in opt.adamw.param_groups)
    adamw = build_optimizer(model, OptimConfig(), device=CPU)
    set_lr(adamw, 2e-4)
    assert all(g["lr"] == 2e-4 for g in adamw.param_groups)


# How far the GradScaler run may end from the plain one, as a fraction of how far each tensor moved from its
# init in 4 steps. The two runs' gradients differ by rounding (the backward is not exactly linear in the loss
# scale). fp32: measured ≤ 0.08% (AdamW's tensors; Muon's ≤ 1e-5 %) on an AVX2-only AMD EPYC. bf16: each of the
# 5 Newton-Schulz iterations rounds to bf16's 8 significant bits (2^-8 each), so over 4 steps the updates may
# differ by up to ~4 × 5 × 2^-8 ≈ 8%, and AdamW's tensors follow through the gradients; measured ≤ 5.7% on the
# AVX2 EPYC (bf16 emulated), where h.1.attn.c_attn ends 3.9e-4 off after moving 8.7e-3, as issue 23 found on
# an Intel AMX Xeon (native bf16) against the old atol of 1e-5. A scaler that skipped either optimizer's
# step would leave a tensor 100% off.
SCALER_AGREEMENT = {"fp32": 0.01, "bf16": 2 * 4 * 5 * 2**-8}


@pytest.mark.parametrize("ns", ["fp32", "bf16"])  # forced: `auto` would pick by the CPU's bf16 ability
def test_state_dict_round_trip_continues_bit_for_bit_and_grad_scaler_steps_both(ns: str) -> None:
    cfg = OptimConfig(name="muon", muon_ns_dtype=ns)
    init = tiny_model()
    full = tiny_model()
    opt = build_optimizer(full, cfg, device=CPU)
    assert opt.muon.ns_dtype == {"fp32": torch.float32, "bf16": torch.bfloat16}[ns]
    train_steps(full, opt, range(4))
    assert all(opt.muon.state[p]["momentum_buffer"].abs().sum() > 0 for p in opt.muon.param_groups[0]["params"])

    half = tiny_model()
    opt_half = build_optimizer(half, cfg, device=CPU)
    train_steps(half, opt_half, range(2))
    saved = copy.deepcopy(half.state_dict()), copy.deepcopy(opt_half.state_dict())
    resumed = tiny_model(seed=1)  # other weights, a fresh optimizer: all of it comes from the saved state
    resumed.load_state_dict(saved[0])
    opt_resumed = build_optimizer(resumed, cfg, device=CPU)
    opt_resumed.load_state_dict(saved[1])
    assert opt_resumed.param_groups[0] is opt_resumed.muon.param_groups[0]  # relinked after the load
    train_steps(resumed, opt_resumed, range(2, 4))
    for (n, x), y in zip(full.named_parameters(), resumed.parameters()):
        assert torch.equal(x, y), n  # bit for bit in either dtype: the same operations on the same numbers

    # GradScaler enabled (as for fp16 on CUDA; here on the CPU): unscale_ reaches every group of the
    # composite and scaler.step steps both, so the updates match the unscaled run's to rounding (above).
    scaled = tiny_model()
    opt_scaled = build_optimizer(scaled, cfg, device=CPU)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    train_steps(scaled, opt_scaled, range(4), scaler=scaler)
    assert scaler.get_scale() == 2.0**10  # no step was found non-finite
    for (n, x), y, x0 in zip(full.named_parameters(), scaled.parameters(), init.parameters()):
        moved = (x - x0).abs().max()
        assert moved > 0, n
        assert (x - y).abs().max() <= SCALER_AGREEMENT[ns] * moved, (n, ((x - y).abs().max() / moved).item())
    # ... and a non-finite gradient anywhere skips both optimizers' updates.
    before = copy.deepcopy(scaled.state_dict())
    scaler.scale(loss_of(scaled, 9)).backward()
    next(iter(opt_scaled.muon.param_groups[0]["params"])).grad[0, 0] = float("inf")
    scaler.unscale_(opt_scaled)
    scaler.step(opt_scaled)
    scaler.update()
    assert scaler.get_scale() == 2.0**9
    assert all(torch.equal(v, before[k]) for k, v in scaled.state_dict().items())


def test_an_adamw_optimizer_state_is_refused_by_muon() -> None:
    model = tiny_model()
    adamw_state = build_optimizer(model, OptimConfig(), device=CPU).state_dict()
    with pytest.raises(UserError, match="optim.name=adamw"):
        build_optimizer(model, OptimConfig(name="muon"), device=CPU).load_state_dict(adamw_state)


# --------------------------------------------------------------------------------------- `gpt2 train`
def train_losses(run_dir: Path) -> dict[int, float]:
    out: dict[int, float] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r.get("kind") == "train":
            out[r["step"]] = r["loss"]
    return out


def test_bad_optimizer_values_are_one_line_errors_with_exit_2(tmp_path, corpus, env, gpt2_main) -> None:
    for bad, words in (("optim.name=sgd", "optim.name='sgd': use adamw or muon"),
                       ("optim.muon_adjust_lr=rms", "use match_rms_adamw or original"),
                       ("train.distributed=fsdp", "optim.name=muon does not work under train.distributed=fsdp")):
        extra = [bad] if bad.startswith("optim.name") else ["optim.name=muon", bad]
        r = gpt2_main("train", TINY, *overrides(corpus, tmp_path / "bad", *extra), env=env)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert [x for x in r.stderr.splitlines() if x.startswith("error:")] == [r.stderr.strip().splitlines()[-1]]
        assert words in r.stderr, r.stderr
    assert not (tmp_path / "bad").exists()  # refused before anything was written


@pytest.mark.slow
def test_muon_training_converges_and_resumes_bit_for_bit_after_sigkill(tmp_path, corpus, env, gpt2_main) -> None:
    """The uninterrupted run and the resume run in this process (gpt2.cli.main); the SIGKILL in a process of its own."""
    common = ["optim.name=muon", "train.max_steps=20", "checkpoint.interval=10", "eval.interval=10"]
    full = tmp_path / "full"
    r = gpt2_main("train", TINY, *overrides(corpus, full, *common), env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "optimizer: Muon on 8 matrices (" in r.stderr and "AdamW on " in r.stderr, r.stderr[-3000:]
    reference = train_losses(full)
    assert sorted(reference) == list(range(1, 21))
    first, last = reference[1], sum(reference[s] for s in range(16, 21)) / 5
    assert last < first - 1.0, (first, last)  # ln(300) ≈ 5.7 at the start; ≈ 4.4 here after 20 steps

    killed = tmp_path / "killed"
    r = run_python(KILL_AFTER_SAVE.format(step=10, recipe=TINY, overrides=overrides(corpus, killed, *common)), env)
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    assert (killed / "latest").read_text().strip() == "step-000010"
    # the checkpoint holds both optimizers' state
    state = torch.load(killed / "step-000010" / "trainer_state.pt", weights_only=True)
    assert set(state["optimizer"]) == {"muon", "adamw"} and state["optim_name"] == "muon"
    # resuming it with the other optimizer is refused in one line
    r = gpt2_main("train", "--resume", str(killed), "optim.name=adamw", env=env)
    assert r.returncode == 2 and "trained with optim.name=muon" in r.stderr, r.stderr[-3000:]
    r = gpt2_main("train", "--resume", str(killed), env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    resumed = train_losses(killed)
    for s in range(11, 21):
        assert resumed[s] == reference[s], (s, resumed[s], reference[s])  # bit for bit


@pytest.mark.slow
def test_muon_under_ddp_two_processes_match_one_process(tmp_path, corpus, env, gpt2_main) -> None:
    """DDP all-reduces whole gradients before the step, so Muon sees the same matrices as in one process."""
    # Newton-Schulz in fp32, forced: in bf16 the all-reduce's rounding (~1e-7) could flip a bf16 rounding and
    # move the loss by more than the 1e-5 asked below, on a CPU where `auto` picks bf16.
    common = ["optim.name=muon", "optim.muon_ns_dtype=fp32", "train.max_steps=4", "checkpoint.interval=0",
              "eval.interval=0", "train.micro_batch_size=4", "train.global_batch_tokens=256"]
    one = tmp_path / "one"
    r = gpt2_main("train", TINY, *overrides(corpus, one, *common), env=env)  # one process: this one
    assert r.returncode == 0, r.stderr[-3000:]
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "gpt2",
           "train", TINY, *overrides(corpus, two, *common)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = train_losses(one), train_losses(two)
    assert sorted(a) == sorted(b) == list(range(1, 5))
    for s in a:
        assert abs(a[s] - b[s]) <= 1e-5, (s, a[s], b[s])
