"""Look inside a tokenizer: vocabulary statistics, the merges in readable form, and pictures of a text
with its token boundaries coloured (HTML always; PNG with matplotlib's Pillow and fonts).

    python -m gpt2 tokenizer show gpt2 --merges 20 --sample "Hello, 世界! Tokenizers split text." --html /tmp/tok.html

Tokens are bytes, so they are shown as text where they are valid UTF-8, with whitespace made visible
(␣ for a space, \\n, \\t), and as \\xNN escapes where they are not (a piece of a multi-byte character).
In the pictures, tokens that each hold part of one character are drawn as one box, since a partial
character cannot be drawn; its tooltip lists all their ids.
"""

from __future__ import annotations

import html
import os
import unicodedata
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gpt2.errors import UserError
from gpt2.tokenizer.core import PATTERNS
from gpt2.tokenizer.encoding import Tokenizer
from gpt2.tokenizer.io import atomic_write_bytes, atomic_write_text

# Light pastel colours that keep black text readable; neighbours always differ.
PALETTE = ["#ffd6a5", "#caffbf", "#9bf6ff", "#bdb2ff", "#ffc6ff", "#fdffb6", "#a0c4ff", "#ffadad"]


_VISIBLE = {" ": "␣", "\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\"}


def format_token(b: bytes) -> str:
    """Token bytes → a readable one-line string: visible whitespace, \\xNN for bytes that are not UTF-8."""
    out = []
    for ch in b.decode("utf-8", errors="surrogateescape"):
        o = ord(ch)
        if 0xDC80 <= o <= 0xDCFF:  # surrogateescape's stand-in for an undecodable byte
            out.append(f"\\x{o - 0xDC00:02x}")
        elif ch in _VISIBLE:
            out.append(_VISIBLE[ch])
        elif not ch.isprintable():
            out.append(f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}")
        else:
            out.append(ch)
    return "".join(out)


def _pattern_name(pattern: str) -> str:
    for name, p in PATTERNS.items():
        if p == pattern:
            return name
    return "custom"


def vocab_stats(tok: Tokenizer, *, sample: str | None = None) -> dict[str, Any]:
    """Counts that describe a vocabulary (and how it compresses `sample`, when given)."""
    tokens = list(tok.mergeable_ranks)
    lengths = Counter(min(len(t), 9) for t in tokens)
    utf8 = [t for t in tokens if _is_utf8(t)]
    texts = [t.decode("utf-8") for t in utf8]
    stats: dict[str, Any] = {
        "name": tok.name,
        "n_vocab": tok.n_vocab,
        "ordinary_tokens": len(tokens),
        "merges": len(tokens) - 256,
        "special_tokens": tok.special_tokens,
        "pattern": _pattern_name(tok.pattern),
        "hash": tok.hash,
        "mean_token_bytes": round(sum(map(len, tokens)) / len(tokens), 3),
        "token_bytes_histogram": {("9+" if k == 9 else str(k)): lengths[k] for k in sorted(lengths)},
        "valid_utf8": len(utf8),
        "partial_utf8": len(tokens) - len(utf8),
        "leading_space": sum(s.startswith(" ") for s in texts),
        "letters": sum(s.strip().isalpha() for s in texts),
        "digits": sum(s.strip().isdigit() for s in texts),
        "whitespace": sum(s.isspace() for s in texts),
        "cjk": sum(any(unicodedata.name(c, "").startswith("CJK") for c in s) for s in texts),
        "longest": [format_token(t) for t in sorted(tokens, key=lambda t: (-len(t), tok.mergeable_ranks[t]))[:10]],
    }
    if sample is not None:
        ids = tok.encode_ordinary(sample)
        n_bytes = len(sample.encode("utf-8"))
        stats["sample"] = {"chars": len(sample), "bytes": n_bytes, "tokens": len(ids),
                           "tokens_per_byte": round(len(ids) / max(n_bytes, 1), 4),
                           "chars_per_token": round(len(sample) / max(len(ids), 1), 3)}
    return stats


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def render_stats(stats: dict[str, Any]) -> str:
    hist = "  ".join(f"{k}B: {v}" for k, v in stats["token_bytes_histogram"].items())
    lines = [
        f"tokenizer      {stats['name']}  (hash {stats['hash'][:16]})",
        f"vocabulary     {stats['n_vocab']} ids: 256 bytes + {stats['merges']} merges + "
        f"{len(stats['special_tokens'])} special {sorted(stats['special_tokens'])}",
        f"split pattern  {stats['pattern']}",
        f"token length   mean {stats['mean_token_bytes']} bytes;  {hist}",
        f"token kinds    {stats['valid_utf8']} valid UTF-8, {stats['partial_utf8']} partial characters; "
        f"{stats['leading_space']} start with a space, {stats['letters']} letters, {stats['digits']} digits, "
        f"{stats['whitespace']} whitespace, {stats['cjk']} CJK",
        "longest        " + "  ".join(stats["longest"]),
    ]
    if "sample" in stats:
        s = stats["sample"]
        lines.append(f"sample         {s['chars']} chars, {s['bytes']} bytes → {s['tokens']} tokens "
                     f"({s['tokens_per_byte']} tokens/byte, {s['chars_per_token']} chars/token)")
    return "\n".join(lines)


def render_merges(tok: Tokenizer, *, start: int = 0, count: int = 20) -> str:
    """Merges start..start+count as `rank  left + right → token`."""
    if start < 0 or count < 0:
        raise UserError(f"merges start={start} and count={count} must be >= 0")
    merges = tok.merges()
    rows = []
    for a, b in merges[start:start + count]:
        rank = tok.mergeable_ranks[a + b]
        rows.append(f"{rank:>7}  {format_token(a)} + {format_token(b)} → {format_token(a + b)}")
    head = f"merges {start}..{min(start + count, len(merges)) - 1} of {len(merges)} (rank  left + right → token)"
    return "\n".join([head, *rows])


# ------------------------------------------------------------------------------------------ pictures
def token_spans(tok: Tokenizer, text: str, *, allowed_special: str | set[str] = "all") -> list[tuple[list[int], str]]:
    """`text` as (ids, piece) spans: one per token, except tokens that split a character share one span."""
    ids = tok.encode(text, allowed_special=allowed_special)  # type: ignore[arg-type]
    spans: list[tuple[list[int], str]] = []
    pending: list[int] = []
    buf = b""
    for i in ids:
        pending.append(i)
        buf += tok.decode_single_token_bytes(i)
        try:
            piece = buf.decode("utf-8")
        except UnicodeDecodeError:
            continue
        spans.append((pending, piece))
        pending, buf = [], b""
    if pending:
        spans.append((pending, buf.decode("utf-8", errors="replace")))
    return spans


def render_html(tok: Tokenizer, text: str) -> str:
    """A standalone HTML page: the text with each token on a coloured background, ids in tooltips."""
    spans = token_spans(tok, text)
    n_tokens = sum(len(ids) for ids, _ in spans)
    parts = []
    for k, (ids, piece) in enumerate(spans):
        shown = html.escape(piece).replace("\n", "↵\n")
        title = " ".join(str(i) for i in ids)
        extra = ' class="special"' if any(tok.is_special(i) for i in ids) else ""
        parts.append(f'<span{extra} style="background:{PALETTE[k % len(PALETTE)]}" title="{title}">{shown}</span>')
    summary = (f"{html.escape(tok.name)}: {n_tokens} tokens, {len(text)} characters, "
               f"{len(text.encode('utf-8'))} bytes (hover a token for its id)")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>tokens: {html.escape(tok.name)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
.text {{ font-family: "DejaVu Sans Mono", monospace; white-space: pre-wrap; line-height: 1.9; font-size: 15px; }}
.text span {{ border-radius: 3px; padding: 1px 0; margin-right: 1px; }}
.special {{ outline: 2px solid #c00; }}
</style></head>
<body><p>{summary}</p>
<div class="text">{"".join(parts)}</div>
</body></html>
"""


def write_html(tok: Tokenizer, text: str, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    atomic_write_text(path, render_html(tok, text))
    return path


def _font_path(text: str) -> str:
    from matplotlib import font_manager

    families = ["DejaVu Sans Mono"]
    if any(ord(c) > 0x2E80 for c in text):  # CJK needs a font that has it, where one is installed
        families = ["Noto Sans CJK SC", "Noto Sans CJK JP", "WenQuanYi Zen Hei", "Droid Sans Fallback", *families]
    return font_manager.findfont(font_manager.FontProperties(family=families), fallback_to_default=True)


def render_png(tok: Tokenizer, text: str, *, width: int = 1000, font_size: int = 18) -> bytes:
    """The text drawn with token boxes (Pillow, with a font from matplotlib); returns PNG bytes."""
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        raise UserError("writing a PNG needs matplotlib (and its Pillow): pip install 'gpt2-scratch[plot]'; "
                         "or write HTML with --html") from None
    try:
        font = ImageFont.truetype(_font_path(text), font_size)
    except ImportError:
        raise UserError("writing a PNG needs matplotlib for its fonts: pip install 'gpt2-scratch[plot]'; "
                         "or write HTML with --html") from None
    spans = token_spans(tok, text)
    margin, line_h = 12, int(font_size * 1.6)
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    # Lay out first (boxes wrap at the right edge and after a newline), then draw at the final height.
    boxes: list[tuple[int, int, int, str, str]] = []
    x, y = margin, margin
    for k, (ids, piece) in enumerate(spans):
        colour = "#ff8080" if any(tok.is_special(i) for i in ids) else PALETTE[k % len(PALETTE)]
        lines = piece.split("\n")
        for n, line in enumerate(lines):
            shown = line + ("↵" if n < len(lines) - 1 else "")
            if shown:
                w = max(int(scratch.textlength(shown, font=font)), 4)
                if x + w > width - margin and x > margin:
                    x, y = margin, y + line_h
                boxes.append((x, y, w, shown, colour))
                x += w + 1
            if n < len(lines) - 1:
                x, y = margin, y + line_h
    img = Image.new("RGB", (width, y + line_h + margin), "white")
    draw = ImageDraw.Draw(img)
    for bx, by, w, shown, colour in boxes:
        draw.rounded_rectangle((bx, by, bx + w, by + line_h - 4), radius=3, fill=colour)
        draw.text((bx, by + 2), shown, fill="black", font=font)
    import io

    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def write_png(tok: Tokenizer, text: str, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    atomic_write_bytes(path, render_png(tok, text))
    return path


# ------------------------------------------------------------------------- command-line input helpers
def parse_ids(parts: Sequence[str]) -> list[int]:
    """Token ids written as "1 2 3", "1,2,3" or "[1, 2, 3]" (one or many arguments) → ints."""
    ids = []
    for word in " ".join(parts).replace(",", " ").replace("[", " ").replace("]", " ").split():
        try:
            ids.append(int(word))
        except ValueError:
            raise UserError(f"token id {word!r} is not an integer; pass ids like '15496 11 995'") from None
    return ids


def parse_allowed_special(value: str) -> str | set[str]:
    """--allowed-special: "all", "none" or a comma-separated list of special tokens."""
    if value == "all":
        return "all"
    if value in ("none", ""):
        return set()
    return {s for s in value.split(",") if s}
