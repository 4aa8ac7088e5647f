"""Text generation: a batched, streaming KV-cache engine, the sampling controls, and the chat loop.

    python -m gpt2 generate path/to/checkpoint "Once upon a time" --top-p 0.9 --max-new-tokens 50

    import gpt2
    out = gpt2.generate(model, tokenizer, ["Hello,", "Once upon a time"], max_new_tokens=30, top_p=0.9, seed=1)
    print(out[0].text, out[0].finish_reason, out[0].completion_tokens)

`gpt2.generate(...)` and `gpt2.generate.generate(...)` are the same call (the package is callable).

engine.py runs batches (prefill once, decode from a preallocated cache, stream, stop); sampling.py
holds the controls as pure functions over logits; reference.py is the no-cache generator the engine
is tested against; fastpath.py packs linear weights for oneDNN on CPU; chat.py holds prompt formats
and the interactive loop; show.py renders the token-probability table and heatmap; budget.py is the rule
for how many new tokens a verb asks for when the user names none (a default capped to the context).
"""

import sys
import types

from gpt2.generate.engine import (
    Generation,
    PromptTruncatedWarning,
    SampleConfig,
    StepProbs,
    TokenEvent,
    generate,
    stream,
)

__all__ = ["Generation", "PromptTruncatedWarning", "SampleConfig", "StepProbs", "TokenEvent", "generate", "stream"]


class _CallableModule(types.ModuleType):
    """`gpt2.generate(model, tokenizer, prompts, ...)` calls `generate`, although gpt2.generate is this package."""

    def __call__(self, *args, **kwargs):
        return generate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
