"""Many LoRA adapters on one base (`gpt2 serve BASE --adapter NAME=DIR ...`, gpt2.model.multi_lora): a batch
mixing the base and three adapters gives each row PEFT's logits (PEFT's own mixed batch) and our one-adapter
model's, greedy tokens equal `gpt2 generate ADAPTER_DIR --greedy` with the rows decoding together, the API
lists and picks them by name, int8 bases work, a server without adapters runs its model untouched, and bad
input is one line."""

from __future__ import annotations

import copy
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
from serve_helpers import LiveServer

from gpt2 import GPT2Config, GPT2LMHeadModel
from gpt2.generate.fastpath import inference_view, shared_copy
from gpt2.generate.quant import Int8Linear, quantize
from gpt2.load import load
from gpt2.model.lora import LoRAConfig, inject_lora, load_adapter, lora_layers, read_adapter, save_adapter
from gpt2.model.multi_lora import MultiLoRALinear, adapter_slots, attach_adapters
from gpt2.serve.adapters import load_adapters
from gpt2.serve.scheduler import Job, Scheduler, SeqParams
from gpt2.tokenizer.chat import FORMATS, ChatFormat, encode_conversation, save_chat_format

ALL = ("c_attn", "attn.c_proj", "c_fc", "mlp.c_proj")
# Three adapters that differ in rank, alpha and targets, so the stacks are zero-padded (rank) and hold zeros
# where an adapter does not reach (targets).
ADAPTERS = {
    "poet": LoRAConfig(rank=4, alpha=8),  # PEFT's GPT-2 default: c_attn only
    "coder": LoRAConfig(rank=2, alpha=4, targets=ALL),
    "chef": LoRAConfig(rank=8, alpha=16, targets=("attn.c_proj", "c_fc")),
}
TOL = 1e-4
QA = ChatFormat(prompt="Q: {instruction}\nA:", separator="\n", stop=["\nQ:"], name="qa")  # chef's own (short: tiny context)
GREEDY = {"max_tokens": 16, "temperature": 0, "ignore_eos": True}


def make_adapter(base: GPT2LMHeadModel, cfg: LoRAConfig, *, seed: int) -> GPT2LMHeadModel:
    """A copy of `base` with LoRA of `cfg` whose B is random (PEFT starts it at zero: no change at all)."""
    torch.manual_seed(seed)
    model = inject_lora(copy.deepcopy(base), cfg)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.weight.normal_(0, 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def adapter_dirs(ckpt, model, tok, tmp_path_factory) -> dict[str, Path]:
    """The three adapters of the `ckpt` base as PEFT directories: poet holds the base's tokenizer, chef its own
    chat.json (QA; the base's is plain), coder nothing but the adapter."""
    root = tmp_path_factory.mktemp("adapters")
    out = {}
    for i, (name, cfg) in enumerate(ADAPTERS.items()):
        out[name] = save_adapter(make_adapter(model, cfg, seed=100 + i), root / name,
                                 base_model_name_or_path=str(ckpt), tokenizer=tok if name == "poet" else None)
    save_chat_format(out["chef"], QA)
    return out


def ids(n: int, T: int, vocab: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab - 1, (n, T), generator=torch.Generator().manual_seed(seed))  # (n, T)


# ------------------------------------------------------------------------------------ the model
# transformers 5.x's FutureWarning when PEFT calls its deprecated is_gradient_checkpointing: not about our files
@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
def test_a_mixed_batch_gives_every_row_its_adapters_logits_as_peft_does(ckpt, adapter_dirs, tok) -> None:
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    base = GPT2LMHeadModel.from_pretrained(ckpt).eval()
    multi = attach_adapters(copy.deepcopy(base), [read_adapter(d, base=base) for d in adapter_dirs.values()])
    slots = adapter_slots(multi)
    names = ["__base__", *adapter_dirs]  # slot → PEFT's adapter name ("__base__": no adapter)
    x = ids(9, 12, tok.n_vocab)
    pm = peft.PeftModel.from_pretrained(transformers.GPT2LMHeadModel.from_pretrained(ckpt),
                                        adapter_dirs["poet"], adapter_name="poet").eval()
    for name in ("coder", "chef"):
        pm.load_adapter(adapter_dirs[name], adapter_name=name)
    with torch.no_grad():
        alone = [base(x).logits] + [load_adapter(d, base=copy.deepcopy(base))(x).logits for d in adapter_dirs.values()]
    # all four mixed; one adapter and the base (masked); one adapter only (no mask); two of three (a subset of
    # the stacks is read); the base alone (no update at all)
    for rows in ([0, 1, 2, 3, 3, 2, 1, 0, 2], [2, 0, 2, 2, 0, 0, 2, 2, 0], [3] * 9, [1, 3, 3, 1, 1, 3, 0, 1, 3], [0] * 9):
        slots.set(rows)
        with torch.no_grad():
            ours = multi(x).logits  # (rows, T, vocab)
            theirs = pm(input_ids=x, adapter_names=[names[s] for s in rows]).logits  # PEFT's own mixed batch
        torch.testing.assert_close(ours, theirs, atol=TOL, rtol=0)
        for r, s in enumerate(rows):  # and the one-adapter model (LoRALinear) on the same row
            torch.testing.assert_close(ours[r], alone[s][r], atol=TOL, rtol=0)
    for s in range(1, 4):  # every adapter changes the function, and each differently: the test can fail
        assert min((alone[s] - alone[t]).abs().max() for t in range(4) if t != s) > 0.1


def test_an_int8_base_adds_each_adapters_update_unmerged(ckpt, adapter_dirs, tok) -> None:
    """--quantize int8 with --adapter: the base's matrices int8, each row's update in fp32 on top of them (as
    QLoRA serves), held to the int8 reference layer plus x (s B A)ᵀ; the kernel path too."""
    base = GPT2LMHeadModel.from_pretrained(ckpt).eval()
    adapters = [read_adapter(d, base=base) for d in adapter_dirs.values()]
    rows = [1, 2, 3, 0]
    x = ids(len(rows), 10, tok.n_vocab, seed=2)
    for kernel in (False, True):
        q = quantize(base, kernel=kernel)
        multi = attach_adapters(shared_copy(q), adapters)
        assert all(isinstance(m.base_layer, Int8Linear) for m in multi.modules() if isinstance(m, MultiLoRALinear))
        adapter_slots(multi).set(rows)
        with torch.no_grad():
            ours = multi(x).logits
        for r, s in enumerate(rows):
            ref = shared_copy(q)
            if s:  # the adapter's delta, added to each int8 layer's output by a hook: the plain formula
                on = load_adapter(adapter_dirs[list(ADAPTERS)[s - 1]], base=copy.deepcopy(base))
                for name, layer in lora_layers(on).items():
                    delta = layer.delta_weight()  # (out, in)
                    ref.get_submodule(name).register_forward_hook(lambda m, inp, out, d=delta: out + inp[0] @ d.t())
            with torch.no_grad():
                torch.testing.assert_close(ours[r], ref(x[r : r + 1]).logits[0], atol=TOL, rtol=0)


def test_without_adapters_the_scheduler_runs_the_model_untouched(model, tok) -> None:
    sched = Scheduler(model, tok, max_batch=4, start=False)
    assert sched.slots is None and sched.model is inference_view(model)
    assert not any(isinstance(m, MultiLoRALinear) for m in sched.model.modules())


# ------------------------------------------------------------------------------------ scheduling
class Tokens:
    """emit() target collecting one choice's tokens."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.done = False

    def __call__(self, items) -> None:
        assert not isinstance(items, BaseException), items
        for p in items:
            self.tokens.append(p.token.token)
            self.done = self.done or p.finish_reason is not None


def _greedy_generate(gpt2_main, source: Path, prompt: str, n: int) -> list[int]:
    r = gpt2_main("generate", str(source), prompt, "--greedy", "--max-new-tokens", str(n), "--ignore-eot", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["results"][0]["tokens"]


def _greedy_text(gpt2_main, source: Path, prompt: str, n: int) -> str:
    """`gpt2 generate SOURCE PROMPT --greedy`'s completion, stopping at end-of-text as the server does."""
    r = gpt2_main("generate", str(source), prompt, "--greedy", "--max-new-tokens", str(n), "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["results"][0]["text"]


def test_rows_of_every_adapter_decode_together_with_gpt2_generates_tokens(gpt2_main, ckpt, adapter_dirs, tok) -> None:
    loaded = load(ckpt, device="cpu")
    named = load_adapters([(n, str(d)) for n, d in adapter_dirs.items()], base=loaded)
    sched = Scheduler(loaded.model, tok, max_batch=8, start=False, adapters=[a.lora for a in named])
    # The same prompt for the base and each adapter, and a shorter one (a padded prefill of mixed adapters).
    jobs = [("Once upon a time", s) for s in range(4)] + [("héllo", 2)]
    outs = [Tokens() for _ in jobs]
    for (prompt, slot), out in zip(jobs, outs):
        sched.submit(Job([tok.encode(prompt)], SeqParams(**GREEDY), emit=out, adapter=slot))
    sched.step_once()
    assert sched.slots is not None and sorted(sched.slots.index.tolist()) == sorted(s for _, s in jobs)
    while not all(o.done for o in outs):
        sched.step_once()
    sources = [ckpt, *adapter_dirs.values()]
    for (prompt, slot), out in zip(jobs, outs):
        assert out.tokens == _greedy_generate(gpt2_main, sources[slot], prompt, GREEDY["max_tokens"]), (prompt, slot)
    assert len({tuple(o.tokens) for o in outs[:4]}) == 4  # base and three adapters: four different texts


def test_the_prefix_cache_never_hands_one_adapters_keys_to_another(gpt2_main, ckpt, adapter_dirs, tok) -> None:
    """Keys and values depend on the adapter: a prompt cached under the base is a miss for an adapter, a hit
    for the same adapter later, and every reply stays the one `gpt2 generate` gives for its own weights."""
    loaded = load(ckpt, device="cpu")
    named = load_adapters([(n, str(d)) for n, d in adapter_dirs.items()], base=loaded)
    sched = Scheduler(loaded.model, tok, max_batch=4, start=False, adapters=[a.lora for a in named],
                      prefix_block=4)
    prompt = "Once upon a time there was a king who ruled"
    ids = tok.encode(prompt)
    assert len(ids) > 8
    sources = [ckpt, *adapter_dirs.values()]
    cached = []
    for slot in (0, 1, 1, 2, 0):  # one at a time, so each finds what the ones before it left
        out = Tokens()
        job = Job([ids], SeqParams(**GREEDY), emit=out, adapter=slot)
        sched.submit(job)
        while not out.done:
            sched.step_once()
        assert out.tokens == _greedy_generate(gpt2_main, sources[slot], prompt, GREEDY["max_tokens"]), slot
        cached.append(job.cached_tokens[0])
    assert cached[0] == 0 and cached[1] == 0 and cached[3] == 0  # first sight under each weights: a miss
    assert cached[2] > 0 and cached[4] > 0  # the same weights again: a hit


# ------------------------------------------------------------------------------------ the server
def serve_app(*argv: str):
    """`gpt2 serve ARGV` as the command line runs it, up to the app it hands uvicorn (then returned)."""
    from gpt2.cli import main

    apps = []
    with pytest.MonkeyPatch.context() as m:
        m.setattr("uvicorn.run", lambda app, **kw: apps.append(app))
        assert main(["serve", *argv]) == 0
    return apps[0]


@pytest.fixture(scope="module")
def adapter_server(ckpt, adapter_dirs):
    specs = [a for name, d in adapter_dirs.items() for a in ("--adapter", f"{name}={d}")]
    server = LiveServer(serve_app(str(ckpt), *specs, "--max-batch", "8"))
    yield server
    server.stop()


def test_models_lists_the_base_and_every_adapter(adapter_server, ckpt, adapter_dirs) -> None:
    data = httpx.get(adapter_server.url + "/v1/models").json()["data"]
    assert [m["id"] for m in data] == [ckpt.name, *adapter_dirs]
    assert "parent" not in data[0] and all(m["chat"] for m in data)
    for m in data[1:]:
        assert m["parent"] == ckpt.name and m["root"] == str(adapter_dirs[m["id"]])
    one = httpx.get(adapter_server.url + "/v1/models/chef").json()
    assert one["id"] == "chef" and one["parent"] == ckpt.name


def test_requests_pick_their_adapter_by_model(adapter_server, gpt2_main, ckpt, adapter_dirs) -> None:
    names = [ckpt.name, *adapter_dirs]

    def complete(name: str) -> dict:
        return httpx.post(adapter_server.url + "/v1/completions", timeout=60, json={
            "model": name, "prompt": "The quick brown", "max_tokens": 12, "temperature": 0}).json()

    with ThreadPoolExecutor(len(names)) as pool:  # sent together, so they share decode steps
        bodies = list(pool.map(complete, names))
    for name, source, body in zip(names, [ckpt, *adapter_dirs.values()], bodies):
        assert body["model"] == name
        assert body["choices"][0]["text"] == _greedy_text(gpt2_main, source, "The quick brown", 12), name
    assert len({body["choices"][0]["text"] for body in bodies}) == len(names)


def test_an_adapter_chats_in_its_own_prompt_format(adapter_server, tok) -> None:
    messages = [{"role": "user", "content": "Say hi"}]
    for name, fmt in (("chef", QA), ("poet", FORMATS["plain"])):  # chef's chat.json, poet the base's
        r = httpx.post(adapter_server.url + "/v1/chat/completions", timeout=60,
                       json={"model": name, "messages": messages, "max_tokens": 3, "temperature": 0})
        assert r.status_code == 200 and r.json()["model"] == name, r.text
        expected = encode_conversation(messages, tok, fmt, add_generation_prompt=True)[0]
        assert r.json()["usage"]["prompt_tokens"] == len(expected), name


def test_an_unknown_model_is_a_404_naming_the_served_ones(adapter_server, ckpt) -> None:
    for path, body in (("/v1/completions", {"prompt": "a"}), ("/v1/chat/completions",
                                                              {"messages": [{"role": "user", "content": "a"}]})):
        r = httpx.post(adapter_server.url + path, json={"model": "sommelier", **body})
        assert r.status_code == 404
        err = r.json()["error"]
        assert err["code"] == "model_not_found" and err["param"] == "model" and "\n" not in err["message"]
        assert "'sommelier'" in err["message"] and "'chef'" in err["message"] and repr(ckpt.name) in err["message"]
    assert httpx.get(adapter_server.url + "/v1/models/sommelier").status_code == 404


def test_an_adapter_directory_served_alone_and_an_int8_base_with_adapters(ckpt, adapter_dirs, gpt2_main) -> None:
    """`gpt2 serve ADAPTER_DIR` still serves the adapter (under its directory's name); --quantize int8 with
    --adapter serves int8 base matrices wrapped by the adapters' updates."""
    alone = LiveServer(serve_app(str(adapter_dirs["coder"])))
    q = LiveServer(serve_app(str(ckpt), "--adapter", f"coder={adapter_dirs['coder']}", "--quantize", "int8"))
    try:
        assert [m["id"] for m in httpx.get(alone.url + "/v1/models").json()["data"]] == ["coder"]
        body = {"model": "coder", "prompt": "Once", "max_tokens": 8, "temperature": 0}
        text = httpx.post(alone.url + "/v1/completions", json=body, timeout=60).json()["choices"][0]["text"]
        assert text == _greedy_text(gpt2_main, adapter_dirs["coder"], "Once", 8)
        layers = [m for m in q.scheduler.model.modules() if isinstance(m, MultiLoRALinear)]
        assert layers and all(isinstance(m.base_layer, Int8Linear) for m in layers)
        assert httpx.post(q.url + "/v1/completions", json=body, timeout=60).status_code == 200
    finally:
        alone.stop()
        q.stop()


# ------------------------------------------------------------------------------------ bad input
@pytest.fixture(scope="module")
def foreign(tok, model, ckpt, tmp_path_factory) -> dict[str, Path]:
    """Adapters that do not fit the `ckpt` base: made for a wider base; holding another tokenizer; naming a
    base of the same shapes with another tokenizer (and holding none itself)."""
    from gpt2.tokenizer import train_bpe

    root = tmp_path_factory.mktemp("foreign")
    other_tok = train_bpe(["some other text entirely, " * 20], vocab_size=300, progress=False)
    eot = tok.eot_token
    wide = GPT2LMHeadModel(GPT2Config.from_preset("tiny", vocab_size=tok.n_vocab, n_embd=32, n_head=2,
                                                  bos_token_id=eot, eos_token_id=eot))
    wide.save_pretrained(root / "wide-base")
    tok.save(root / "wide-base")
    model.save_pretrained(root / "other-tok-base")
    other_tok.save(root / "other-tok-base")
    out = {"shapes": save_adapter(make_adapter(wide, LoRAConfig(rank=2), seed=0), root / "shapes",
                                  base_model_name_or_path=str(root / "wide-base")),
           "tokenizer": save_adapter(make_adapter(model, LoRAConfig(rank=2), seed=0), root / "tokenizer",
                                     base_model_name_or_path=str(ckpt), tokenizer=other_tok),
           "named-base-tokenizer": save_adapter(make_adapter(model, LoRAConfig(rank=2), seed=0), root / "named",
                                                base_model_name_or_path=str(root / "other-tok-base"))}
    return out


@pytest.mark.parametrize("case, match", [
    ("shapes", r"--adapter x=.*has shape \(2, 32\) but this base needs \(2, 64\)"),
    ("tokenizer", r"--adapter x=.*tokenizer .* is not the base's"),
    ("named-base-tokenizer", r"--adapter x=.*other-tok-base\) is not the base's"),
    ("two names", r"two adapters are named 'x'"),
    ("base name", r"is the base model's name"),
    ("no equals", r"give NAME=DIR"),
    ("not an adapter", r"--adapter x=.*not a LoRA adapter directory"),
    ("missing", r"--adapter x=/nonexistent/lora: .*nonexistent"),
    ("adapter as base", r"--adapter needs a base model, but .* is itself a LoRA adapter"),
])
def test_bad_adapters_are_one_error_line(gpt2_main, ckpt, adapter_dirs, foreign, case, match) -> None:
    import re

    base, poet = str(ckpt), f"x={adapter_dirs['poet']}"
    argv = {"shapes": [base, "--adapter", f"x={foreign['shapes']}"],
            "tokenizer": [base, "--adapter", f"x={foreign['tokenizer']}"],
            "named-base-tokenizer": [base, "--adapter", f"x={foreign['named-base-tokenizer']}"],
            "two names": [base, "--adapter", poet, "--adapter", f"x={adapter_dirs['chef']}"],
            "base name": [base, "--adapter", f"{ckpt.name}={adapter_dirs['poet']}"],
            "no equals": [base, "--adapter", str(adapter_dirs["poet"])],
            "not an adapter": [base, "--adapter", f"x={ckpt}"],
            "missing": [base, "--adapter", "x=/nonexistent/lora"],
            "adapter as base": [str(adapter_dirs["coder"]), "--adapter", poet]}[case]
    r = gpt2_main("serve", *argv)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert re.search(match, lines[0]), lines[0]
