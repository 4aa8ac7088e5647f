"""Instruction data: reading, the loss mask, padding, the length-bucketed loader, held-out splits, and ids equal
to transformers' apply_chat_template on the chat_template that save_chat_format writes. No training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpt2.errors import UserError
from gpt2.finetune.instruct_data import (
    InstructLoader,
    chat_template,
    encode_conversation,
    held_out_split,
    pad_examples,
    read_instruct,
)
from gpt2.generate.chat import CHAT_FILE, FORMATS, ChatFormat, save_chat_format

ALPACA = FORMATS["alpaca"]
EOT = "<|endoftext|>"

WITH_INPUT = [{"role": "user", "content": "Edit the following sentence for grammar.",
               "input": "He go to the park every day."},
              {"role": "assistant", "content": "He goes to the park every day."}]
NO_INPUT = [{"role": "user", "content": "Convert 45 kilometers to meters."},
            {"role": "assistant", "content": "45 kilometers is 45000 meters."}]
MULTI_TURN = [{"role": "system", "content": "You answer in one short sentence."},
              {"role": "user", "content": "Name a primary color."},
              {"role": "assistant", "content": "Blue is a primary color."},
              {"role": "user", "content": "Translate it into French.", "input": "Blue is a primary color."},
              {"role": "assistant", "content": "Le bleu est une couleur primaire."}]


@pytest.fixture(scope="module")
def gpt2_tok(shared_data):
    from gpt2.tokenizer import load_tokenizer

    return load_tokenizer(shared_data / "gpt2")


@pytest.fixture(scope="module")
def alpaca_examples(shared_data, gpt2_tok) -> tuple[list, list]:
    """The 1,100 entries of instruction-data.json, read and encoded in the alpaca format."""
    conversations = read_instruct(shared_data / "instruction-data.json")
    return conversations, [encode_conversation(c, gpt2_tok, ALPACA) for c in conversations]


def target_runs(tok, ids: list[int], mask: list[bool]) -> list[str]:
    """The text of each maximal run of target tokens."""
    runs: list[list[int]] = []
    for i, (t, m) in enumerate(zip(ids, mask)):
        if m:
            if i == 0 or not mask[i - 1]:
                runs.append([])
            runs[-1].append(t)
    return [tok.decode(r) for r in runs]


# ------------------------------------------------------------------------------------------- mask
@pytest.mark.parametrize("fmt_name", ["alpaca", "plain"])
def test_mask_covers_exactly_each_response_and_its_eot(gpt2_tok, fmt_name) -> None:
    tok, fmt = gpt2_tok, FORMATS[fmt_name]
    for messages in (WITH_INPUT, NO_INPUT, MULTI_TURN):
        ids, mask = encode_conversation(messages, tok, fmt)
        assert len(ids) == len(mask)
        replies = [m["content"] for m in messages if m["role"] == "assistant"]
        assert target_runs(tok, ids, mask) == [r + EOT for r in replies]
        # what is not a target is exactly the prompt text: system, turns, separators
        turns = [m for m in messages if m["role"] == "user"]
        system = [m["content"] + fmt.separator for m in messages if m["role"] == "system"]
        prompts = [fmt.render(t["content"], t.get("input", "")) for t in turns]
        assert tok.decode([t for t, m in zip(ids, mask) if not m]) == "".join(system) + fmt.separator.join(prompts)
        assert tok.decode(ids) == "".join(system) + fmt.separator.join(p + r + EOT for p, r in zip(prompts, replies))
        assert ids.count(tok.eot_token) == len(replies) and all(mask[i] for i, t in enumerate(ids) if t == tok.eot_token)


def test_alpaca_rendering_and_system_template(gpt2_tok) -> None:
    ids, _ = encode_conversation(WITH_INPUT, gpt2_tok, ALPACA)
    assert gpt2_tok.decode(ids) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nEdit the following sentence for grammar.\n\n### Input:\nHe go to the park every day.\n\n"
        "### Response:\nHe goes to the park every day.<|endoftext|>")
    # a system template of the format's own, emitted once before the first turn
    fmt = ChatFormat(prompt="Q: {instruction}\nA:", separator="\n", system="[{system}]\n")
    ids, _ = encode_conversation(MULTI_TURN, gpt2_tok, fmt)
    assert gpt2_tok.decode(ids).startswith("[You answer in one short sentence.]\nQ: Name a primary color.\nA:Blue")
    # a template without {input} gets the input after the instruction, never drops it
    assert "Translate it into French.\n\nBlue is a primary color.\nA:" in gpt2_tok.decode(ids)


def test_train_on_prompt_targets_every_token(gpt2_tok) -> None:
    for messages in (WITH_INPUT, MULTI_TURN):
        ids, mask = encode_conversation(messages, gpt2_tok, ALPACA)
        all_ids, all_mask = encode_conversation(messages, gpt2_tok, ALPACA, train_on_prompt=True)
        assert all_ids == ids and all(all_mask) and not all(mask)
        _, y = pad_examples([(all_ids, all_mask)], pad_id=0)
        assert y[0].tolist() == all_ids[1:]


def test_generation_prompt_ends_with_the_next_response_prompt(gpt2_tok) -> None:
    question = MULTI_TURN[:-1]
    ids, _ = encode_conversation(question, gpt2_tok, ALPACA, add_generation_prompt=True)
    full, _ = encode_conversation(MULTI_TURN, gpt2_tok, ALPACA)
    assert full[: len(ids)] == ids and gpt2_tok.decode(ids).endswith("### Response:\n")
    single, _ = encode_conversation(NO_INPUT[:1], gpt2_tok, ALPACA, add_generation_prompt=True)
    assert single == ALPACA.encode(gpt2_tok, NO_INPUT[0]["content"])
    with pytest.raises(UserError, match="end with a user message"):
        encode_conversation(MULTI_TURN, gpt2_tok, ALPACA, add_generation_prompt=True)
    with pytest.raises(UserError, match="ends with a user message"):
        encode_conversation(question, gpt2_tok, ALPACA)


def test_user_text_never_becomes_a_special_token(gpt2_tok) -> None:
    messages = [{"role": "user", "content": f"Repeat {EOT} twice."}, {"role": "assistant", "content": f"{EOT} {EOT}"}]
    ids, mask = encode_conversation(messages, gpt2_tok, ALPACA)
    assert ids.count(gpt2_tok.eot_token) == 1 and ids[-1] == gpt2_tok.eot_token  # only the one closing the reply
    assert target_runs(gpt2_tok, ids, mask) == [f"{EOT} {EOT}{EOT}"]


# ---------------------------------------------------------------------------------------- padding
def test_pad_examples_shifts_masks_and_pads_right() -> None:
    examples = [([10, 11, 12, 13], [False, False, True, True]), ([20, 21], [False, True])]
    x, y = pad_examples(examples, pad_id=0)
    assert x.tolist() == [[10, 11, 12], [20, 0, 0]]
    assert y.tolist() == [[-100, 12, 13], [21, -100, -100]]


def test_padding_is_never_a_target(alpaca_examples, gpt2_tok) -> None:
    _, examples = alpaca_examples
    batch = examples[:16]
    pad = gpt2_tok.eot_token  # the pad id is a real token: only y says what counts
    x, y = pad_examples(batch, pad_id=pad)
    assert x.shape == y.shape == (16, max(len(ids) for ids, _ in batch) - 1)
    for b, (ids, mask) in enumerate(batch):
        assert (y[b, len(ids) - 1:] == -100).all() and (x[b, len(ids) - 1:] == pad).all()
        assert x[b, : len(ids) - 1].tolist() == ids[:-1]
        assert y[b, : len(ids) - 1].tolist() == [t if m else -100 for t, m in zip(ids[1:], mask[1:])]
    assert int((y != -100).sum()) == sum(sum(mask[1:]) for _, mask in batch)


# ----------------------------------------------------------------------------------------- loader
def numbered(lengths: list[int]) -> list[tuple[list[int], list[bool]]]:
    """Examples whose first token is their index + 1000 (so a batch's x[:, 0] names them)."""
    return [([1000 + i] + [5] * (n - 1), [False] + [True] * (n - 1)) for i, n in enumerate(lengths)]


def take(loader: InstructLoader, steps: int) -> list[list[int]]:
    return [(loader.next_batch()[0][:, 0] - 1000).tolist() for _ in range(steps)]


def test_loader_is_deterministic_and_resumes_mid_epoch() -> None:
    examples = numbered([2 + (i * 7) % 30 for i in range(203)])
    kw = dict(batch_size=4, rank=0, world_size=1, pad_id=0)
    a, b = InstructLoader(examples, seed=3, **kw), InstructLoader(examples, seed=3, **kw)
    first = take(a, 70)  # 50 micro-batches an epoch: crosses into the second epoch
    assert first == take(b, 70)
    assert first != take(InstructLoader(examples, seed=4, **kw), 70)
    epoch0 = [i for batch in first[:50] for i in batch]
    assert len(set(epoch0)) == 200 and first[50:] != first[:20]  # each epoch: distinct examples, its own order
    for stop in (13, 50, 51):
        c = InstructLoader(examples, seed=3, **kw)
        take(c, stop)
        state = json.loads(json.dumps(c.state_dict()))  # what a checkpoint stores survives JSON
        d = InstructLoader(examples, seed=3, **kw)
        d.load_state_dict(state)
        assert take(d, 20) == take(c, 20)
    with pytest.raises(UserError, match="had 203 examples, this one has 10"):
        InstructLoader(examples[:10], seed=3, **kw).load_state_dict(a.state_dict())
    with pytest.raises(UserError, match="lower train.micro_batch_size"):
        InstructLoader(examples[:7], seed=3, batch_size=4, rank=0, world_size=2, pad_id=0)


def test_loader_ranks_take_disjoint_batches() -> None:
    examples = numbered([2 + (i * 11) % 40 for i in range(250)])
    world, B, steps = 3, 4, 20  # an epoch: 250 // 12 = 20 steps
    per_rank = [take(InstructLoader(examples, batch_size=B, rank=r, world_size=world, seed=1, pad_id=0), steps + 1)
                for r in range(world)]
    seen = [{i for batch in batches[:steps] for i in batch} for batches in per_rank]
    assert all(len(s) == steps * B for s in seen)  # no example twice on a rank within an epoch
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    single = take(InstructLoader(examples, batch_size=B, rank=0, world_size=world, seed=1, pad_id=0), 1)
    assert single[0] == per_rank[0][0]


def test_length_buckets_cut_padding(alpaca_examples, gpt2_tok, monkeypatch) -> None:
    """On instruction-data.json, one epoch at micro-batch 8: padded tokens with buckets vs the same epoch's
    examples batched in shuffled order (bucket_batches=1 sorts only within a batch, which changes nothing).
    Lengths are not rounded here (PAD_MULTIPLE 1): the buckets' own padding is what is measured."""
    import gpt2.finetune.instruct_data as instruct_data

    monkeypatch.setattr(instruct_data, "PAD_MULTIPLE", 1)
    _, examples = alpaca_examples
    useful = sum(len(ids) - 1 for ids, _ in examples[: len(examples) // 8 * 8])

    def padding(bucket_batches: int) -> int:
        loader = InstructLoader(examples, batch_size=8, rank=0, world_size=1, seed=0, pad_id=gpt2_tok.eot_token)
        loader.bucket_batches = bucket_batches
        total = 0
        for _ in range(len(examples) // 8):
            x, _ = loader.next_batch()
            total += x.numel()
        return total - useful

    bucketed, shuffled = padding(50), padding(1)
    # measured: 271 padded tokens against 14,879 (62,025 real), 2% of the padding
    assert bucketed < 0.05 * shuffled, (bucketed, shuffled)


def test_batch_lengths_round_up_but_never_past_the_longest() -> None:
    ex = lambda n: (list(range(n)), [True] * n)  # noqa: E731
    assert pad_examples([ex(10)], 0)[0].shape == (1, 9)  # plain: the longest - 1
    assert pad_examples([ex(10), ex(4)], 0, multiple=8, longest=40)[0].shape == (2, 16)
    assert pad_examples([ex(10)], 0, multiple=8, longest=12)[0].shape == (1, 11)  # capped at the data's longest
    x, y = pad_examples([ex(10)], 7, multiple=8, longest=40)
    assert (x[0, 9:] == 7).all() and (y[0, 9:] == -100).all()  # the extra positions are padding, never targets


# --------------------------------------------------------------------------------------- held out
def test_held_out_split() -> None:
    train, held = held_out_split(1100, fraction_or_count=100, seed=0)
    assert len(held) == 100 and len(train) == 1000 and sorted(train + held) == list(range(1100))
    assert held == sorted(held) and (train, held) == held_out_split(1100, fraction_or_count=100, seed=0)
    assert held != held_out_split(1100, fraction_or_count=100, seed=1)[1]
    assert len(held_out_split(1100, fraction_or_count=0.1, seed=0)[1]) == 110
    assert held_out_split(5, fraction_or_count=0, seed=0) == ([0, 1, 2, 3, 4], [])
    for bad, match in [(1100, "leave at least one"), (1.0, r"in \(0, 1\)"), (-0.5, r"in \(0, 1\)"), (True, "count")]:
        with pytest.raises(UserError, match=match):
            held_out_split(1100, fraction_or_count=bad, seed=0)


# ------------------------------------------------------------------------------------------ files
def test_read_alpaca_json_and_jsonl_and_chat_jsonl(tmp_path, shared_data) -> None:
    conversations = read_instruct(shared_data / "instruction-data.json")
    assert len(conversations) == 1100
    assert conversations[0] == [
        {"role": "user", "content": "Evaluate the following phrase by transforming it into the spelling given.",
         "input": "freind --> friend"},
        {"role": "assistant",
         "content": "The spelling of the given phrase \"freind\" is incorrect, the correct spelling is \"friend\"."}]
    assert conversations[2][0] == {"role": "user", "content": "Convert 45 kilometers to meters."}  # empty input: none
    lines = tmp_path / "alpaca.jsonl"
    lines.write_text('{"instruction": "Say hi.", "output": ""}\n\n{"instruction": "Add.", "input": "1+1", '
                     '"output": "2"}\n')
    assert read_instruct(lines) == [
        [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": ""}],  # an empty output is kept
        [{"role": "user", "content": "Add.", "input": "1+1"}, {"role": "assistant", "content": "2"}]]
    chat = tmp_path / "chat.jsonl"
    chat.write_text("".join(json.dumps({"messages": m}) + "\n" for m in (MULTI_TURN, WITH_INPUT)))
    assert read_instruct(chat) == [MULTI_TURN, WITH_INPUT]


def test_an_empty_output_still_trains_the_closing_eot(gpt2_tok) -> None:
    ids, mask = encode_conversation([{"role": "user", "content": "Say nothing."}, {"role": "assistant", "content": ""}],
                                    gpt2_tok, ALPACA)
    assert target_runs(gpt2_tok, ids, mask) == [EOT]
    assert int((pad_examples([(ids, mask)], pad_id=0)[1] != -100).sum()) == 1


def _chat_line(*messages: dict) -> str:
    return json.dumps({"messages": list(messages)}) + "\n"


U, A, S = ({"role": r, "content": "x"} for r in ("user", "assistant", "system"))

BAD_FILES = {
    "no-output": ("a.json", json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "c", "input": ""}]),
                  r"a.json: entry 1 has no 'output'; an Alpaca entry needs instruction and output"),
    "output-not-text": ("a.jsonl", json.dumps({"instruction": "a", "output": 42}) + "\n",
                        r"a.jsonl:1: 'output' must be a string, got int"),
    "input-not-text": ("a.jsonl", json.dumps({"instruction": "a", "input": ["x"], "output": "b"}) + "\n",
                       r"a.jsonl:1: 'input' must be a string"),
    "unknown-role": ("c.jsonl", _chat_line(U, A) + _chat_line(U, {"role": "bot", "content": "x"}),
                     r"c.jsonl:2: message 1 has unknown role 'bot'; known roles: system, user, assistant"),
    "system-not-first": ("c.jsonl", _chat_line(U, S, A),
                         r"c.jsonl:1: message 1 is a system message; only the first message may be one"),
    "ends-with-user": ("c.jsonl", _chat_line(S, U, A, U),
                       r"c.jsonl:1 ends with a user message: a training conversation ends with the assistant's"),
    "no-assistant": ("c.jsonl", _chat_line(S, U), r"c.jsonl:1 has no assistant message"),
    "not-alternating": ("c.jsonl", _chat_line(U, U, A), r"c.jsonl:1: message 1 is the user's where the assistant's"),
    "no-messages": ("c.jsonl", _chat_line(U, A) + json.dumps({"instruction": "a", "output": "b"}) + "\n",
                    r"c.jsonl:2 has no 'messages'; the file's first record is a chat conversation"),
    "content-not-text": ("c.jsonl", _chat_line(U, {"role": "assistant", "content": None}),
                         r"c.jsonl:1: message 1 \(assistant\) needs a string 'content'"),
    "empty-conversation": ("c.jsonl", _chat_line(), r"c.jsonl:1: expected a non-empty list of messages"),
    "empty-file": ("e.jsonl", "\n  \n", r"e.jsonl holds no examples \(an empty file or an empty list\)"),
    "empty-list": ("e.json", "[]", r"e.json holds no examples"),
    "bad-json-line": ("b.jsonl", json.dumps({"instruction": "a", "output": "b"}) + "\n{oops\n",
                      r"b.jsonl:2: not valid JSON"),
    "bad-json-list": ("b.json", '[\n {"instruction": "a", "output": "b"},\n {"instruction": }\n]',
                      r"b.json: not valid JSON \(.* at line 3"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_input_is_a_one_line_user_error(tmp_path, case) -> None:
    name, text, match = BAD_FILES[case]
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(UserError, match=match) as e:
        read_instruct(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_missing_file_and_bad_messages_in_code(tmp_path, gpt2_tok) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        read_instruct(tmp_path / "nope.json")
    with pytest.raises(UserError, match="known roles: system, user, assistant"):
        encode_conversation([{"role": "tool", "content": "x"}], gpt2_tok, ALPACA)


# ------------------------------------------------------------------------------ HF chat template
def test_ids_equal_transformers_apply_chat_template(tmp_path, gpt2_tok, alpaca_examples) -> None:
    transformers = pytest.importorskip("transformers")
    import jinja2

    gpt2_tok.save(tmp_path)
    keys = set(json.loads((tmp_path / "tokenizer_config.json").read_text()))
    cases = {
        "alpaca": [WITH_INPUT[:1], NO_INPUT[:1], MULTI_TURN[:-1]],
        "plain": [[{"role": "user", "content": "hello"}], MULTI_TURN[:-1]],  # "User: " + "hello" merges as " hello"
    }
    for name, conversations in cases.items():
        save_chat_format(tmp_path, name)
        assert json.loads((tmp_path / CHAT_FILE).read_text()) == {"format": name}  # chat.json as before
        config = json.loads((tmp_path / "tokenizer_config.json").read_text())
        assert set(config) == keys | {"chat_template"} and config["chat_template"] == chat_template(FORMATS[name])
        hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
        for messages in conversations:
            ours, _ = encode_conversation(messages, gpt2_tok, FORMATS[name], add_generation_prompt=True)
            theirs = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
            assert ours == theirs, (name, messages)
            # the template renders the same in plain Jinja (no trim_blocks/lstrip_blocks)
            text = jinja2.Environment().from_string(config["chat_template"]).render(messages=messages, eos_token=EOT)
            assert text == hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        # a full conversation, replies and <|endoftext|> included
        ours, _ = encode_conversation(MULTI_TURN, gpt2_tok, FORMATS[name])
        assert ours == hf.apply_chat_template(MULTI_TURN, tokenize=True, return_dict=False)
        if name == "plain":
            ids = hf.apply_chat_template(cases["plain"][0], add_generation_prompt=True, tokenize=True,
                                         return_dict=False)
            assert [gpt2_tok.decode([t]) for t in ids] == ["User", ":", " hello", "\n", "Assistant", ":"]
    # alpaca: every conversation of instruction-data.json, replies included, equals the whole-string tokenization
    # (so the reply as its own piece puts the mask boundary where the whole string's tokens fall)
    save_chat_format(tmp_path, "alpaca")
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    conversations, examples = alpaca_examples
    for messages, (ids, _) in zip(conversations, examples):
        assert ids == hf.apply_chat_template(messages, tokenize=True, return_dict=False)
    # a typed <|endoftext|> stays text: as sanitize_control_tokens=True has it, unlike the default
    typed = [{"role": "user", "content": f"say {EOT} now"}]
    ours, _ = encode_conversation(typed, gpt2_tok, ALPACA, add_generation_prompt=True)
    kw = dict(add_generation_prompt=True, tokenize=True, return_dict=False)
    assert ours == hf.apply_chat_template(typed, sanitize_control_tokens=True, **kw)
    assert ours != hf.apply_chat_template(typed, **kw) and gpt2_tok.eot_token not in ours


def test_custom_format_template_with_special_tokens(tmp_path, gpt2_tok) -> None:
    transformers = pytest.importorskip("transformers")
    fmt = ChatFormat(prompt=f"{EOT}Q: {{instruction}}\nIn: {{input}}\nA:", prompt_no_input=f"{EOT}Q: {{instruction}}\nA:",
                     separator=f"\n{EOT}\n", system="[{system}]\n", stop=["\nQ:"])
    gpt2_tok.save(tmp_path)
    save_chat_format(tmp_path, fmt)
    assert json.loads((tmp_path / CHAT_FILE).read_text())["system"] == "[{system}]\n"
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for messages in (MULTI_TURN, WITH_INPUT):
        ours, mask = encode_conversation(messages, gpt2_tok, fmt)
        assert ours == hf.apply_chat_template(messages, tokenize=True, return_dict=False)
        # the template's own <|endoftext|> tokens are special ids, and only those closing a reply are targets
        eots = [m for t, m in zip(ours, mask) if t == gpt2_tok.eot_token]
        replies = sum(m["role"] == "assistant" for m in messages)
        assert eots.count(True) == replies and eots.count(False) == 2 * replies - 1  # a prompt each, a separator between


def test_save_chat_format_without_tokenizer_config(tmp_path) -> None:
    save_chat_format(tmp_path, "alpaca")
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == [CHAT_FILE]
    (tmp_path / "tokenizer_config.json").write_text("{broken")
    with pytest.raises(UserError, match="tokenizer_config.json is not valid JSON"):
        save_chat_format(tmp_path, "alpaca")
