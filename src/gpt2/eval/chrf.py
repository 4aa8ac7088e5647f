"""chrF (Popović 2015): the character n-gram F-score, the usual reference-based metric for Chinese and other
languages written without spaces; our own implementation of sacrebleu's `CHRF()` defaults.

    python -c "from gpt2.eval.chrf import chrf; print(chrf(['剧情不错，演员很好'], ['剧情还算不错吧']))"

Whitespace is removed, then for n = 1..6 the character n-grams of the hypothesis and the reference are
counted; precision and recall are averaged over the orders both sides have, and combined as an F-score
with beta = 2 (recall weighs four times as much), on a 0-100 scale. A corpus score sums the n-gram
counts of all pairs before the F-score (sacrebleu's `corpus_score`), so it is not the mean of the
sentence scores. tests/eval/test_chrf.py holds both equal to sacrebleu's.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from gpt2.errors import UserError

CHAR_ORDER = 6
BETA = 2.0


def _ngrams(text: str, n: int) -> Counter[str]:
    text = "".join(text.split())
    return Counter(text[i : i + n] for i in range(len(text) - n + 1))


def chrf_statistics(hypothesis: str, reference: str, *, order: int = CHAR_ORDER) -> list[int]:
    """[hypothesis n-grams, reference n-grams, matched n-grams] for n = 1..order, flattened."""
    stats: list[int] = []
    for n in range(1, order + 1):
        h, r = _ngrams(hypothesis, n), _ngrams(reference, n)
        # An order the reference is too short for counts no hypothesis n-grams either (sacrebleu's
        # _get_match_statistics), so it leaves the corpus precision alone.
        stats += [sum(h.values()) if r else 0, sum(r.values()), sum((h & r).values())]
    return stats


def chrf_from_statistics(stats: Sequence[int], *, beta: float = BETA) -> float:
    """The chrF score (0-100) of summed `chrf_statistics`."""
    factor = beta**2
    avg_prec = avg_rec = 0.0
    orders = 0
    for i in range(0, len(stats), 3):
        n_hyp, n_ref, n_match = stats[i : i + 3]
        if n_hyp > 0 and n_ref > 0:  # an order one side is too short for does not count
            avg_prec += n_match / n_hyp
            avg_rec += n_match / n_ref
            orders += 1
    if orders == 0:
        return 0.0
    avg_prec, avg_rec = avg_prec / orders, avg_rec / orders
    if avg_prec + avg_rec == 0:
        return 0.0
    return 100 * (1 + factor) * avg_prec * avg_rec / (factor * avg_prec + avg_rec)


def chrf(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[list[float], float]:
    """(the chrF of each pair, the corpus chrF over all pairs)."""
    hypotheses, references = list(hypotheses), list(references)
    if len(hypotheses) != len(references):
        raise UserError(f"chrF needs one reference per completion; got {len(hypotheses)} completions and "
                        f"{len(references)} references")
    per = [chrf_statistics(h, r) for h, r in zip(hypotheses, references)]
    total = [sum(col) for col in zip(*per)] if per else [0] * (3 * CHAR_ORDER)
    return [chrf_from_statistics(s) for s in per], chrf_from_statistics(total)
