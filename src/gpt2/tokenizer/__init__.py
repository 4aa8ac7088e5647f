"""Byte-level BPE tokenizers: train one on any UTF-8 text, or load GPT-2's; encode with tiktoken's core.

    python -m gpt2 tokenizer train --input ../shared/data/tinyshakespeare.txt --vocab-size 4096 --out /tmp/tok

    from gpt2.tokenizer import Tokenizer, load_tokenizer, train_bpe
    tok = load_tokenizer("gpt2")                       # or a directory, or a .tiktoken file
    tok = train_bpe(["some text", "more text"], vocab_size=300)
    tok.save("out/tok")                                # our format + HF tokenizer.json

core.py holds the split patterns, the plain-Python reference encoder, the byte-level alphabet, the
tokenizer hash and `TokenizerParts`; bpe.py trains; io.py reads the file formats into parts (and
resolves "gpt2") and writes them from a tokenizer; encoding.py is the `Tokenizer` (tiktoken's API and
fast path) and `load_tokenizer`, built on io.py's readers (imports run core ← io ← encoding); chat.py
writes conversations in a prompt format (chat.json, chat_template); show.py prints vocabulary
statistics and draws token boundaries.
"""

from gpt2.tokenizer.bpe import train_bpe
from gpt2.tokenizer.core import GPT2_PATTERN, GPT4_PATTERN, reference_encode
from gpt2.tokenizer.encoding import Tokenizer, load_tokenizer

__all__ = ["GPT2_PATTERN", "GPT4_PATTERN", "Tokenizer", "load_tokenizer", "reference_encode", "train_bpe"]
