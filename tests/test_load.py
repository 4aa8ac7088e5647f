"""gpt2.load: one loader for run directories, checkpoints, model directories, hub ids and presets."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from gpt2 import GPT2Config, GPT2LMHeadModel
from gpt2.errors import UserError
from gpt2.load import load, resolve_model_dir


@pytest.fixture(scope="module")
def tok():
    from gpt2.tokenizer import train_bpe

    return train_bpe(["a small corpus for a small tokenizer. " * 20], vocab_size=270,
                     special_tokens=["<|endoftext|>"], progress=False)


def _save(directory, tok, *, vocab: int | None = None, chat: bool = False) -> GPT2LMHeadModel:
    config = GPT2Config.from_preset("tiny", vocab_size=vocab or tok.n_vocab)
    model = GPT2LMHeadModel(config)
    model.save_pretrained(directory)
    tok.save(directory)
    if chat:
        (directory / "chat.json").write_text(json.dumps({"format": "alpaca"}))
    return model


def test_directory_checkpoint_and_run_directory(tmp_path, tok) -> None:
    run = tmp_path / "run"
    for step in (2, 4):
        _save(run / f"step-{step:06d}", tok)
        torch.save({}, run / f"step-{step:06d}" / "trainer_state.pt")
    (run / "latest").write_text("step-000002\n")
    assert resolve_model_dir(run) == run / "step-000002"  # what `latest` names, not the newest name
    loaded = load(run, device="cpu")
    assert loaded.directory == run / "step-000002" and loaded.tokenizer.n_vocab == tok.n_vocab
    assert not loaded.model.training and loaded.chat_format is None
    ref = GPT2LMHeadModel.from_pretrained(run / "step-000002")
    for a, b in zip(loaded.model.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(a, b)
    assert load(run / "step-000004", device="cpu", dtype="bf16").model.transformer.wte.weight.dtype == torch.bfloat16
    # A run's pointer files name checkpoints too: `RUN/best` is how a fine-tune's best one is reached.
    (run / "best").write_text("step-000004")
    assert resolve_model_dir(run / "best") == run / "step-000004"
    assert resolve_model_dir(run / "latest") == run / "step-000002"
    (run / "best").write_text("step-000009")
    with pytest.raises(FileNotFoundError, match=r"best names step-000009, which is not in .*give a step-NNNNNN"):
        resolve_model_dir(run / "best")


def test_chat_format_comes_with_the_checkpoint(tmp_path, tok) -> None:
    _save(tmp_path / "sft", tok, chat=True)
    assert load(tmp_path / "sft", device="cpu").chat_format.name == "alpaca"


def test_preset_is_seeded_on_its_own_generator(tok, tmp_path) -> None:
    tok.save(tmp_path / "tok")
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = load("preset:tiny", tokenizer=str(tmp_path / "tok"), device="cpu", seed=5)
    assert torch.equal(torch.random.get_rng_state(), before)  # the global RNG is untouched
    b = load("preset:tiny", tokenizer=str(tmp_path / "tok"), device="cpu", seed=5)
    assert a.directory is None and a.model.config.vocab_size == tok.n_vocab
    assert torch.equal(a.model.transformer.wte.weight, b.model.transformer.wte.weight)


def test_bad_sources_are_user_errors(tmp_path, tok) -> None:
    with pytest.raises(FileNotFoundError, match="not a model directory, checkpoint or run directory"):
        load(tmp_path, device="cpu")
    with pytest.raises(FileNotFoundError, match="not a hub id"):
        load(tmp_path / "missing", device="cpu")
    _save(tmp_path / "small-vocab", tok, vocab=260)
    with pytest.raises(UserError, match="has 260 token ids but the tokenizer has 270"):
        load(tmp_path / "small-vocab", device="cpu")
    with pytest.raises(UserError, match="dtype must be one of"):
        load(tmp_path / "small-vocab", dtype="int8", device="cpu")  # type: ignore[arg-type]


def test_no_import_edges_from_model_or_eval_into_generation() -> None:
    """The model does not import the generation engine; eval loads through gpt2.load, not generate's CLI."""
    code = ("import sys, gpt2.model.gpt2, gpt2.eval.commands, gpt2.eval.loss, gpt2.eval.hellaswag, "
            "gpt2.eval.completions, gpt2.load; "
            "print(sorted(m for m in sys.modules if m.startswith('gpt2.generate')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "gpt2.generate.commands" not in out and "gpt2.generate.engine" not in out, out
    assert not hasattr(GPT2LMHeadModel, "generate")


def test_task_classify_loads_a_classifier_and_each_kind_refuses_the_other(tmp_path, tok) -> None:
    from gpt2 import GPT2ForSequenceClassification

    config = GPT2Config.from_preset("tiny", vocab_size=tok.n_vocab, id2label={0: "neg", 1: "pos"},
                                    pad_token_id=tok.eot_token)
    GPT2ForSequenceClassification(config).save_pretrained(tmp_path / "clf")
    tok.save(tmp_path / "clf")
    loaded = load(tmp_path / "clf", device="cpu", task="classify")
    assert isinstance(loaded.model, GPT2ForSequenceClassification) and not loaded.model.training
    assert loaded.model.config.id2label == {0: "neg", 1: "pos"} and loaded.tokenizer.n_vocab == tok.n_vocab
    with pytest.raises(UserError, match=r"is a sequence-classification checkpoint \(GPT2ForSequenceClassification\)"
                                        r".*use `gpt2 classify` / `gpt2 eval --classify`"):
        load(tmp_path / "clf", device="cpu")
    _save(tmp_path / "lm", tok)
    with pytest.raises(UserError, match=r"is a language model.*`gpt2 finetune classify`"):
        load(tmp_path / "lm", device="cpu", task="classify")
    with pytest.raises(UserError, match=r"is a language model.*`gpt2 finetune classify`"):
        load("preset:tiny", tokenizer=str(tmp_path / "clf"), device="cpu", task="classify")
