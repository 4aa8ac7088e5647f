"""The generation engine: batched prompts, one prefill, token-by-token decoding from a preallocated KV cache.

    python -m gpt2 generate path/to/checkpoint "Once upon a time" --max-new-tokens 40 --top-p 0.9

    from gpt2.generate import SampleConfig, generate, stream
    results = generate(model, tokenizer, ["Hello", "The meaning of life is"], max_new_tokens=20, temperature=0)
    for event in stream(model, tokenizer, "Hello", max_new_tokens=20):
        print(event.text, end="", flush=True)

How a batch runs:
1. Each prompt is encoded, given a BOS token by policy, checked against the vocabulary and the context
   window (refused, or truncated from the left with a warning), and left-padded to the longest prompt.
   The attention mask marks the padding; the model counts positions over real tokens only, so a padded
   row computes what it would alone.
2. One prefill runs the prompts through the model into a KV cache sized for prompt + new tokens, and
   takes the logits of the last position only (the LM head over every prompt position is wasted work).
   With several samples per prompt the cache rows are then copied, not recomputed.
3. Each decode step feeds one token per row. Without padding no mask is passed, so the model takes
   its mask-free path. Sampling (gpt2.generate.sampling) picks the next tokens, one `.tolist()` brings
   them to Python, and each row's text, stop strings and end-of-text are checked there.
4. A row that finishes (end-of-text, a stop string, max_new_tokens) is dropped from the batch and its
   cache rows with it, so long tails do not pay for finished rows.

Every step yields a `TokenEvent` per row as it comes (streaming); the last event of a row carries the
finished `Generation` (text, finish reason, token counts). `generate` collects them. The sampling noise
of each row comes from its own generator seeded from (seed, prompt tokens, sample index), so a prompt
gives the same samples alone or in any batch. On CPU the model runs through gpt2.generate.fastpath
(oneDNN on pre-packed weights), about twice as fast per token as plain F.linear there.
"""

from __future__ import annotations

import codecs
import dataclasses
import hashlib
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from gpt2.errors import UserError
from gpt2.generate import sampling
from gpt2.generate.budget import fit_new_tokens
from gpt2.generate.fastpath import inference_view
from gpt2.model.gpt2 import GPT2LMHeadModel, KVCache
from gpt2.tokenizer.controls import check_controls

FinishReason = Literal["eot", "stop", "length"]
BosPolicy = Literal["never", "always", "if-empty"]
LongPromptPolicy = Literal["error", "truncate"]
Prompts = str | Sequence[str] | Sequence[Sequence[int]]


class PromptTruncatedWarning(UserWarning):
    """A prompt was cut from the left to fit the context window (SampleConfig.long_prompt='truncate')."""


@dataclass
class SampleConfig:
    """What to generate and how to pick each token. Defaults sample from the model's plain distribution."""

    max_new_tokens: int = 128
    """Most tokens to generate per sequence (end-of-text and stop strings may end it sooner)."""
    temperature: float = 1.0
    """Divide the logits by this before sampling; 0 means greedy (always the most likely token)."""
    top_k: int | None = None
    """Sample only among the k most likely tokens (ties with the k-th kept); None or 0: off."""
    top_p: float = 1.0
    """Nucleus sampling: the smallest set of most likely tokens whose mass reaches p; 1: off."""
    min_p: float = 0.0
    """Drop tokens less likely than min_p × the top token's probability; 0: off."""
    repetition_penalty: float = 1.0
    """> 1 lowers the logits of tokens already in the prompt or output (HF/CTRL rule); 1: off."""
    no_repeat_ngram_size: int = 0
    """Never repeat an n-gram of this size (prompt included); 0: off."""
    num_samples: int = 1
    """Sequences to generate per prompt."""
    seed: int | None = None
    """Seed of the sampling noise; None draws one (reported in each Generation, to reproduce it)."""
    stop: list[str] = field(default_factory=list)
    """Stop when the completion contains one of these strings; the text is cut before it."""
    stop_at_eot: bool = True
    """Stop at the end-of-text token (benchmarks turn this off to always get max_new_tokens)."""
    bos: BosPolicy = "never"
    """Prepend the BOS token (<|endoftext|> in GPT-2): never, always, or if-empty (empty prompts only)."""
    long_prompt: LongPromptPolicy = "error"
    """A prompt that does not fit n_positions - max_new_tokens: error, or truncate (keep its end)."""
    top_probs: int = 0
    """Record the k most likely next tokens and their probabilities at every step (0: off)."""
    guidance_scale: float = 1.0
    """Classifier-free guidance (HF's guidance_scale): each step's scores are u + scale × (c − u), c and u the
    log-probabilities after the prompt and after negative_prompt; > 1 pushes away from the negative; 1: off."""
    negative_prompt: str | list[int] | None = None
    """The context guidance pushes away from (text or token ids, e.g. the other rating's control token); it is
    fed the same new tokens as the prompt. None: the prompt's last token alone (as HF). Needs guidance_scale != 1."""

    def __post_init__(self) -> None:
        self.validate()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def validate(self) -> None:
        """Raise ValueError naming the first field with a value generation cannot use."""

        def bad(name: str, rule: str) -> ValueError:
            return UserError(f"{name} must be {rule}, got {getattr(self, name)!r}")

        for name in ("max_new_tokens", "num_samples"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise bad(name, "a positive integer")
        for name in ("no_repeat_ngram_size", "top_probs"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise bad(name, "an integer >= 0 (0 turns it off)")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 0):
            raise bad("top_k", "a positive integer, or 0/None for off")
        if not self.temperature >= 0:  # also catches NaN
            raise bad("temperature", ">= 0 (0 is greedy)")
        if not 0.0 < self.top_p <= 1.0:
            raise bad("top_p", "in (0, 1]")
        if not 0.0 <= self.min_p <= 1.0:
            raise bad("min_p", "in [0, 1]")
        if not self.repetition_penalty > 0:
            raise bad("repetition_penalty", "> 0 (1 is off)")
        if isinstance(self.guidance_scale, bool) or not 0 <= self.guidance_scale < float("inf"):
            raise bad("guidance_scale", "a finite number >= 0 (1 is off)")
        if self.negative_prompt is not None and self.guidance_scale == 1.0:
            raise UserError("negative_prompt is read only with classifier-free guidance: give guidance_scale "
                            "(CLI --guidance-scale), e.g. 1.5, or drop the negative prompt")
        if self.seed is not None and (not isinstance(self.seed, int) or self.seed < 0):
            raise bad("seed", "a non-negative integer or None")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise bad("stop", "a list of non-empty strings")
        if self.bos not in ("never", "always", "if-empty"):
            raise bad("bos", "'never', 'always' or 'if-empty'")
        if self.long_prompt not in ("error", "truncate"):
            raise bad("long_prompt", "'error' or 'truncate'")

    def replace(self, **changes: Any) -> SampleConfig:
        """A copy with some fields changed (validated); unknown names are a ValueError."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise UserError(f"unknown generation option(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)


@dataclass
class StepProbs:
    """The model's distribution at one step: the token picked, its probability, and the top candidates.

    Probabilities are the model's own (softmax of its logits), before penalties, temperature and filters.
    """

    token: int
    prob: float
    top: list[tuple[int, float]]


@dataclass
class Generation:
    """One finished sequence: the completion text, why it ended, and token counts."""

    text: str
    """The completion (prompt not included), cut before a stop string; end-of-text is not included."""
    tokens: list[int]
    """Every generated token id, including a final end-of-text or the tokens that formed a stop string."""
    finish_reason: FinishReason
    """eot (end-of-text token), stop (a stop string) or length (max_new_tokens reached)."""
    prompt_tokens: int
    """Tokens the model saw as the prompt (after BOS and truncation)."""
    prompt_index: int = 0
    sample_index: int = 0
    prompt: str | None = None
    """The prompt text as given (None for token-id prompts)."""
    truncated_tokens: int = 0
    """Prompt tokens dropped from the left to fit the context window."""
    seed: int | None = None
    """The seed this sequence's noise came from (None for greedy decoding)."""
    steps: list[StepProbs] | None = None
    """Per-step top candidates when SampleConfig.top_probs > 0."""

    @property
    def completion_tokens(self) -> int:
        return len(self.tokens)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["completion_tokens"] = self.completion_tokens
        if self.steps is None:
            d.pop("steps")
        return d


@dataclass(frozen=True)
class TokenEvent:
    """One new token of one sequence, as streaming yields it."""

    index: int
    """The sequence: prompt_index * num_samples + sample_index."""
    token: int
    text: str
    """New text that is safe to show now ('' while a UTF-8 character or a possible stop string is pending)."""
    finish_reason: FinishReason | None = None
    generation: Generation | None = None
    """Set on the sequence's last event."""
    probs: StepProbs | None = None


# --------------------------------------------------------------------------------------------- text
class _TextStream:
    """Incremental text of one sequence: UTF-8 across token boundaries, stop strings held back until known."""

    def __init__(self, stop: Sequence[str]) -> None:
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.stop = list(stop)
        self.text = ""
        self.sent = 0  # characters of self.text already emitted
        self.stopped = False

    def push(self, data: bytes, *, final: bool = False) -> str:
        """Add a token's bytes; return the text now safe to emit (and set .stopped on a stop string)."""
        self.text += self.decoder.decode(data, final=final)
        if self.stop:
            # A stop string can only start in the held-back tail (see below), so search from self.sent.
            hits = [i for i in (self.text.find(s, self.sent) for s in self.stop) if i >= 0]
            if hits:
                end = min(hits)
                delta, self.text, self.sent, self.stopped = self.text[self.sent : end], self.text[:end], end, True
                return delta
        hold = 0 if final else self._pending_stop_prefix()
        end = len(self.text) - hold
        delta, self.sent = self.text[self.sent : end], end
        return delta

    def _pending_stop_prefix(self) -> int:
        """Length of the longest tail of the unsent text that could still grow into a stop string."""
        tail = self.text[self.sent :]
        for k in range(min(len(tail), max((len(s) for s in self.stop), default=1) - 1), 0, -1):
            if any(s.startswith(tail[-k:]) for s in self.stop):
                return k
        return 0


@dataclass
class _Seq:
    """Bookkeeping of one sequence while it decodes."""

    prompt_index: int
    sample_index: int
    prompt_ids: list[int]
    prompt: str | None
    truncated: int
    seed: int | None
    text: _TextStream
    generator: torch.Generator | None = None
    tokens: list[int] = field(default_factory=list)
    steps: list[StepProbs] | None = None


# ------------------------------------------------------------------------------------------ prompts
def _eos_id(model: GPT2LMHeadModel, tokenizer: Any) -> int:
    """End-of-text: the tokenizer's <|endoftext|> when it has one, else the model config's eos_token_id."""
    if tokenizer is not None:
        try:
            return int(tokenizer.eot_token)
        except (ValueError, AttributeError):
            pass
    return int(model.config.eos_token_id)


def encode_prompt(tokenizer: Any, prompt: str | Sequence[int], *, bos: BosPolicy, bos_token_id: int
                  ) -> tuple[list[int], str | None]:
    """One prompt's token ids (the BOS policy applied) and its text (None for a token-id prompt)."""
    if isinstance(prompt, str):
        if tokenizer is None:
            raise UserError("text prompts need a tokenizer; pass one, or give token ids")
        # Special tokens written out in a prompt (e.g. <|endoftext|>, <|stars=5|>) mean the token itself;
        # a control token with a value the training data lacked is refused, not read as text.
        check_controls(tokenizer, prompt)
        ids, text = list(tokenizer.encode(prompt, allowed_special="all")), prompt
    else:
        ids, text = [int(t) for t in prompt], None
    if bos == "always" or (bos == "if-empty" and not ids):
        ids = [bos_token_id, *ids]
    return ids, text


def prepare_prompts(
    model: GPT2LMHeadModel, tokenizer: Any, prompts: Prompts, config: SampleConfig
) -> list[tuple[list[int], str | None, int]]:
    """Encode and check prompts: (token ids, prompt text or None, tokens truncated) per prompt."""
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise UserError("no prompts given")
    if isinstance(prompts[0], int):
        raise UserError("token-id prompts go in a list of lists, e.g. [[464, 3290]], one list per prompt")
    cfg = model.config
    fit_new_tokens(cfg.n_positions, requested=config.max_new_tokens, default=0, name="max_new_tokens")
    limit = cfg.n_positions - config.max_new_tokens
    out = []
    for i, p in enumerate(prompts):
        ids, text = encode_prompt(tokenizer, p, bos=config.bos, bos_token_id=cfg.bos_token_id)
        if not ids:
            raise UserError(f"prompt {i} is empty and the BOS policy is 'never': a GPT-2 needs at least one "
                             "token to condition on; give a prompt, or set bos='if-empty' (CLI: --bos if-empty) "
                             "to start from <|endoftext|>")
        bad = [t for t in ids if not 0 <= t < cfg.vocab_size]
        if bad:
            raise UserError(f"prompt {i} holds token id {bad[0]}, outside the model's vocabulary "
                             f"(vocab_size={cfg.vocab_size}): the tokenizer does not match the model")
        truncated = 0
        if len(ids) > limit:
            if config.long_prompt == "error":
                raise UserError(
                    f"prompt {i} has {len(ids)} tokens, but with max_new_tokens={config.max_new_tokens} the "
                    f"model's context of {cfg.n_positions} tokens holds at most {limit}: shorten it, lower "
                    "max_new_tokens, or truncate it from the left (long_prompt='truncate', CLI --truncate)"
                )
            truncated = len(ids) - limit
            ids = ids[truncated:]
            warnings.warn(f"prompt {i} has {len(ids) + truncated} tokens; kept its last {limit} so that it and "
                          f"max_new_tokens={config.max_new_tokens} fit n_positions={cfg.n_positions}",
                          PromptTruncatedWarning, stacklevel=3)
        out.append((ids, text, truncated))
    return out


def prepare_negatives(model: GPT2LMHeadModel, tokenizer: Any, prepared: list[tuple[list[int], str | None, int]],
                      config: SampleConfig) -> list[list[int]] | None:
    """The negative context of each prompt under guidance (None without): config.negative_prompt encoded as a
    prompt is (same BOS policy, same context check), or each prompt's last token when there is none."""
    if config.guidance_scale == 1.0:
        return None
    if config.negative_prompt is None:
        return [ids[-1:] for ids, _, _ in prepared]
    try:
        [(ids, _, _)] = prepare_prompts(model, tokenizer, [config.negative_prompt], config)
    except UserError as e:
        raise UserError(f"negative prompt: {e}") from None
    return [list(ids) for _ in prepared]


def row_generator(seed: int, prompt_ids: Sequence[int], sample_index: int, *, device: torch.device | str = "cpu"
                  ) -> torch.Generator:
    """The noise source of one sequence: a function of the seed, the prompt's tokens and the sample index only."""
    key = f"{seed}|{sample_index}|{','.join(map(str, prompt_ids))}".encode()
    g = torch.Generator(device=device)
    g.manual_seed(int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1)
    return g


def next_logits(model: GPT2LMHeadModel, input_ids: torch.Tensor, *, attention_mask: torch.Tensor | None = None,
                kv_cache: KVCache | None = None) -> torch.Tensor:
    """(B, T) ids → (B, vocab_size) logits of the last position only (skips the LM head elsewhere)."""
    x = model.transformer(input_ids, attention_mask=attention_mask, kv_cache=kv_cache)  # (B, T, C)
    return model.lm_head(x[:, -1])[:, : model.config.vocab_size]  # (B, V)


# ------------------------------------------------------------------------------------------- engine
def _resolve(config: SampleConfig | None, overrides: dict[str, Any]) -> SampleConfig:
    config = config or SampleConfig()
    return config.replace(**overrides) if overrides else config


def stream(
    model: GPT2LMHeadModel,
    tokenizer: Any,
    prompts: Prompts,
    config: SampleConfig | None = None,
    *,
    batch_size: int | None = None,
    pack: bool = True,
    **overrides: Any,
) -> Iterator[TokenEvent]:
    """Generate for every prompt, yielding each new token as it comes (see TokenEvent).

    prompts: a string, a list of strings, or a list of token-id lists (tokenizer may then be None).
    config and/or keyword overrides (max_new_tokens=..., temperature=..., ...) set the SampleConfig.
    batch_size: prompts per batch (None: all at once); prompts are grouped by length so batches carry
    little padding, and events name their sequence by index, so the order of results is unchanged.
    pack: use gpt2.generate.fastpath's packed weights on CPU.
    Prompts are checked here, before the first token, so bad input fails at the call.
    """
    config = _resolve(config, overrides)
    if config.stop and tokenizer is None:
        raise UserError("stop strings need a tokenizer to read the text; pass one")
    prepared = prepare_prompts(model, tokenizer, prompts, config)
    negatives = prepare_negatives(model, tokenizer, prepared, config)
    if batch_size is not None and batch_size < 1:
        raise UserError(f"batch_size must be a positive integer, got {batch_size}")
    seed = config.seed
    if seed is None and not config.greedy:
        seed = int.from_bytes(os.urandom(8), "little") >> 1
    order = list(range(len(prepared)))
    if batch_size is not None and batch_size < len(prepared):
        order.sort(key=lambda i: len(prepared[i][0]))
    batches = [order[i : i + (batch_size or len(order))] for i in range(0, len(order), batch_size or len(order))]
    return _stream_batches(model, tokenizer, prepared, negatives, batches, config, seed, pack)


def _stream_batches(
    model: GPT2LMHeadModel,
    tokenizer: Any,
    prepared: list[tuple[list[int], str | None, int]],
    negatives: list[list[int]] | None,
    batches: list[list[int]],
    config: SampleConfig,
    seed: int | None,
    pack: bool,
) -> Iterator[TokenEvent]:
    view = inference_view(model, pack=pack)  # packed once per model (cached), on the first token
    for batch in batches:
        yield from _decode(view, tokenizer, [(i, *prepared[i]) for i in batch], config, seed,
                           negatives=None if negatives is None else [negatives[i] for i in batch])


def generate(
    model: GPT2LMHeadModel,
    tokenizer: Any,
    prompts: Prompts,
    config: SampleConfig | None = None,
    *,
    batch_size: int | None = None,
    pack: bool = True,
    **overrides: Any,
) -> list[Generation]:
    """Complete every prompt; returns num_samples Generations per prompt, prompt-major (see `stream`)."""
    results: dict[int, Generation] = {}
    for event in stream(model, tokenizer, prompts, config, batch_size=batch_size, pack=pack, **overrides):
        if event.generation is not None:
            results[event.index] = event.generation
    return [results[i] for i in sorted(results)]


def _new_seqs(batch: list[tuple[int, list[int], str | None, int]], config: SampleConfig, seed: int | None, *,
              device: torch.device) -> list[_Seq]:
    """One sequence per sample of each prompt, with its own RNG when seeded."""
    n_samples = config.num_samples
    seqs = []
    for prompt_index, ids, text, truncated in batch:
        for s in range(n_samples):
            seqs.append(_Seq(prompt_index, s, ids, text, truncated, seed, _TextStream(config.stop)))
            if seed is not None:
                seqs[-1].generator = row_generator(seed, ids, s, device=device)
            if config.top_probs:
                seqs[-1].steps = []
    return seqs


def _prefill(model: GPT2LMHeadModel, prompts: list[list[int]], seqs: list[_Seq],
             config: SampleConfig, *, P: int, cache_len: int, padded: bool,
             ) -> tuple[torch.Tensor, torch.Tensor, KVCache, torch.Tensor | None]:
    """Run the left-padded prompts through the model once: (the next-token logits of every sample's row,
    the attention mask (1 = real token), the KV cache, the presence mask for the repetition penalty).
    Under guidance `prompts` is the batch's prompts then their negative contexts, and so are the rows."""
    cfg = model.config
    device = model.transformer.wte.weight.device
    dtype = model.transformer.wte.weight.dtype
    n_samples = config.num_samples
    with torch.inference_mode():
        input_ids = torch.zeros(len(prompts), P, dtype=torch.long, device=device)  # (n_prompts, P), left-padded
        mask = torch.ones(len(prompts), max(cache_len, P), dtype=torch.long, device=device)  # 1 = real token
        for b, ids in enumerate(prompts):
            input_ids[b, P - len(ids) :] = torch.tensor(ids, device=device)
            mask[b, : P - len(ids)] = 0
        cache = KVCache(cfg, batch_size=len(prompts), max_len=max(cache_len, P), device=device, dtype=dtype)
        logits = next_logits(model, input_ids, attention_mask=mask[:, :P] if padded else None, kv_cache=cache)
        if n_samples > 1:
            # Every sample of a prompt starts from the same prefill: copy its cache rows, do not recompute.
            expand = torch.arange(len(prompts), device=device).repeat_interleave(n_samples)  # (N,)
            cache.reorder(expand)
            logits, mask = logits[expand], mask[expand]
        present = None
        if config.repetition_penalty != 1.0:
            present = sampling.presence_mask([s.prompt_ids for s in seqs], cfg.vocab_size, device=device)
    return logits, mask, cache, present


def _pick(logits: torch.Tensor, seqs: list[_Seq], active: list[int], config: SampleConfig,
          present: torch.Tensor | None, *, V: int) -> tuple[torch.Tensor, list[int], list[Any] | None, list[float]]:
    """One decoding step's choice for every active row: (the ids (B,), the same as a list, the top
    probabilities when asked for, the chosen tokens' probabilities); marks them present (in place).
    Under guidance `logits` holds 2B rows, the prompts' then their negative contexts'."""
    device = logits.device
    chosen: list[float] = []
    logits = logits[:, :V].float()  # (B, V); float32 for the sampling arithmetic under bf16 weights
    scores = logits
    if config.guidance_scale != 1.0:
        logits, negative = logits[: len(active)], logits[len(active) :]  # (B, V) each
        scores = sampling.apply_guidance(logits, negative, config.guidance_scale)
    processed = sampling.process_logits(
        scores,
        temperature=config.temperature,
        top_k=config.top_k,
        top_p=config.top_p,
        min_p=config.min_p,
        repetition_penalty=config.repetition_penalty,
        present=present,
        no_repeat_ngram_size=config.no_repeat_ngram_size,
        histories=[seqs[r].prompt_ids + seqs[r].tokens for r in active]
        if config.no_repeat_ngram_size else None,
    )
    noise = None
    if not config.greedy:
        noise = sampling.gumbel_noise([seqs[r].generator for r in active], V, device=device)
    next_ids = sampling.pick_tokens(processed, noise=noise)  # (B,)
    picked = next_ids.tolist()  # the one host sync of the step
    top = None
    if config.top_probs:
        probs = torch.softmax(logits, dim=-1)  # (B, V)
        top_p_, top_i = probs.topk(min(config.top_probs, V), dim=-1)  # (B, k)
        chosen = probs.gather(1, next_ids[:, None])[:, 0].tolist()
        top = [list(zip(i, p)) for i, p in zip(top_i.tolist(), top_p_.tolist())]
    if present is not None:
        present[torch.arange(len(active), device=device), next_ids] = True
    return next_ids, picked, top, chosen


def _advance(seqs: list[_Seq], active: list[int], picked: list[int], top: list[Any] | None, chosen: list[float],
             config: SampleConfig, *, tokenizer: Any, eos: int | None) -> tuple[list[TokenEvent], list[int]]:
    """Append each active row's token and its text; (the events to yield, the rows that go on)."""
    n_samples = config.num_samples
    events, keep = [], []
    for j, r in enumerate(active):
        seq, tok = seqs[r], picked[j]
        seq.tokens.append(tok)
        step = None
        if top is not None:
            step = StepProbs(tok, chosen[j], top[j])
            seq.steps.append(step)  # type: ignore[union-attr]
        reason: FinishReason | None = None
        if config.stop_at_eot and tok == eos:
            reason, delta = "eot", seq.text.push(b"", final=True) if tokenizer is not None else ""
        else:
            delta = seq.text.push(tokenizer.decode_single_token_bytes(tok)) if tokenizer is not None else ""
            if seq.text.stopped:
                reason = "stop"
            elif len(seq.tokens) >= config.max_new_tokens:
                reason = "length"
                if tokenizer is not None:
                    delta += seq.text.push(b"", final=True)
                    reason = "stop" if seq.text.stopped else reason
        gen = None
        if reason is not None:
            gen = Generation(text=seq.text.text, tokens=seq.tokens, finish_reason=reason,
                             prompt_tokens=len(seq.prompt_ids), prompt_index=seq.prompt_index,
                             sample_index=seq.sample_index, prompt=seq.prompt, truncated_tokens=seq.truncated,
                             seed=seq.seed, steps=seq.steps)
        else:
            keep.append(j)
        events.append(TokenEvent(seq.prompt_index * n_samples + seq.sample_index, tok, delta, reason, gen, step))
    return events, keep


def _decode(
    model: GPT2LMHeadModel,
    tokenizer: Any,
    batch: list[tuple[int, list[int], str | None, int]],
    config: SampleConfig,
    seed: int | None,
    *,
    negatives: list[list[int]] | None = None,
) -> Iterator[TokenEvent]:
    """Decode one batch of prompts (prompt index, ids, text, truncated) to the end of every sequence.

    With negatives (classifier-free guidance) the batch carries a second row per sequence, its negative
    context, after all the prompts' rows: fed the same tokens, dropped with it."""
    cfg = model.config
    device = model.transformer.wte.weight.device
    eos = _eos_id(model, tokenizer)
    # The tokenizer may know fewer ids than the model scores (a padded vocabulary): never pick those.
    V = min(cfg.vocab_size, tokenizer.n_vocab) if tokenizer is not None else cfg.vocab_size
    seqs = _new_seqs(batch, config, seed, device=device)
    prompts = [ids for _, ids, _, _ in batch] + (negatives or [])
    lengths = [len(ids) for ids in prompts]
    P = max(lengths)
    cache_len = P + config.max_new_tokens - 1  # the last new token is never fed back
    padded = min(lengths) < P

    logits, mask, cache, present = _prefill(model, prompts, seqs, config, P=P, cache_len=cache_len, padded=padded)
    halves = 1 if negatives is None else 2  # rows: [sequences...] or [sequences..., their negative contexts...]

    active = list(range(len(seqs)))  # index into seqs of each batch row
    while True:
        with torch.inference_mode():
            next_ids, picked, top, chosen = _pick(logits, seqs, active, config, present, V=V)

        events, keep = _advance(seqs, active, picked, top, chosen, config, tokenizer=tokenizer, eos=eos)
        yield from events
        if not keep:
            return

        with torch.inference_mode():
            if len(keep) < len(active):
                # Drop finished rows: cache, mask and per-row state shrink together (a negative context with its row).
                idx = torch.tensor(keep, device=device)
                rows = torch.cat([idx + h * len(active) for h in range(halves)])  # (halves × len(keep),)
                cache.reorder(rows)
                mask, next_ids = mask[rows], next_ids[idx]
                present = present[idx] if present is not None else None
                active = [active[j] for j in keep]
                padded = padded and bool((mask[:, :P] == 0).any())
            past = cache.pos
            feed = next_ids.repeat(halves)  # (halves × B,): a negative context reads the same new token
            logits = next_logits(model, feed[:, None], kv_cache=cache,
                                 attention_mask=mask[:, : past + 1] if padded else None)
