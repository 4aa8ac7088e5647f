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


def test_model_info_takes_what_the_loader_takes(tmp_path, tok, gpt2_main) -> None:
    """`gpt2 model info` on a run, `RUN/best`, a checkpoint and an adapter (issue 29: a run directory said
    `no config.json at RUN/config.json`), besides a preset name."""
    from gpt2.model.lora import LoRAConfig, inject_lora, save_adapter

    run = tmp_path / "run"
    for step, n_positions in ((2, 128), (4, 64)):  # two shapes, so the output shows which checkpoint was read
        d = run / f"step-{step:06d}"
        GPT2LMHeadModel(GPT2Config.from_preset("tiny", vocab_size=tok.n_vocab, n_positions=n_positions)
                        ).save_pretrained(d)
        tok.save(d)
        torch.save({}, d / "trainer_state.pt")
    (run / "latest").write_text("step-000002\n")
    (run / "best").write_text("step-000004\n")

    def info(source) -> dict:
        r = gpt2_main("model", "info", str(source), "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    assert info(run)["directory"] == str(run / "step-000002") and info(run)["n_positions"] == 128
    assert info(run / "best")["directory"] == str(run / "step-000004") and info(run / "best")["n_positions"] == 64
    assert info(run / "step-000004")["n_positions"] == 64
    base = run / "step-000002"
    model = inject_lora(GPT2LMHeadModel.from_pretrained(base), LoRAConfig(rank=4))
    save_adapter(model, tmp_path / "adapter", base_model_name_or_path=str(base))
    adapter = info(tmp_path / "adapter")
    # c_attn in each of tiny's 2 blocks: A (4 × 64) and B (192 × 4)
    assert adapter["adapter"] == {"base": str(base), "rank": 4, "task_type": "CAUSAL_LM", "parameters": 2 * 4 * (64 + 192)}
    assert adapter["parameters"] == info(base)["parameters"] and adapter["directory"] == str(tmp_path / "adapter")
    table = gpt2_main("model", "info", str(tmp_path / "adapter")).stdout
    assert "LoRA rank 4, 2,048 parameters" in table and str(base) in table
    assert info("tiny")["n_positions"] == 128 and info("preset:tiny")["parameters"] == info("tiny")["parameters"]
    r = gpt2_main("model", "info", str(tmp_path / "nothing"))
    assert r.returncode == 2 and r.stderr.startswith("error: ") and len(r.stderr.splitlines()) == 1


def test_chat_eval_and_init_from_take_what_the_loader_takes(tmp_path, tok, gpt2_main, monkeypatch) -> None:
    """The verbs that resolved a name on their own before loading: chat (and generate --chat) read chat.json
    from the adapter's directory instead of its base's, eval refused preset:NAME, and model.init_from took
    only a checkpoint or HF directory, not a run or RUN/best."""
    import io
    import shutil

    from gpt2.model.lora import LoRAConfig, inject_lora, save_adapter
    from gpt2.train.setup import _init_dir

    run = tmp_path / "run"
    base = run / "step-000002"
    model = _save(base, tok, chat=True)
    torch.save({}, base / "trainer_state.pt")
    (run / "latest").write_text("step-000002\n")
    (run / "best").write_text("step-000002\n")
    save_adapter(inject_lora(model, LoRAConfig(rank=2)), tmp_path / "adapter", base_model_name_or_path=str(base))
    assert not (tmp_path / "adapter" / "chat.json").exists()
    monkeypatch.setattr(sys, "stdin", io.StringIO("Name a color.\n"))
    r = gpt2_main("chat", str(tmp_path / "adapter"), "--greedy", "--max-new-tokens", "3")
    assert r.returncode == 0 and "chat format: alpaca" in r.stderr, r.stderr
    r = gpt2_main("generate", str(tmp_path / "adapter"), "Name a color.", "--chat", "--max-new-tokens", "3", "--json",
                  "--truncate")  # the tiny BPE spells the Alpaca preamble in 141 tokens
    assert r.returncode == 0, r.stderr
    (tmp_path / "text.txt").write_text("a small corpus for a small tokenizer. " * 30)
    lora_run = tmp_path / "lora-run"  # a LoRA fine-tune's run: its checkpoints are adapters
    shutil.copytree(tmp_path / "adapter", lora_run / "step-000002")
    torch.save({}, lora_run / "step-000002" / "trainer_state.pt")
    (lora_run / "best").write_text("step-000002\n")
    r = gpt2_main("lora", "merge", str(lora_run / "best"), str(tmp_path / "merged"))
    assert r.returncode == 0 and (tmp_path / "merged" / "model.safetensors").is_file(), r.stderr
    r = gpt2_main("eval", "preset:tiny", "--data", str(tmp_path / "text.txt"), "--tokenizer", str(base), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["checkpoint"] == "preset:tiny", r.stderr
    assert _init_dir(str(run)) == base and _init_dir(str(run / "best")) == base and _init_dir(str(base)) == base
    assert _init_dir("openai-community/gpt2") == "openai-community/gpt2"  # a hub id, downloaded as before
    with pytest.raises(UserError, match="is a LoRA adapter: fold it into its base first with `gpt2 lora merge"):
        _init_dir(str(tmp_path / "adapter"))
    with pytest.raises(UserError, match="set model.preset=tiny"):
        _init_dir("preset:tiny")
