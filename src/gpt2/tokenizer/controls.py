"""Control tokens: a record's metadata value as one special token before its text, e.g. `<|stars=5|>`.

    gpt2 generate runs/douban-zh "<|stars=1|>剧情"

A recipe names metadata fields (`data.control_fields: [stars]`); each value a training record has becomes
the special token `<|field=value|>`, which the tokenizer keeps whole, placed before the record's text
(gpt2.data.controls). A prompt carries the token to ask for that value. The tokenizer's special tokens are
the list of what a model knows, so a prompt naming a known field with a value the data never had is
refused (`check_controls`) instead of being read as plain text.
"""

from __future__ import annotations

import re
from typing import Any

from gpt2.errors import UserError

CONTROL_RE = re.compile(r"<\|([A-Za-z_][A-Za-z0-9_.-]*)=([^|<>\n]+)\|>")


def control_token(field: str, value: Any) -> str:
    """The control token of one metadata value: `<|field=value|>`."""
    token = f"<|{field}={value}|>"
    if not CONTROL_RE.fullmatch(token):
        raise UserError(f"metadata {field}={value!r} cannot be a control token: the field must be a name and the "
                        "value non-empty, without |, <, > or a newline")
    return token


def control_tokens(tokenizer: Any) -> dict[str, list[str]]:
    """{field: [values]} of the control tokens among a tokenizer's special tokens, in id order."""
    specials = getattr(tokenizer, "special_tokens", None)
    if not isinstance(specials, dict):
        return {}
    out: dict[str, list[str]] = {}
    for token, _ in sorted(specials.items(), key=lambda kv: kv[1]):
        m = CONTROL_RE.fullmatch(token)
        if m:
            out.setdefault(m.group(1), []).append(m.group(2))
    return out


def check_controls(tokenizer: Any, text: str) -> None:
    """Refuse a control token in `text` whose field the tokenizer knows but whose value it does not."""
    known = control_tokens(tokenizer)
    if not known:
        return
    for m in CONTROL_RE.finditer(text):
        field, value = m.group(1), m.group(2)
        if field in known and value not in known[field]:
            raise UserError(f"{m.group(0)}: the training data has no {field}={value}; this model knows "
                            f"{field} = {', '.join(known[field])}")
