"""LoRA adapters (gpt2.model.lora): PEFT loads ours and we load PEFT's with the same logits, merging
equals the adapter on, only the adapter (and a classifier's head) trains, and bad inputs are one line."""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from finetune_helpers import save_model_dir

from gpt2 import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel
from gpt2.errors import UserError
from gpt2.load import load
from gpt2.model.lora import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    LoRAConfig,
    LoRALinear,
    inject_lora,
    load_adapter,
    lora_layers,
    lora_reference,
    merge_lora,
    save_adapter,
    trainable_parameters,
)

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

# transformers 5.x's FutureWarning when PEFT calls its deprecated is_gradient_checkpointing (get_peft_model
# raises it too): not about our files; no_warnings() below checks the loads that are
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

ALL = ("c_attn", "attn.c_proj", "c_fc", "mlp.c_proj")
LABELS = {0: "ham", 1: "spam", 2: "eggs"}
# fp32 throughout. The models keep GPT-2's init (std 0.02): the sharpened ×4 weights other tests use make
# the function so sensitive that merged (W + BA) and unmerged (W x + B A x) rounding alone differ by 4e-5
# on logits of 10 (measured), while here they differ by < 1e-6 and the adapters still move logits by > 0.1.
TOL = 1e-5


def make_lm(tok, *, seed: int = 0, **overrides) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    eot = tok.eot_token
    return GPT2LMHeadModel(GPT2Config.from_preset("tiny", vocab_size=tok.n_vocab, bos_token_id=eot,
                                                  eos_token_id=eot, **overrides)).eval()


def make_clf(tok, *, seed: int = 0) -> GPT2ForSequenceClassification:
    torch.manual_seed(seed)
    eot = tok.eot_token
    return GPT2ForSequenceClassification(GPT2Config.from_preset(
        "tiny", vocab_size=tok.n_vocab, bos_token_id=eot, eos_token_id=eot, id2label=LABELS, pad_token_id=eot)).eval()


@pytest.fixture(scope="module")
def lm_base(tok, tmp_path_factory) -> Path:
    return save_model_dir(tmp_path_factory, "lm-base", make_lm(tok), tok)


@pytest.fixture(scope="module")
def clf_base(tok, tmp_path_factory) -> Path:
    return save_model_dir(tmp_path_factory, "clf-base", make_clf(tok), tok)


def ids(tok, n: int = 3, T: int = 12, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, tok.eot_token, (n, T), generator=g)  # (n, T), no end-of-text (the pad id) inside


def sgd_steps(model: torch.nn.Module, x: torch.Tensor, *, steps: int = 3, lr: float = 0.5) -> None:
    """A few real optimizer steps on the trainable parameters only, so B (and a head) move off their init."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        if isinstance(model, GPT2ForSequenceClassification):
            loss = model(x, labels=torch.arange(x.shape[0]) % len(LABELS)).loss
        else:
            loss = model(x[:, :-1], targets=x[:, 1:]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert all(layer.lora_B.weight.abs().max() > 1e-4 for layer in lora_layers(model).values())


@contextlib.contextmanager
def no_warnings():
    """Fail on any Python warning and any WARNING logged by peft or transformers.

    One warning is let through: transformers' own FutureWarning that PEFT calls the deprecated
    `is_gradient_checkpointing` (transformers 5.x); it fires for adapters PEFT saved itself too, and says
    nothing about the files under test."""
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect(level=logging.WARNING)
    loggers = [logging.getLogger("peft"), logging.getLogger("transformers")]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*is deprecated",
                                    category=FutureWarning)
            yield
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
    assert not records, [r.getMessage() for r in records]


# ------------------------------------------------------------------------------------------- module
def test_lora_linear_equals_the_formula_and_starts_as_its_base() -> None:
    torch.manual_seed(0)
    base = torch.nn.Linear(16, 24)
    layer = LoRALinear(base, rank=4, alpha=8, dropout=0.0)
    x = torch.randn(2, 5, 16)  # (B, T, in)
    assert torch.equal(layer(x), base(x))  # B = 0 at init: exactly the base
    assert layer.lora_A.weight.abs().max() > 0 and layer.lora_A.weight.shape == (4, 16)
    with torch.no_grad():
        layer.lora_B.weight.normal_(0, 0.5)
    assert layer.scaling == 2.0
    torch.testing.assert_close(layer(x), lora_reference(x, layer), atol=1e-6, rtol=0)
    assert (layer(x) - base(x)).abs().max() > 0.1


def test_same_seed_same_init_as_peft(tok, lm_base) -> None:
    ours = GPT2LMHeadModel.from_pretrained(lm_base)
    hf = transformers.GPT2LMHeadModel.from_pretrained(lm_base)
    torch.manual_seed(7)
    inject_lora(ours, LoRAConfig(rank=4, alpha=8, targets=ALL))
    torch.manual_seed(7)
    pm = peft.get_peft_model(hf, peft.LoraConfig(r=4, lora_alpha=8, target_modules=list(ALL), fan_in_fan_out=True))
    theirs = {k.replace(".default", ""): v for k, v in pm.named_parameters() if "lora_" in k}
    for name, layer in lora_layers(ours).items():
        assert torch.equal(layer.lora_A.weight, theirs[f"base_model.model.{name}.lora_A.weight"]), name
        assert not layer.lora_B.weight.any()


# ----------------------------------------------------------------------------------- PEFT parity
def test_peft_loads_our_lm_adapter_with_our_logits(tok, lm_base, tmp_path) -> None:
    model = GPT2LMHeadModel.from_pretrained(lm_base)
    torch.manual_seed(0)
    inject_lora(model, LoRAConfig(rank=4, alpha=16, dropout=0.1, targets=ALL))
    x = ids(tok)
    sgd_steps(model, x)
    adapter = save_adapter(model, tmp_path / "adapter", base_model_name_or_path=str(lm_base))
    assert sorted(p.name for p in adapter.iterdir()) == [ADAPTER_CONFIG, ADAPTER_WEIGHTS]
    config = json.loads((adapter / ADAPTER_CONFIG).read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM" and config["fan_in_fan_out"] is True
    assert config["target_modules"] == list(ALL) and config["r"] == 4 and config["lora_alpha"] == 16
    with torch.no_grad():
        ours = model(x).logits  # (n, T, vocab)

    with no_warnings():
        hf = transformers.GPT2LMHeadModel.from_pretrained(lm_base)
        pm = peft.PeftModel.from_pretrained(hf, adapter).eval()
    # PEFT's suffix match put an adapter on exactly our 8 layers ("attn.c_proj" did not catch mlp.c_proj)
    peft_layers = sorted(n for n, m in pm.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer))
    assert peft_layers == sorted(f"base_model.model.{n}" for n in lora_layers(model))
    with torch.no_grad():
        theirs = pm(x).logits
        plain = transformers.GPT2LMHeadModel.from_pretrained(lm_base)(x).logits  # PEFT changed `hf` in place
    torch.testing.assert_close(theirs, ours, atol=TOL, rtol=0)
    assert (ours - plain).abs().max() > 1e-2  # the adapter changes the function, so the test can fail

    merged_dir = tmp_path / "merged"
    merge_lora(model).save_pretrained(merged_dir)
    with torch.no_grad():
        merged = transformers.GPT2LMHeadModel.from_pretrained(merged_dir)(x).logits
    torch.testing.assert_close(merged, ours, atol=TOL, rtol=0)


def test_peft_loads_our_classifier_adapter_with_our_logits(tok, clf_base, tmp_path) -> None:
    model = GPT2ForSequenceClassification.from_pretrained(clf_base)
    torch.manual_seed(0)
    inject_lora(model, LoRAConfig(rank=2, alpha=4, targets=("c_attn", "mlp.c_proj")))
    x = ids(tok, n=4)
    x[1, 8:] = tok.eot_token  # a right-padded row: both libraries read its last real token
    score_before = model.score.weight.detach().clone()
    sgd_steps(model, x)
    assert (model.score.weight - score_before).abs().max() > 1e-4  # the head trained (modules_to_save)
    adapter = save_adapter(model, tmp_path / "adapter", base_model_name_or_path=str(clf_base))
    config = json.loads((adapter / ADAPTER_CONFIG).read_text())
    assert config["task_type"] == "SEQ_CLS" and config["modules_to_save"] == ["score"]
    with torch.no_grad():
        ours = model(x).logits  # (n, num_labels)

    with no_warnings():
        hf = transformers.GPT2ForSequenceClassification.from_pretrained(clf_base)
        pm = peft.PeftModel.from_pretrained(hf, adapter).eval()
    with torch.no_grad():
        theirs = pm(input_ids=x).logits
        plain = transformers.GPT2ForSequenceClassification.from_pretrained(clf_base)(input_ids=x).logits
    torch.testing.assert_close(theirs, ours, atol=TOL, rtol=0)
    assert (ours - plain).abs().max() > 1e-2

    merged_dir = tmp_path / "merged"
    merge_lora(model).save_pretrained(merged_dir)
    with torch.no_grad():
        merged = transformers.GPT2ForSequenceClassification.from_pretrained(merged_dir)(input_ids=x).logits
    torch.testing.assert_close(merged, ours, atol=TOL, rtol=0)


@pytest.mark.parametrize("task", ["CAUSAL_LM", "SEQ_CLS"])
def test_we_load_peft_adapters_with_peft_logits(task, tok, lm_base, clf_base, tmp_path) -> None:
    base_dir = lm_base if task == "CAUSAL_LM" else clf_base
    cls = transformers.GPT2LMHeadModel if task == "CAUSAL_LM" else transformers.GPT2ForSequenceClassification
    torch.manual_seed(3)
    # "c_proj" alone: PEFT matches it in the attention and the MLP both, so must we
    pm = peft.get_peft_model(cls.from_pretrained(base_dir), peft.LoraConfig(
        r=3, lora_alpha=6, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True, task_type=task))
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                p.normal_(0, 0.3)
    pm.save_pretrained(tmp_path / "peft")
    raw = json.loads((tmp_path / "peft" / ADAPTER_CONFIG).read_text())
    raw["base_model_name_or_path"] = str(base_dir)  # PEFT records the HF config's _name_or_path
    (tmp_path / "peft" / ADAPTER_CONFIG).write_text(json.dumps(raw))
    x = ids(tok)
    with torch.no_grad():
        theirs = pm.eval()(input_ids=x).logits
        model = load(tmp_path / "peft", task="lm" if task == "CAUSAL_LM" else "classify", device="cpu").model
        ours = model(x).logits
    assert {n.split(".", 3)[-1] for n in lora_layers(model)} == {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}
    torch.testing.assert_close(ours, theirs, atol=TOL, rtol=0)
    # the same with the base given (modified in place)
    base = (GPT2LMHeadModel if task == "CAUSAL_LM" else GPT2ForSequenceClassification).from_pretrained(base_dir)
    with torch.no_grad():
        torch.testing.assert_close(load_adapter(tmp_path / "peft", base=base)(x).logits, theirs, atol=TOL, rtol=0)


# ------------------------------------------------------------------------------------ behaviour
def test_merge_equals_adapter_on_and_gives_a_plain_model(tok) -> None:
    model = make_lm(tok)
    inject_lora(model, LoRAConfig(rank=4, alpha=8, targets=ALL))
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.weight.normal_(0, 0.2)
    x = ids(tok)
    with torch.no_grad():
        on = model(x).logits
        merged = merge_lora(model)(x).logits
    assert merged is not None and (on - make_lm(tok)(x).logits).abs().max() > 1e-2
    torch.testing.assert_close(merged, on, atol=TOL, rtol=0)
    assert not lora_layers(model) and type(model.transformer.h[0].attn.c_attn) is torch.nn.Linear
    assert all(p.requires_grad for p in model.parameters())
    assert set(model.state_dict()) == set(make_lm(tok).state_dict())


def test_trainable_counts_match_peft(tok, lm_base, clf_base) -> None:
    # c_attn only, r=4: per block 4 × (64 + 192) = 1024, two blocks
    model = GPT2LMHeadModel.from_pretrained(lm_base)
    _, total_before = trainable_parameters(model)
    inject_lora(model, LoRAConfig(rank=4, alpha=8))
    trainable, total = trainable_parameters(model)
    assert trainable == 2 * 4 * (64 + 192) and total == total_before + trainable
    pm = peft.get_peft_model(transformers.GPT2LMHeadModel.from_pretrained(lm_base),
                             peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True))
    assert (trainable, total) == pm.get_nb_trainable_parameters()

    clf = inject_lora(GPT2ForSequenceClassification.from_pretrained(clf_base), LoRAConfig(rank=4, targets=ALL))
    pm = peft.get_peft_model(transformers.GPT2ForSequenceClassification.from_pretrained(clf_base), peft.LoraConfig(
        r=4, target_modules=list(ALL), fan_in_fan_out=True, task_type="SEQ_CLS"))
    trainable, total = trainable_parameters(clf)
    # PEFT counts the head twice in the total (the frozen original and the trained copy); we hold one
    assert trainable == pm.get_nb_trainable_parameters()[0] and trainable == 2 * 4 * (256 + 128 + 320 + 320) + 3 * 64
    assert total == pm.get_nb_trainable_parameters()[1] - 3 * 64


def test_frozen_base_gets_no_gradient(tok) -> None:
    for model in (make_lm(tok), make_clf(tok)):
        inject_lora(model, LoRAConfig(rank=2, targets=("c_fc", "attn.c_proj")))
        x = ids(tok)
        out = model(x, labels=torch.tensor([0, 1, 2])) if isinstance(model, GPT2ForSequenceClassification) \
            else model(x[:, :-1], targets=x[:, 1:])
        out.loss.backward()
        for name, p in model.named_parameters():
            trainable = ".lora_" in name or name == "score.weight"
            assert p.requires_grad == trainable, name
            assert (p.grad is not None) == trainable, name
        # B = 0 at init, so A's gradient is 0 on the first step; B's is not
        assert any(layer.lora_B.weight.grad.abs().max() > 0 for layer in lora_layers(model).values())


def test_adapter_on_model_is_not_saved_as_a_plain_checkpoint(tok, tmp_path) -> None:
    model = inject_lora(make_lm(tok), LoRAConfig())
    with pytest.raises(UserError, match="merge_lora"):
        model.save_pretrained(tmp_path / "x")
    with pytest.raises(UserError, match="already"):
        inject_lora(model, LoRAConfig())


@pytest.mark.parametrize("kwargs, match", [
    (dict(rank=0), "rank must be an integer ≥ 1, got 0"),
    (dict(rank=-2), "rank must be an integer ≥ 1, got -2"),
    (dict(rank=2.5), "rank must be an integer"),
    (dict(targets=("c_attn", "c_proj")), "unknown LoRA target.*'c_proj'.*valid: c_attn, attn.c_proj, c_fc, mlp.c_proj"),
    (dict(targets=()), "targets is empty"),
    (dict(dropout=1.0), "dropout must be in"),
])
def test_bad_configs_are_one_line_errors(kwargs, match) -> None:
    with pytest.raises(UserError, match=match) as e:
        LoRAConfig(**kwargs)
    assert "\n" not in str(e.value)


def test_adapter_for_another_base_is_refused(tok, lm_base, tmp_path) -> None:
    model = inject_lora(GPT2LMHeadModel.from_pretrained(lm_base), LoRAConfig(rank=2, targets=ALL))
    adapter = save_adapter(model, tmp_path / "a", base_model_name_or_path=str(lm_base))
    wider = make_lm(tok, n_embd=32, n_head=2)
    with pytest.raises(UserError, match=r"lora_A.weight has shape \(2, 64\) but this base needs \(2, 32\)") as e:
        load_adapter(adapter, base=wider)
    assert "\n" not in str(e.value) and not lora_layers(wider)  # refused before anything changed
    with pytest.raises(UserError, match="missing"):
        load_adapter(adapter, base=make_lm(tok, n_layer=3))
    with pytest.raises(UserError, match="no place for"):
        load_adapter(adapter, base=make_lm(tok, n_layer=1))
    with pytest.raises(UserError, match="CAUSAL_LM adapter: its base must be a language model"):
        load_adapter(adapter, base=make_clf(tok))
    # a PEFT option we do not compute is refused, not silently ignored
    raw = json.loads((adapter / ADAPTER_CONFIG).read_text())
    (adapter / ADAPTER_CONFIG).write_text(json.dumps({**raw, "use_dora": True}))
    with pytest.raises(UserError, match="use_dora=True is a PEFT option"):
        load_adapter(adapter, base=make_lm(tok))


# ------------------------------------------------------------------------------- loader and CLI
def test_one_loader_loads_an_adapter_with_its_bases_tokenizer(tok, lm_base, tmp_path) -> None:
    from gpt2.load import load, load_model_and_tokenizer, resolve_model_dir, task_of
    from gpt2.tokenizer import train_bpe

    model = inject_lora(GPT2LMHeadModel.from_pretrained(lm_base), LoRAConfig(rank=2, targets=ALL))
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.weight.normal_(0, 0.2)
    adapter = save_adapter(model, tmp_path / "a", base_model_name_or_path=str(lm_base), tokenizer=tok)
    loaded = load(adapter, device="cpu")
    assert loaded.tokenizer == tok and loaded.directory == adapter and lora_layers(loaded.model)
    x = ids(tok)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x).logits, model.eval()(x).logits, atol=TOL, rtol=0)
    with pytest.raises(UserError, match="sequence classifier"):
        load(adapter, device="cpu", task="classify")
    # what the verbs call (gpt2 generate/chat/eval/serve): the adapter dir stands where a model dir would
    assert resolve_model_dir(adapter) == adapter and task_of(adapter) == "lm"
    assert lora_layers(load_model_and_tokenizer(adapter, device="cpu")[0])

    other = train_bpe(["some other text entirely, " * 20], vocab_size=300, progress=False)
    other.save(adapter)
    with pytest.raises(UserError, match="another tokenizer") as e:
        load(adapter, device="cpu")
    assert "\n" not in str(e.value)


def test_save_replaces_whole_or_writes_in_place(tok, lm_base, tmp_path) -> None:
    model = inject_lora(GPT2LMHeadModel.from_pretrained(lm_base), LoRAConfig(rank=2))
    d = tmp_path / "a"
    d.mkdir()
    (d / "stale.txt").write_text("from before")
    save_adapter(model, d, base_model_name_or_path=str(lm_base))
    assert sorted(p.name for p in d.iterdir()) == [ADAPTER_CONFIG, ADAPTER_WEIGHTS]  # replaced whole
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind

    # a checkpoint writer's own temporary directory: files added, others kept; then a run dir loads it
    from gpt2.common import TRAINER_STATE
    from gpt2.load import load

    step = tmp_path / "run" / "step-000002"
    step.mkdir(parents=True)
    (step / TRAINER_STATE).write_bytes(b"")
    save_adapter(model, step, base_model_name_or_path=str(lm_base), tokenizer=tok, in_place=True)
    assert (step / TRAINER_STATE).is_file() and (step / ADAPTER_WEIGHTS).is_file()
    (tmp_path / "run" / "latest").write_text("step-000002\n")
    loaded = load(tmp_path / "run", device="cpu")
    assert loaded.directory == step and lora_layers(loaded.model)


def gpt2(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpt2", *args], capture_output=True, text=True, timeout=180)


def test_cli_lora_merge(tok, clf_base, tmp_path) -> None:
    model = inject_lora(GPT2ForSequenceClassification.from_pretrained(clf_base), LoRAConfig(rank=2, targets=ALL))
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.weight.normal_(0, 0.2)
        model.score.weight.mul_(-1.0)
    adapter = save_adapter(model, tmp_path / "adapter", base_model_name_or_path=str(clf_base))
    r = gpt2("lora", "merge", str(adapter), str(tmp_path / "merged"))
    assert r.returncode == 0, r.stderr
    x = ids(tok)
    with torch.no_grad():
        hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged")
        torch.testing.assert_close(hf(input_ids=x).logits, model.eval()(x).logits, atol=TOL, rtol=0)
    from gpt2.tokenizer import load_tokenizer

    assert load_tokenizer(tmp_path / "merged") == tok

    r = gpt2("lora", "merge", str(tmp_path / "missing"), str(tmp_path / "out"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: no adapter directory")
    assert not (tmp_path / "out").exists()


def test_cli_lora_show(lm_base, tmp_path, capsys) -> None:
    from gpt2.cli import main

    model = inject_lora(GPT2LMHeadModel.from_pretrained(lm_base), LoRAConfig(rank=2, alpha=4, targets=("c_attn",)))
    adapter = save_adapter(model, tmp_path / "a", base_model_name_or_path=str(lm_base))
    assert main(["lora", "show", str(adapter)]) == 0
    out = capsys.readouterr().out
    assert f"task       CAUSAL_LM\nbase       {lm_base}\n" in out and "rank 2, alpha 4, dropout 0, targets c_attn" in out
    assert main(["lora", "show", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.startswith("error: no adapter directory")
