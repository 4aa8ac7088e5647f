"""Continuous batching: one thread owns the model; sequences join the running batch after their own
prefill and leave it the moment they finish.

    python -m gpt2 serve path/to/checkpoint --max-batch 32 --max-queue 128   # this scheduler behind the HTTP API

    sched = Scheduler(model, tokenizer, max_batch=8)          # starts its thread
    job = Job([[464, 3290]], SeqParams(max_tokens=20, temperature=0), n=1, emit=print)
    sched.submit(job)                                          # emit() receives lists of Piece, step by step

How a step runs (`Scheduler._loop`):
1. Cancelled jobs (a client that went away) lose their rows first, so a disconnect frees its slot
   before the next decode step.
2. Waiting prompts are admitted while rows are free. The prompts admitted together are prefilled in one
   forward, left-padded and grouped by length so that padding stays small (a burst of 16 requests costs
   one pass over the weights, not 16); each prompt's keys/values are then copied into the shared
   `BatchKVCache` and its last logits join the batch's logits. A prompt with n samples is prefilled once
   and copied into n rows. With the prefix cache (gpt2.serve.prefix_cache) a prompt whose first blocks
   were seen before (an earlier turn, a shared header) starts from their cached keys/values and prefills
   only the rest; its own whole blocks are cached after the prefill, and a row's whole sequence when it
   leaves the batch (the next turn of a conversation begins with it).
3. Every row's next token is picked from its logits with the engine's own sampling functions
   (gpt2.generate.sampling), rows grouped by their sampling settings; the noise of a row comes from the
   engine's `row_generator(seed, prompt, sample index)`, so a seeded request draws the same numbers
   whatever else is in the batch, and the same as `gpt2 generate --seed`.
4. Text, stop strings and end-of-text are handled per row by the engine's incremental text stream;
   finished rows leave the cache at once (the last row is moved into the hole: O(one row)).
5. One decode forward runs every remaining row's new token through the model.

With LoRA adapters (`gpt2 serve BASE --adapter NAME=DIR`), each job names its adapter's slot and every
forward (prefill and decode) is told the slot of each of its rows (gpt2.model.multi_lora): rows of
different adapters share one batch, and a server without adapters runs the model as it is.

The shared cache keeps rows right-aligned at one write position `pos` (row r's keys fill
[pos - length_r, pos)); the attention mask hides everything left of a row's start, and the model counts
positions over unmasked tokens, so a row computes what it would alone. `pos` only moves when needed:
right when a prompt longer than `pos` joins, left (dropping columns every row has masked) or the
capacity doubles when the cache is full.

What "does not depend on the batch" means here: the sampling noise and every per-row control are
exact functions of the request; the forward passes (prefill and decode) run the row inside a larger
matrix product, whose float rounding may differ from a batch of one in the last bits. Tokens are identical unless two
candidates tie to within that rounding (tests/serve/test_scheduler.py checks identical tokens).
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from gpt2.errors import UserError
from gpt2.generate import sampling
from gpt2.generate.engine import _TextStream, row_generator
from gpt2.generate.fastpath import inference_view, shared_copy
from gpt2.model.gpt2 import GPT2LMHeadModel, KVCache
from gpt2.model.multi_lora import Adapter, adapter_slots, attach_adapters
from gpt2.serve.prefix_cache import BLOCK_SIZE, Hit, PrefixCache

log = logging.getLogger("gpt2.serve")


class QueueFull(Exception):
    """No room for the request's sequences: running + waiting would exceed max_batch + max_queue."""


@dataclass
class SeqParams:
    """How one request's sequences are decoded (already validated by the HTTP layer)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None
    """Report each new token's log-probability and this many top alternatives (None: no log-probabilities)."""
    prompt_logprobs: bool = False
    """Also report the log-probability of every prompt token (echo with logprobs)."""
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def warper_key(self) -> tuple:
        """Rows with equal keys are processed together in one call of sampling.process_logits."""
        return (self.temperature, self.top_k, self.top_p, self.min_p)


@dataclass
class TokenLogprob:
    """One token with its log-probability under the model and the top alternatives (token, logprob)."""

    token: int
    logprob: float | None
    top: list[tuple[int, float]] | None


@dataclass
class Piece:
    """What one step produced for one choice of a job; the last piece of a choice has finish_reason set."""

    choice: int
    text: str
    token: TokenLogprob | None = None
    """The new token (None for a max_tokens=0 request, which only scores its prompt)."""
    finish_reason: str | None = None
    """'stop' (end-of-text or a stop string) or 'length'."""
    completion_tokens: int = 0
    prompt_logprobs: list[TokenLogprob] | None = None
    """On a choice's first piece, when SeqParams.prompt_logprobs: one entry per prompt token."""


class Job:
    """One HTTP request: its prompts (token ids), n samples of each, and where its output goes.

    emit(items) is called from the scheduler thread with a list of Piece (one step's output) or with an
    exception (the model failed). Choice i is prompt i // n, sample i % n, as OpenAI numbers choices.
    """

    def __init__(self, prompts: Sequence[Sequence[int]], params: SeqParams, *, n: int = 1,
                 emit: Callable[[Any], None], adapter: int = 0) -> None:
        self.prompts = [list(p) for p in prompts]
        self.params, self.n, self.emit = params, n, emit
        self.adapter = adapter  # the LoRA adapter its rows apply: 0 the base, i the scheduler's i-th adapter
        self.cancelled = False
        self.cached_tokens = [0] * len(self.prompts)  # per prompt: tokens taken from the prefix cache (set at prefill)
        self.seed = params.seed if params.seed is not None or params.greedy else \
            int.from_bytes(os.urandom(8), "little") >> 1

    @property
    def n_sequences(self) -> int:
        return len(self.prompts) * self.n

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class _Row:
    """One running sequence."""

    job: Job
    choice: int
    prompt: list[int]
    text: _TextStream
    generator: torch.Generator | None
    tokens: list[int] = field(default_factory=list)
    counts: collections.Counter | None = None  # output-token counts, for presence/frequency penalties
    present: torch.Tensor | None = None  # (1, V) bool: prompt + output tokens, for the repetition penalty
    prompt_lp: list[TokenLogprob] | None = None  # sent with the row's first piece


# --------------------------------------------------------------------------------------------- cache
class BatchKVCache:
    """Keys/values of up to max_rows sequences of different lengths, right-aligned at one write position.

    Duck-types gpt2.model.gpt2.KVCache (pos, max_len, update, advance) over the first `rows` rows, so the
    model's forward uses it as it is. Layout (n_layer, max_rows, n_head, capacity, head_dim).
    """

    def __init__(self, config: Any, *, max_rows: int, device: torch.device, dtype: torch.dtype,
                 capacity: int = 64) -> None:
        self.n_positions = config.n_positions
        capacity = min(capacity, self.n_positions)
        shape = (config.n_layer, max_rows, config.n_head, capacity, config.head_dim)
        # Zeros, not empty: masked keys must still be finite (0 × NaN would poison the attention output).
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.rows = 0
        self.pos = 0
        self.lengths: list[int] = []  # real tokens held by each row

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store (rows, n_head, T, head_dim) new keys/values at [pos, pos + T); return every key/value so far."""
        end = self.pos + k.shape[2]
        self.k[layer_idx, : self.rows, :, self.pos : end] = k
        self.v[layer_idx, : self.rows, :, self.pos : end] = v
        return self.k[layer_idx, : self.rows, :, :end], self.v[layer_idx, : self.rows, :, :end]

    def advance(self, n: int) -> None:
        self.pos += n
        self.lengths = [n_ + n for n_ in self.lengths]

    def attention_mask(self) -> torch.Tensor:
        """(rows, pos + 1) 1/0 mask for a decode step: each row's real tokens plus the new one."""
        start = torch.tensor([self.pos - n for n in self.lengths], device=self.k.device)  # (rows,)
        cols = torch.arange(self.pos + 1, device=self.k.device)  # (pos + 1,)
        return (cols[None, :] >= start[:, None]).long()  # (rows, pos + 1)

    def add_row(self, k: torch.Tensor, v: torch.Tensor) -> int:
        """Append a sequence from a prefill cache, k/v (n_layer, n_head, L, head_dim); returns its row."""
        L = k.shape[2]
        if L > self.pos:
            self._shift(L - self.pos)
        r = self.rows
        self.k[:, r, :, self.pos - L : self.pos] = k
        self.v[:, r, :, self.pos - L : self.pos] = v
        self.rows += 1
        self.lengths.append(L)
        return r

    def remove_row(self, r: int) -> None:
        """Drop row r; the last row moves into its place (callers mirror that move in their own lists)."""
        last = self.rows - 1
        if r != last:
            self.k[:, r, :, : self.pos] = self.k[:, last, :, : self.pos]
            self.v[:, r, :, : self.pos] = self.v[:, last, :, : self.pos]
            self.lengths[r] = self.lengths[last]
        self.lengths.pop()
        self.rows -= 1
        if self.rows == 0:
            self.pos = 0

    def make_room(self) -> None:
        """Make sure one more column fits: drop columns every row has masked, or grow the capacity."""
        if self.pos + 1 <= self.max_len:
            return
        slack = self.pos - max(self.lengths, default=0)  # leading columns no row uses
        if slack > 0 and (slack >= self.max_len // 4 or self.max_len >= self.n_positions):
            self._shift(-slack)
        else:
            self._grow(min(self.n_positions, 2 * self.max_len))
        assert self.pos + 1 <= self.max_len, "a row outgrew n_positions (max_tokens was not checked)"

    def _shift(self, d: int) -> None:
        """Move every row's keys d columns right (d > 0, to fit a longer prompt) or left (d < 0)."""
        new_pos = self.pos + d
        if new_pos > self.max_len:
            self._grow(min(self.n_positions, max(new_pos + 1, 2 * self.max_len)))
        if self.rows:
            src = slice(max(0, -d), self.pos)
            dst = slice(max(0, d), new_pos)
            for t in (self.k, self.v):
                t[:, : self.rows, :, dst] = t[:, : self.rows, :, src].clone()
        self.pos = new_pos

    def _grow(self, capacity: int) -> None:
        assert capacity >= self.pos, "the cache cannot shrink below its filled columns"
        for name in ("k", "v"):
            old = getattr(self, name)
            new = old.new_zeros((*old.shape[:3], capacity, old.shape[4]))
            new[:, :, :, : self.pos] = old[:, :, :, : self.pos]
            setattr(self, name, new)


# ----------------------------------------------------------------------------------------- scheduler
PREFILL_TOKENS = 2048
"""Most (padded) tokens in one prefill forward: bounds its memory and the pause it puts on decoding."""
PREFIX_CACHE_MB = 256.0
"""The prefix cache's default budget (`gpt2 serve --prefix-cache-mb`): 3,500 tokens of GPT-2 124M's keys and
values in fp32 (72 KiB a token), three and a half full 1,024-token contexts."""


def _salt(adapter: int) -> bytes:
    """The prefix cache's salt for an adapter's rows: keys/values under adapter i are not the base's (0: none)."""
    return b"" if adapter == 0 else f"lora:{adapter}".encode()


def _prefill_groups(units: list[tuple[Job, int]], cached: dict[tuple[Job, int], int] | None = None, *,
                    n_positions: int | None = None) -> list[list[tuple[Job, int]]]:
    """Prompts admitted together, grouped for batched prefill by the tokens they still need (their length less
    what the prefix cache holds, `cached`): so that a group's padding stays under a quarter of its new tokens,
    at most PREFILL_TOKENS padded new tokens per group, and its cache (longest past + longest new part per
    row) within 2 × PREFILL_TOKENS positions and n_positions. With nothing cached that bound never binds."""
    cached = cached or {}

    def new(u: tuple[Job, int]) -> int:
        return len(u[0].prompts[u[1]]) - cached.get(u, 0)

    groups: list[list[tuple[Job, int]]] = []
    real = past = 0
    for unit in sorted(units, key=new):
        L, c = new(unit), cached.get(unit, 0)
        if groups:
            G, width = len(groups[-1]) + 1, max(past, c) + L
            if G * L <= min(PREFILL_TOKENS, 1.25 * (real + L)) and G * width <= 2 * PREFILL_TOKENS and \
                    width <= (n_positions or width):
                groups[-1].append(unit)
                real, past = real + L, max(past, c)
                continue
        groups.append([unit])
        real, past = L, c
    return groups


class Scheduler:
    """Owns the model in one thread; see the module docstring for the step."""

    def __init__(self, model: GPT2LMHeadModel, tokenizer: Any, *, max_batch: int = 32, max_queue: int = 128,
                 pack: bool = True, step_delay: float = 0.0, start: bool = True,
                 prefix_cache_mb: float = PREFIX_CACHE_MB, prefix_block: int = BLOCK_SIZE,
                 adapters: Sequence[Adapter] = ()) -> None:
        """max_batch: rows decoded together; max_queue: sequences that may wait for a row beyond those.
        step_delay: seconds to sleep after each decode step (tests use it to watch a stream grow).
        start=False runs no thread: the caller drives the scheduler with step_once() (tests do).
        prefix_cache_mb: the prefix cache's budget in MiB (0: no prefix cache); prefix_block: its block size.
        adapters: LoRA adapters of this base (gpt2.model.lora.read_adapter), served batched: a Job's
        `adapter` i >= 1 applies the i-th (gpt2.model.multi_lora); `model` itself is left as it is."""
        if max_batch < 1 or max_queue < 0:
            raise UserError(f"--max-batch must be >= 1 and --max-queue >= 0, got {max_batch} and {max_queue}")
        if not prefix_cache_mb >= 0:  # NaN too
            raise UserError(f"--prefix-cache-mb must be >= 0 (0 turns the prefix cache off), got {prefix_cache_mb}")
        self.prefix = PrefixCache(budget_bytes=int(prefix_cache_mb * 2**20), block_size=prefix_block) \
            if prefix_cache_mb > 0 else None
        self.n_adapters = len(adapters)
        if adapters:  # on a copy sharing the base's weights; without adapters the model runs untouched
            model = attach_adapters(shared_copy(model), adapters)
        self.model = inference_view(model, pack=pack)
        self.slots = adapter_slots(self.model) if adapters else None
        self.tokenizer = tokenizer
        self.config = model.config
        self.max_batch, self.max_queue, self.step_delay = max_batch, max_queue, step_delay
        self.device = model.transformer.wte.weight.device
        # The tokenizer may know fewer ids than the model scores (a padded vocabulary): never pick those.
        self.V = min(self.config.vocab_size, tokenizer.n_vocab)
        self.eos = int(tokenizer.eot_token) if getattr(tokenizer, "eot_token", None) is not None \
            else int(self.config.eos_token_id)
        self.cache = BatchKVCache(self.config, max_rows=max_batch, device=self.device,
                                  dtype=model.transformer.wte.weight.dtype)
        self.rows: list[_Row] = []
        self.logits: torch.Tensor | None = None  # (rows, V): each row's next-token logits
        self.waiting: collections.deque[tuple[Job, int]] = collections.deque()  # (job, prompt index)
        self.inflight = 0  # sequences running or waiting
        self._admitting: list[Job] = []
        self._hits: dict[tuple[Job, int], Hit] = {}  # during _admit: the prefix-cache blocks each prompt starts from
        # Counters since start (GET /health shows them): decode steps, tokens generated, prompts prefilled, rows
        # dropped for a cancelled job, requests accepted, requests refused as the queue was full, jobs
        # cancelled (a client that went away before its job finished), prompt tokens prefilled, sequences
        # finished by reason, and the prefix cache's queries and hits in tokens (vLLM counts them so).
        self.stats = {"steps": 0, "tokens": 0, "prefills": 0, "cancelled": 0, "requests": 0, "rejected": 0,
                      "cancelled_jobs": 0, "prompt_tokens": 0, "finished_stop": 0, "finished_length": 0,
                      "prefix_cache_queries": 0, "prefix_cache_hits": 0}
        self._lock = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="gpt2-serve-scheduler", daemon=True)
        if start:
            self._thread.start()

    # ------------------------------------------------------------------ called from other threads
    def submit(self, job: Job) -> None:
        """Queue a job's prompts; raise QueueFull when its sequences do not fit."""
        if job.n > self.max_batch:
            raise ValueError(f"n={job.n} samples exceed the server's batch of {self.max_batch} rows")
        assert 0 <= job.adapter <= self.n_adapters, f"adapter {job.adapter} of {self.n_adapters}"
        with self._lock:
            if self.inflight + job.n_sequences > self.max_batch + self.max_queue:
                self.stats["rejected"] += 1
                raise QueueFull(f"{self.inflight} sequences are running or waiting and this request adds "
                                f"{job.n_sequences} (room for {self.max_batch} running + {self.max_queue} waiting)")
            self.inflight += job.n_sequences
            self.waiting.extend((job, i) for i in range(len(job.prompts)))
            self.stats["requests"] += 1
            self._lock.notify()

    def cancel(self, job: Job) -> None:
        """Stop a job (its client went away): its rows leave before the next decode step."""
        with self._lock:
            if not job.cancelled:
                self.stats["cancelled_jobs"] += 1
            job.cancel()
            self._lock.notify()

    def load(self) -> dict[str, int]:
        """Sequences running (admitted, or being admitted) and waiting, the rows held in the KV cache, its
        capacity in positions, the prefix cache's bytes, budget and evicted blocks, and the counters in `stats`."""
        with self._lock:
            waiting = sum(job.n for job, _ in self.waiting)
            prefix = self.prefix
            return {"running": self.inflight - waiting, "waiting": waiting, "cache_rows": self.cache.rows,
                    "cache_capacity": self.cache.max_len, "prefix_cache_bytes": prefix.bytes if prefix else 0,
                    "prefix_cache_budget": prefix.budget if prefix else 0,
                    "prefix_cache_evictions": prefix.evicted if prefix else 0, **self.stats}

    def close(self) -> None:
        with self._lock:
            self._stop = True
            self._lock.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def step_once(self) -> None:
        """One iteration of the loop (drop cancelled, admit, one step), for a scheduler made with start=False."""
        assert not self._thread.is_alive(), "the scheduler thread is running: it owns the model"
        with torch.inference_mode():
            self._drop_cancelled()
            self._admit()
            if self.rows:
                self._step()

    # --------------------------------------------------------------------------- scheduler thread
    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self._lock:
                while not self._stop and not self.rows and not self.waiting:
                    self._lock.wait()
                if self._stop:
                    return
            try:
                with torch.inference_mode():
                    self._drop_cancelled()
                    self._admit()
                    if self.rows:
                        self._step()
            except Exception as e:  # a bug or an OOM: fail the jobs in flight, keep serving the next ones
                log.error("scheduler step failed:\n%s", traceback.format_exc())
                self._fail_all(e)
            if self.step_delay and self.rows:
                time.sleep(self.step_delay)

    def _release(self, n: int) -> None:
        with self._lock:
            self.inflight -= n

    def _drop_cancelled(self) -> None:
        with self._lock:
            gone = [(job, i) for job, i in self.waiting if job.cancelled]
            for item in gone:
                self.waiting.remove(item)
        if gone:
            self._release(sum(job.n for job, _ in gone))
        dropped = [r for r, row in enumerate(self.rows) if row.job.cancelled]
        for r in reversed(dropped):
            self._remove(r)
        self.stats["cancelled"] += len(dropped) + sum(job.n for job, _ in gone)

    def _remove(self, r: int) -> None:
        """Row r leaves: cache, row list and logits move the last row into its place together. Its keys and
        values go to the prefix cache first (the next turn of a conversation starts with them)."""
        self._remember(r)
        self.cache.remove_row(r)
        last = self.rows.pop()
        if r < len(self.rows):
            self.rows[r] = last
            if self.logits is not None:
                self.logits[r] = self.logits[len(self.rows)]
        if self.logits is not None:
            self.logits = self.logits[: len(self.rows)]
        self._release(1)

    def _fail_all(self, error: Exception) -> None:
        jobs = {id(row.job): row.job for row in self.rows}
        for job in self._admitting:
            jobs[id(job)] = job
        self._admitting, self._hits = [], {}
        with self._lock:
            for job, _ in self.waiting:
                jobs[id(job)] = job
            self.waiting.clear()
            self.inflight = 0
        for job in jobs.values():
            job.emit(error)
        self.rows, self.logits = [], None
        self.cache.rows, self.cache.pos, self.cache.lengths = 0, 0, []

    # ----------------------------------------------------------------------------------- admission
    def _admit(self) -> None:
        """Prefill the waiting prompts whose samples fit in the free rows (first come, first served)."""
        units: list[tuple[Job, int]] = []
        free = self.max_batch - len(self.rows)
        with self._lock:
            while self.waiting and self.waiting[0][0].n <= free:
                job, i = self.waiting.popleft()
                if job.cancelled:
                    self.inflight -= job.n
                    self.stats["cancelled"] += job.n
                    continue
                units.append((job, i))
                free -= job.n
        self._admitting = [job for job, _ in units]  # so a failing prefill still reaches its jobs (_fail_all)
        self._hits = {unit: self._lookup(*unit) for unit in units}  # what each prompt's prefill starts from
        cached = {unit: hit.tokens for unit, hit in self._hits.items()}
        for group in _prefill_groups(units, cached, n_positions=self.config.n_positions):
            self._prefill(group)
        self._admitting, self._hits = [], {}

    def _lookup(self, job: Job, i: int) -> Hit:
        """The cached blocks a prompt starts with; at least its last token is left to prefill (its logits start
        the reply). A request that scores its prompt (echo with logprobs) needs every position: no lookup."""
        if self.prefix is None or job.params.prompt_logprobs:
            return Hit()
        prompt = job.prompts[i]
        hit = self.prefix.lookup(prompt, limit=len(prompt) - 1, salt=_salt(job.adapter))
        self.stats["prefix_cache_queries"] += len(prompt)
        self.stats["prefix_cache_hits"] += hit.tokens
        return hit

    def _prefill(self, units: list[tuple[Job, int]]) -> None:
        """Run a group of prompts in one forward, each after its cached prefix, then copy each one's keys/values
        into its n rows; a max_tokens=0 request (scoring only) finishes here.

        Layout of the group's cache, (G, C + S) positions with C the longest cached prefix and S the longest
        new part: row g's cached tokens end at column C, its new tokens end at C + S, masked padding before
        each. The mask hides the padding (and any gap between the two parts) and positions count unmasked
        columns, so every token gets the keys and the position it has in its own prompt."""
        prompts = [job.prompts[i] for job, i in units]
        hits = [self._hits.get(u) or Hit() for u in units]  # none: a prefill outside _admit (tests) starts cold
        cached = [hit.tokens for hit in hits]
        news = [len(p) - c for p, c in zip(prompts, cached)]
        C, S = max(cached), max(news)
        single = self._group_cache(hits, C, S)
        ids = torch.zeros(len(prompts), S, dtype=torch.long, device=self.device)  # (G, S), left-padded
        mask = torch.zeros(len(prompts), C + S, dtype=torch.long, device=self.device)  # 1 = real token
        for g, (p, c, n) in enumerate(zip(prompts, cached, news)):
            ids[g, S - n :] = torch.tensor(p[c:], device=self.device)
            mask[g, C - c : C] = 1
            mask[g, C + S - n :] = 1
        padded = bool((mask == 0).any())
        if self.slots is not None:  # each row's LoRA adapter (a server without adapters skips even this)
            self.slots.set([job.adapter for job, _ in units])
        x = self.model.transformer(ids, attention_mask=mask if padded else None, kv_cache=single)  # (G, S, C)
        self.stats["prefills"] += len(prompts)
        self.stats["prompt_tokens"] += sum(map(len, prompts))
        last = self.model.lm_head(x[:, -1])[:, : self.V].float()  # (G, V)
        for g, ((job, i), p) in enumerate(zip(units, prompts)):
            job.cached_tokens[i] = cached[g]
            params = job.params
            prompt_lp = self._prompt_logprobs(x[g, S - news[g] :], p, params.logprobs or 0) \
                if params.prompt_logprobs else None  # cached[g] == 0 here: such prompts skip the lookup
            k, v = self._row_kv(single, g, C, S, cached[g], news[g])  # (n_layer, n_head, L, head_dim)
            if self.prefix is not None:
                self.prefix.insert(p, k, v, salt=_salt(job.adapter))
            if params.max_tokens == 0:  # scoring only: nothing to generate
                job.emit([Piece(job.n * i + s, "", None, "length", 0, prompt_lp) for s in range(job.n)])
                self.stats["finished_length"] += job.n
                self._release(job.n)
                continue
            for s in range(job.n):
                self.cache.add_row(k, v)
                self.rows.append(self._new_row(job, job.n * i + s, p, s, prompt_lp))
                row_logits = last[g : g + 1]  # (1, V)
                self.logits = row_logits if self.logits is None else torch.cat([self.logits, row_logits])

    def _group_cache(self, hits: list[Hit], C: int, S: int) -> KVCache:
        """The prefill's cache for C cached + S new positions, each row's cached blocks ending at column C."""
        single = KVCache(self.config, batch_size=len(hits), max_len=C + S, device=self.device,
                         dtype=self.cache.k.dtype)
        for g, hit in enumerate(hits):
            start = C - hit.tokens
            for block in hit.blocks:  # (2, n_layer, n_head, block, head_dim)
                end = start + block.shape[3]
                single.k[:, g, :, start:end] = block[0]
                single.v[:, g, :, start:end] = block[1]
                start = end
        single.pos = C
        return single

    @staticmethod
    def _row_kv(single: KVCache, g: int, C: int, S: int, cached: int, new: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Row g's keys and values after its prefill, (n_layer, n_head, cached + new, head_dim): its cached
        columns then its new ones (a view where they touch, else a copy of the two without the gap)."""
        if new == S:
            cols = slice(C - cached, C + S)
            return single.k[:, g, :, cols], single.v[:, g, :, cols]
        idx = torch.cat([torch.arange(C - cached, C), torch.arange(C + S - new, C + S)]).to(single.k.device)
        return single.k[:, g].index_select(2, idx), single.v[:, g].index_select(2, idx)

    def _remember(self, r: int) -> None:
        """Offer row r's keys/values (its prompt and the tokens fed back so far) to the prefix cache."""
        if self.prefix is None:
            return
        row, n, pos = self.rows[r], self.cache.lengths[r], self.cache.pos
        tokens = (row.prompt + row.tokens)[:n]  # the last token picked was never fed: n covers the ones that were
        self.prefix.insert(tokens, self.cache.k[:, r, :, pos - n : pos], self.cache.v[:, r, :, pos - n : pos],
                           salt=_salt(row.job.adapter))

    def _new_row(self, job: Job, choice: int, prompt: list[int], sample: int,
                 prompt_lp: list[TokenLogprob] | None) -> _Row:
        params = job.params
        row = _Row(job, choice, prompt, _TextStream(params.stop),
                   None if params.greedy else row_generator(job.seed, prompt, sample, device=self.device),
                   prompt_lp=prompt_lp)
        if params.presence_penalty or params.frequency_penalty:
            row.counts = collections.Counter()
        if params.repetition_penalty != 1.0:
            row.present = sampling.presence_mask([prompt], self.V, device=self.device)
        return row

    def _prompt_logprobs(self, hidden: torch.Tensor, ids: list[int], k: int) -> list[TokenLogprob]:
        """log p(prompt[t] | prompt[:t]) for t >= 1, with the top k alternatives; None for the first token."""
        out = [TokenLogprob(ids[0], None, None)]
        if len(ids) > 1:
            lp = torch.log_softmax(self.model.lm_head(hidden[:-1])[:, : self.V].float(), dim=-1)  # (L - 1, V)
            out += self._token_logprobs(lp, ids[1:], k)
        return out

    @staticmethod
    def _token_logprobs(lp: torch.Tensor, tokens: list[int], k: int) -> list[TokenLogprob]:
        """Per row of (N, V) log-probabilities: the given token's value and the top k (token, logprob)."""
        chosen = lp.gather(1, torch.tensor(tokens, device=lp.device)[:, None])[:, 0].tolist()  # (N,)
        tops: list[list[tuple[int, float]]] = [[] for _ in tokens]
        if k:
            vals, idx = lp.topk(k, dim=-1)  # (N, k)
            tops = [list(zip(i, v)) for i, v in zip(idx.tolist(), vals.tolist())]
        return [TokenLogprob(t, c, top) for t, c, top in zip(tokens, chosen, tops)]

    # ---------------------------------------------------------------------------------- decoding
    def _step(self) -> None:
        """Pick every row's next token, emit it, drop finished rows, and run one decode forward."""
        assert self.logits is not None and self.logits.shape[0] == len(self.rows) == self.cache.rows
        picked = self._pick(self.logits)
        lps = self._logprobs(self.logits, picked)
        per_job: dict[int, tuple[Job, list[Piece]]] = {}
        finished = []
        for r, row in enumerate(self.rows):
            piece = self._advance_row(row, picked[r], lps.get(r))
            per_job.setdefault(id(row.job), (row.job, []))[1].append(piece)
            if piece.finish_reason is not None:
                finished.append(r)
                self.stats[f"finished_{piece.finish_reason}"] += 1
        self.stats["steps"] += 1
        self.stats["tokens"] += len(self.rows)
        for job, pieces in per_job.values():
            job.emit(pieces)
        for r in reversed(finished):
            self._remove(r)
        if not self.rows:
            self.logits = None
            return
        self.cache.make_room()
        mask = self.cache.attention_mask()  # (rows, pos + 1)
        next_ids = torch.tensor([[row.tokens[-1]] for row in self.rows], device=self.device)  # (rows, 1)
        if self.slots is not None:
            self.slots.set([row.job.adapter for row in self.rows])
        x = self.model.transformer(next_ids, attention_mask=mask, kv_cache=self.cache)  # (rows, 1, C)
        self.logits = self.model.lm_head(x[:, -1])[:, : self.V].float()  # (rows, V)

    def _pick(self, logits: torch.Tensor) -> list[int]:
        """Next token of every row: per-row biases and penalties, then the engine's warpers per group."""
        logits = self._adjust(logits)
        picked = [0] * len(self.rows)
        groups: dict[tuple, list[int]] = {}
        for r, row in enumerate(self.rows):
            groups.setdefault(row.job.params.warper_key(), []).append(r)
        for (temperature, top_k, top_p, min_p), idx in groups.items():
            sub = logits[torch.tensor(idx, device=self.device)]  # (G, V)
            processed = sampling.process_logits(sub, temperature=temperature, top_k=top_k or None,
                                                top_p=top_p, min_p=min_p)
            noise = None
            if temperature > 0:
                noise = sampling.gumbel_noise([self.rows[r].generator for r in idx], self.V, device=self.device)
            for r, tok in zip(idx, sampling.pick_tokens(processed, noise=noise).tolist()):
                picked[r] = tok
        return picked

    def _adjust(self, logits: torch.Tensor) -> torch.Tensor:
        """logit_bias, presence/frequency penalties (output tokens) and the repetition penalty, row by row."""
        out = logits
        for r, row in enumerate(self.rows):
            p = row.job.params
            if not (p.logit_bias or row.counts or row.present is not None):
                continue
            if out is logits:
                out = logits.clone()
            if p.logit_bias:
                ids = torch.tensor(list(p.logit_bias), device=self.device)
                out[r, ids] += torch.tensor(list(p.logit_bias.values()), device=self.device)
            if row.counts:
                ids = torch.tensor(list(row.counts), device=self.device)
                n = torch.tensor(list(row.counts.values()), device=self.device, dtype=out.dtype)
                out[r, ids] -= p.frequency_penalty * n + p.presence_penalty
            if row.present is not None:
                out[r : r + 1] = sampling.apply_repetition_penalty(out[r : r + 1], row.present, p.repetition_penalty)
        return out

    def _logprobs(self, logits: torch.Tensor, picked: list[int]) -> dict[int, TokenLogprob]:
        """The model's own log-probabilities (before penalties and warpers) for rows that asked for them."""
        want = [r for r, row in enumerate(self.rows) if row.job.params.logprobs is not None]
        if not want:
            return {}
        k = max(self.rows[r].job.params.logprobs or 0 for r in want)
        lp = torch.log_softmax(logits[torch.tensor(want, device=self.device)], dim=-1)  # (W, V)
        got = self._token_logprobs(lp, [picked[r] for r in want], k)
        out = {}
        for r, t in zip(want, got):
            kr = self.rows[r].job.params.logprobs or 0
            out[r] = TokenLogprob(t.token, t.logprob, (t.top or [])[:kr])
        return out

    def _advance_row(self, row: _Row, tok: int, lp: TokenLogprob | None) -> Piece:
        """Append a token to a row; its new text, and whether it finished (the engine's rules)."""
        p = row.job.params
        row.tokens.append(tok)
        if row.counts is not None:
            row.counts[tok] += 1
        if row.present is not None:
            row.present[0, tok] = True
        reason = None
        if tok == self.eos and not p.ignore_eos:
            reason, delta = "stop", row.text.push(b"", final=True)
        else:
            # With ignore_eos, end-of-text is generated but never shown as text.
            delta = row.text.push(b"" if tok == self.eos else self.tokenizer.decode_single_token_bytes(tok))
            if row.text.stopped:
                reason = "stop"
            elif len(row.tokens) >= p.max_tokens:
                delta += row.text.push(b"", final=True)
                reason = "stop" if row.text.stopped else "length"
        piece = Piece(row.choice, delta, lp or TokenLogprob(tok, None, None), reason, len(row.tokens))
        if len(row.tokens) == 1:
            piece.prompt_logprobs = row.prompt_lp
        return piece
