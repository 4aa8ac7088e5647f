"""The token-probability view: per step, the token picked and the model's top-k candidates, as a table or a heatmap.

    python -m gpt2 generate path/to/checkpoint "The capital of France is" --greedy --show-probs 5 --probs-plot probs.png

The probabilities are the model's own (softmax of its logits at that step, before penalties,
temperature and filters), so the view shows what the model predicted, whatever the sampling did.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gpt2.errors import UserError
from gpt2.generate.engine import StepProbs


def _token_str(tokenizer: Any, token: int) -> str:
    if tokenizer is None:
        return str(token)
    from gpt2.tokenizer.show import format_token

    return format_token(tokenizer.decode_single_token_bytes(token))


def _prob(p: float) -> str:
    """A probability in 7 characters: a percentage, or scientific notation below 0.1%."""
    return f"{p:7.1%}" if p >= 0.001 else f"{p:7.0e}"


def render_probs(steps: Sequence[StepProbs], tokenizer: Any) -> str:
    """A plain-text table: step, picked token and its probability, then the top candidates (* = picked)."""
    rows = []
    for t, s in enumerate(steps, 1):
        cands = "  ".join(f"{'*' if tok == s.token else ' '}{_token_str(tokenizer, tok):<12}{_prob(p)}"
                          for tok, p in s.top)
        rows.append(f"{t:>4}  {_token_str(tokenizer, s.token):<14}{_prob(s.prob)}   {cands}")
    header = f"{'step':>4}  {'picked':<14}{'p':>7}   top candidates (* = picked)"
    return "\n".join([header, *rows])


def plot_probs(steps: Sequence[StepProbs], tokenizer: Any, path: str | Path) -> Path:
    """Write a heatmap (rank × step, colour = probability, each cell labelled with its token) as PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: never open a window
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("--probs-plot needs matplotlib: pip install 'gpt2-scratch[plot]'") from None
    if not steps:
        raise UserError("no steps to plot")
    path = Path(path)
    k = len(steps[0].top)
    grid = [[s.top[r][1] if r < len(s.top) else 0.0 for s in steps] for r in range(k)]  # (k, steps)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(steps) + 1.5), max(2.5, 0.45 * k + 1.2)))
    im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0)
    for x, s in enumerate(steps):
        for r, (tok, p) in enumerate(s.top):
            label = _token_str(tokenizer, tok)[:10]
            weight = "bold" if tok == s.token else "normal"
            ax.text(x, r, label, ha="center", va="center", fontsize=7, fontweight=weight,
                    color="black" if p > 0.5 else "white")
    ax.set_xticks(range(len(steps)), [_token_str(tokenizer, s.token)[:10] for s in steps], rotation=60,
                  fontsize=7)
    ax.set_yticks(range(k), [f"#{r + 1}" for r in range(k)])
    ax.set_xlabel("picked token at each step")
    ax.set_ylabel("candidate rank")
    fig.colorbar(im, ax=ax, label="probability")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
