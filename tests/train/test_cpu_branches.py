"""Every choice made from the CPU's bf16 ability, with each branch taken on any machine.

gpt2.common.cpu_has_fast_bf16 is the one place that asks the CPU (AVX-512 BF16 / AMX in /proc/cpuinfo);
train.dtype=auto and optim.muon_ns_dtype=auto follow it. GPT2_CPU_BF16=1/0 answers for the CPU, so an
AVX2-only machine takes the AMX branch here (bf16 emulated: slower, it runs) and an AMX machine the AVX2 one.
tests/conftest.py pins it to 0 for the rest of the suite.

    python -m pytest -q tests/train/test_cpu_branches.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from train_helpers import REPO, overrides

from gpt2.common import CPU_BF16_ENV, cpu_has_fast_bf16, native_bf16_in_cpuinfo, resolve_dtype
from gpt2.config import OptimConfig
from gpt2.errors import UserError
from gpt2.model import GPT2Config, GPT2LMHeadModel
from gpt2.train.optim import build_optimizer, describe, ns_dtype

CPU = torch.device("cpu")
TINY = str(REPO / "configs" / "tiny-test.yaml")

# The flags lines of the three CPU kinds this project has met (abridged /proc/cpuinfo).
ZEN3 = "model name\t: AMD EPYC 7B13\nflags\t\t: fpu sse4_2 avx avx2 fma bmi2 sha_ni vaes vpclmulqdq\n"
ZEN4 = "model name\t: AMD EPYC 9B14\nflags\t\t: avx2 avx512f avx512dq avx512bw avx512vl avx512_bf16 avx512_vnni\n"
SAPPHIRE_RAPIDS = ("model name\t: Intel(R) Xeon(R) Platinum 8481C\n"
                   "flags\t\t: avx2 avx512f avx512bw avx512vl avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8\n")


def test_native_bf16_is_read_from_the_cpu_flags() -> None:
    assert not native_bf16_in_cpuinfo(ZEN3)
    assert native_bf16_in_cpuinfo(ZEN4)  # AVX-512 BF16
    assert native_bf16_in_cpuinfo(SAPPHIRE_RAPIDS)  # AMX (and AVX-512 BF16)
    assert native_bf16_in_cpuinfo("flags\t\t: avx2 amx_bf16 amx_tile\n")  # AMX alone
    # a flag's name elsewhere (a model name, a longer flag) is not the flag
    assert not native_bf16_in_cpuinfo("model name\t: avx512_bf16 lab\nflags\t\t: avx2 xavx512_bf16\n")


def test_gpt2_cpu_bf16_answers_for_the_cpu_and_a_bad_value_is_a_user_error(monkeypatch) -> None:
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    assert cpu_has_fast_bf16()
    monkeypatch.setenv(CPU_BF16_ENV, "0")
    assert not cpu_has_fast_bf16()
    monkeypatch.setenv(CPU_BF16_ENV, "yes")
    with pytest.raises(UserError, match="GPT2_CPU_BF16='yes': use 1"):
        cpu_has_fast_bf16()
    monkeypatch.delenv(CPU_BF16_ENV)  # unset: this machine's own flags decide
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    assert cpu_has_fast_bf16() == native_bf16_in_cpuinfo(flags)


@pytest.mark.parametrize("native", [False, True], ids=["avx2", "amx"])
def test_train_dtype_auto_and_explicit_bf16_on_either_cpu(native: bool, monkeypatch) -> None:
    monkeypatch.setenv(CPU_BF16_ENV, "1" if native else "0")
    dtype, why = resolve_dtype("auto", CPU)
    assert dtype == (torch.bfloat16 if native else torch.float32)
    assert why.startswith("auto: bf16, this CPU has native" if native else "auto: fp32, this CPU has no")
    dtype, why = resolve_dtype("bf16", CPU)
    assert dtype == torch.bfloat16
    assert ("emulates" in why) != native  # the slow-path warning only where bf16 is emulated
    assert resolve_dtype("fp32", CPU)[0] == torch.float32
    with pytest.raises(UserError, match="train.dtype=fp16 needs a CUDA device"):
        resolve_dtype("fp16", CPU)


@pytest.mark.parametrize("native", [False, True], ids=["avx2", "amx"])
def test_muon_ns_dtype_auto_follows_the_cpu_and_explicit_names_do_not(native: bool, monkeypatch) -> None:
    monkeypatch.setenv(CPU_BF16_ENV, "1" if native else "0")
    assert ns_dtype("auto", CPU) == (torch.bfloat16 if native else torch.float32)
    assert ns_dtype("bf16", CPU) == torch.bfloat16 and ns_dtype("fp32", CPU) == torch.float32
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config.from_preset("tiny"))
    opt = build_optimizer(model, OptimConfig(name="muon"), device=CPU)
    assert opt.muon.ns_dtype == (torch.bfloat16 if native else torch.float32)
    assert f"Newton-Schulz in {'bfloat16' if native else 'float32'}" in describe(opt)


@pytest.mark.parametrize("native", [False, True], ids=["avx2", "amx"])
@pytest.mark.slow
def test_gpt2_train_auto_takes_the_cpus_branch_end_to_end(native: bool, tmp_path, corpus, env, gpt2_main) -> None:
    """The default run's settings (train.dtype=auto, Muon with muon_ns_dtype=auto) as each CPU runs them."""
    out = tmp_path / "run"
    r = gpt2_main("train", TINY, *overrides(corpus, out, "train.dtype=auto", "optim.name=muon", "train.max_steps=2",
                                            "checkpoint.interval=0", "eval.interval=0", "sample.interval=0"),
                  env={**env, CPU_BF16_ENV: "1" if native else "0"})
    assert r.returncode == 0, r.stderr[-3000:]
    want = "bfloat16" if native else "float32"
    assert f"Newton-Schulz in {want}" in r.stderr, r.stderr[-3000:]
    assert ("auto: bf16, this CPU has native" if native else "auto: fp32, this CPU has no") in r.stderr
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["dtype"] == want
    losses = [x["loss"] for x in records if x.get("kind") == "train"]
    assert len(losses) == 2 and all(4.0 < x < 7.0 for x in losses), losses  # ln(300) ≈ 5.7 at the start
