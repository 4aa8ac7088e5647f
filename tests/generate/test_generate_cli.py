"""`gpt2 generate` and `gpt2 chat` through a real subprocess (plain and JSON output, piped stdin and a
pseudo-terminal); the other options and the refusals of bad input through gpt2.cli.main in this process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest
from conftest import sharp_model

from gpt2.generate import generate
from gpt2.generate.chat import FORMATS, Chat, save_chat_format


def gpt2(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpt2", *args], capture_output=True, text=True, timeout=120, **kw)


def test_generate_streams_prompt_and_completion(ckpt, model, tok) -> None:
    r = gpt2("generate", str(ckpt), "The quick", "--max-new-tokens", "12", "--greedy")
    assert r.returncode == 0, r.stderr
    expected = generate(model, tok, "The quick", max_new_tokens=12, temperature=0)[0]
    assert r.stdout == "The quick" + expected.text + "\n"


def test_generate_json_samples_and_probs(ckpt, model, tok) -> None:
    r = gpt2("generate", str(ckpt), "Once upon", "--max-new-tokens", "6", "--num-samples", "2", "--seed", "3",
             "--top-k", "20", "--repetition-penalty", "1.2", "--json", "--show-probs", "3")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    expected = generate(model, tok, "Once upon", max_new_tokens=6, num_samples=2, seed=3, top_k=20,
                        repetition_penalty=1.2)
    assert [x["text"] for x in out["results"]] == [g.text for g in expected]
    first = out["results"][0]
    assert first["completion_tokens"] == len(first["tokens"]) and first["prompt"] == "Once upon"
    assert first["finish_reason"] in ("eot", "length", "stop") and out["config"]["seed"] == 3
    assert len(first["steps"]) == first["completion_tokens"] and len(first["steps"][0]["top"]) == 3
    assert "top candidates" in r.stderr  # the table goes to stderr when stdout is JSON


def test_prompts_file_to_results_file(ckpt, model, tok, tmp_path, gpt2_main) -> None:
    prompts = ["The quick brown", "", "Once", "héllo wörld, naïve café and a longer prompt than the others"]
    (tmp_path / "in.txt").write_text("\n".join(prompts) + "\n", encoding="utf-8")
    r = gpt2_main("generate", str(ckpt), "--prompts-file", str(tmp_path / "in.txt"), "--out",
                  str(tmp_path / "out.jsonl"), "--greedy", "--max-new-tokens", "10", "--batch-size", "2", "--stop", "\\n")
    assert r.returncode == 0, r.stderr
    assert "wrote 3 completions of 3 prompts" in r.stderr
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    real = [p for p in prompts if p]  # blank lines are skipped
    assert [row["prompt"] for row in rows] == real
    expected = generate(model, tok, real, max_new_tokens=10, temperature=0, stop=["\n"])
    assert [row["text"] for row in rows] == [g.text for g in expected]
    assert all("\n" not in row["text"] for row in rows)


@pytest.mark.parametrize(
    "args,match",
    [
        (["{missing}", "hi"], "no model directory at"),
        (["{ckpt}", "hi", "--top-p", "1.5"], r"top_p must be in \(0, 1\], got 1.5"),
        (["{ckpt}", "hi", "--temperature", "-0.5"], "temperature must be >= 0"),
        (["{ckpt}", "", "--max-new-tokens", "8"], "prompt 0 is empty and the BOS policy is 'never'"),
        (["{ckpt}", "hi", "--out", "x.jsonl"], "--out writes the results of --prompts-file"),
        (["{ckpt}", "hi", "--negative-prompt", "x"], "negative_prompt is read only with classifier-free guidance"),
        (["{ckpt}", "hi", "--guidance-scale", "-2"], "guidance_scale must be a finite number >= 0"),
        (["{ckpt}", "hi", "--guidance-scale", "2", "--negative-prompt", "", "--max-new-tokens", "8"],
         "negative prompt: prompt 0 is empty"),
    ],
    ids=["missing-checkpoint", "top-p", "negative-temperature", "empty-prompt", "out-without-file",
         "negative-without-guidance", "negative-guidance", "empty-negative"],
)
def test_bad_input_is_one_error_line_and_exit_2(ckpt, tmp_path, args, match, gpt2_main) -> None:
    args = [a.format(ckpt=ckpt, missing=tmp_path / "nope") for a in args]
    r = gpt2_main("generate", *args)
    assert r.returncode == 2, r.stdout
    assert r.stderr.startswith("error: ") and r.stderr.strip().count("\n") == 0, r.stderr
    assert re.search(match, r.stderr), r.stderr


def test_guided_generation_is_the_engines(ckpt, model, tok, gpt2_main) -> None:
    r = gpt2_main("generate", str(ckpt), "The quick", "--max-new-tokens", "10", "--greedy", "--json",
                  "--guidance-scale", "2.5", "--negative-prompt", "Once upon")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    expected = generate(model, tok, "The quick", max_new_tokens=10, temperature=0, guidance_scale=2.5,
                        negative_prompt="Once upon")[0]
    assert out["results"][0]["tokens"] == expected.tokens
    assert out["config"]["guidance_scale"] == 2.5 and out["config"]["negative_prompt"] == "Once upon"
    assert expected.tokens != generate(model, tok, "The quick", max_new_tokens=10, temperature=0)[0].tokens


def test_empty_prompt_with_bos_policy_works(ckpt, gpt2_main) -> None:
    r = gpt2_main("generate", str(ckpt), "", "--bos", "if-empty", "--max-new-tokens", "4", "--json", "--greedy")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["results"][0]["prompt_tokens"] == 1


def test_probs_plot_writes_png(ckpt, tmp_path, gpt2_main) -> None:
    r = gpt2_main("generate", str(ckpt), "The", "--max-new-tokens", "5", "--greedy", "--show-probs", "4",
                  "--probs-plot", str(tmp_path / "p.png"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = r.stdout.splitlines()[1:]
    assert table[0].startswith("step") and len(table) == 6  # header + 5 steps


@pytest.fixture(scope="module")
def chat_model(tok):
    # The Alpaca preamble alone is ~130 tokens of the tiny test tokenizer: a longer context than tiny's 128.
    return sharp_model(tok.n_vocab, n_positions=512)


@pytest.fixture(scope="module")
def chat_ckpt(chat_model, tok, tmp_path_factory):
    """A checkpoint with a hand-written prompt format (fine-tuning writes it in a later issue)."""
    d = tmp_path_factory.mktemp("chat")
    chat_model.save_pretrained(d)
    tok.save(d)
    save_chat_format(d, "alpaca")
    return d


def test_chat_piped_stdin(chat_ckpt, chat_model, tok) -> None:
    r = gpt2("chat", str(chat_ckpt), "--greedy", "--max-new-tokens", "8",
             input="Name a color.\n/reset\nName a color.\n/set temperature 0.7\n/exit\nnot read\n")
    assert r.returncode == 0, r.stderr
    from gpt2.generate import SampleConfig

    chat = Chat(chat_model, tok, FORMATS["alpaca"], SampleConfig(max_new_tokens=8, temperature=0))
    reply = "".join(chat.send("Name a color.")).strip()
    assert r.stdout.splitlines() == [reply, reply]  # /reset: the same greedy reply again
    assert "chat format: alpaca" in r.stderr and "(temperature = 0.7)" in r.stderr


def test_chat_without_format_is_an_error(ckpt, gpt2_main) -> None:
    r = gpt2_main("chat", str(ckpt))
    assert r.returncode == 2 and "has no chat.json" in r.stderr and "--format" in r.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_chat_in_a_pseudo_terminal(chat_ckpt) -> None:
    import pty
    import select

    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "gpt2", "chat", str(chat_ckpt), "--greedy", "--max-new-tokens", "5"],
                         stdin=slave, stdout=slave, stderr=slave, close_fds=True, env={**os.environ, "TERM": "dumb"})
    os.close(slave)
    seen = b""

    def read_until_prompts(n: int, timeout: float = 60.0) -> None:
        """Read the terminal until the interactive prompt "> " has appeared n times."""
        nonlocal seen
        end = time.monotonic() + timeout
        while seen.count(b"> ") < n and time.monotonic() < end:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    seen += os.read(master, 4096)
                except OSError:
                    break

    try:
        read_until_prompts(1)  # the interactive prompt appears only on a terminal
        os.write(master, b"Name a color.\n")
        read_until_prompts(2)  # the reply, then the next prompt
        os.write(master, b"/exit\n")
        assert p.wait(timeout=60) == 0
    finally:
        if p.poll() is None:
            p.kill()
        os.close(master)
    assert seen.count(b"> ") >= 2, seen
    assert b"chat format: alpaca" in seen


def test_a_run_directory_resolves_to_its_latest_checkpoint(ckpt, tmp_path) -> None:
    from gpt2.load import resolve_model_dir

    run = tmp_path / "run"
    for step in ("step-000002", "step-000004"):
        (run / step).mkdir(parents=True)
        for f in ckpt.iterdir():
            (run / step / f.name).symlink_to(f)
        (run / step / "trainer_state.pt").write_bytes(b"")
    (run / "latest").write_text("step-000002\n")
    assert resolve_model_dir(run) == run / "step-000002"
    assert resolve_model_dir(run / "step-000004") == run / "step-000004"
    with pytest.raises(FileNotFoundError, match="holds no config.json"):
        resolve_model_dir(tmp_path)
