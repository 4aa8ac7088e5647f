"""The top-level API as a user meets it: `import gpt2`, then gpt2.generate as a module and as a call."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

FIRST_USE = r"""
import sys
import torch
import gpt2
from gpt2.tokenizer import train_bpe

assert "gpt2.generate" not in sys.modules, "something imported gpt2.generate before this test's first use"
torch.manual_seed(0)
tok = train_bpe(["hello world, hello there. " * 20], vocab_size=300)
model = gpt2.GPT2LMHeadModel(gpt2.GPT2Config.from_preset("tiny", vocab_size=tok.n_vocab)).eval()
events = list(gpt2.generate.stream(model, tok, "hello", max_new_tokens=5, temperature=0, stop_at_eot=False))
assert len(events) == 5 and events[-1].generation is not None, events
streamed = events[-1].generation.tokens
out = gpt2.generate(model, tok, "hello", max_new_tokens=5, temperature=0, stop_at_eot=False)
assert out[0].tokens == streamed and out[0].completion_tokens == 5, (out, streamed)
assert gpt2.generate.generate(model, tok, ["hello"], max_new_tokens=5, temperature=0, stop_at_eot=False)[0].tokens \
    == streamed
print("OK", streamed)
"""


def _run(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def test_generate_stream_as_the_first_use_in_a_fresh_interpreter() -> None:
    r = _run(FIRST_USE)
    assert r.returncode == 0 and r.stdout.startswith("OK"), r.stderr[-3000:]


def test_generate_call_as_the_first_use_in_a_fresh_interpreter() -> None:
    # The call first, then the attribute: both orders must see the same callable package.
    code = FIRST_USE.replace('events = list(gpt2.generate.stream(', 'first = gpt2.generate(model, tok, "hello", '
                             'max_new_tokens=5, temperature=0, stop_at_eot=False)\nevents = list(gpt2.generate.stream(')
    code += "assert first[0].tokens == streamed\nassert type(gpt2.generate).__name__ == '_CallableModule'\n"
    r = _run(code)
    assert r.returncode == 0 and r.stdout.startswith("OK"), r.stderr[-3000:]
