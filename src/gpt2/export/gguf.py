"""A GPT-2 of ours as one GGUF file for llama.cpp (and Ollama, LM Studio, llama-cpp-python), via `gguf`.

    python -m gpt2 export gguf runs/shakespeare-cpu model.gguf --type q8_0
    python -c "from gpt2.export import export_gguf; export_gguf('preset:tiny', '/tmp/tiny.gguf')"

The file is written with the `gguf` package (llama.cpp's own Python library for the format: its
GGUFWriter, its tensor-name map and its Q8_0/F16/BF16 quantizers), laid out as llama.cpp's
convert_hf_to_gguf.py lays out a GPT2LMHeadModel:
- metadata: architecture `gpt2`, context length (n_positions), embedding and feed-forward sizes, block
  and head counts, layer-norm epsilon, file type (and the quantization version for q8_0);
- tensors under llama.cpp's names (`token_embd`, `position_embd`, `blk.N.attn_qkv`, ...) in nn.Linear's
  (out, in) layout; no `output.weight`, since GPT-2's head is tied and llama.cpp reuses `token_embd`;
  1-D tensors and the position embedding stay f32 at every type, as the converter keeps them;
- the tokenizer: `tokenizer.ggml.model=gpt2`, every token (byte-level strings, specials as their text),
  their types (normal / control, unused for padded ids), the merges, bos = eos = pad = our end-of-text id,
  and `tokenizer.ggml.pre`: the pre-tokenizer llama.cpp runs (src/llama-vocab.cpp) for our split
  pattern. GPT-2's pattern is `gpt-2`; GPT-4's (cl100k_base, `--pattern gpt4`) is `dbrx`: DBRX ships
  cl100k_base itself, and llama.cpp runs GPT-4's regex for it with ordinary BPE merges (`llama3` runs the
  same regex but with ignore_merges and an added BOS, which a tokenizer of ours does not do). Any other
  pattern is refused: a wrong pre-tokenizer would silently change every token id;
- the chat template of an instruct model (tokenizer_config.json's `chat_template`, else the one its
  chat.json implies) as `tokenizer.chat_template`, so llama.cpp prompts it as `gpt2 chat` does.

A LoRA adapter is merged into its base on the way out; a sequence classifier is refused (llama.cpp has
no GPT-2 classification head). The file is written under a temporary name beside OUT and renamed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import torch

from gpt2.errors import UserError, UserFileNotFoundError

FileType = Literal["f32", "f16", "bf16", "q8_0"]
FILE_TYPES: tuple[str, ...] = ("f32", "f16", "bf16", "q8_0")
# Our split pattern's name (gpt2.tokenizer.core.PATTERNS) → the `tokenizer.ggml.pre` llama.cpp runs it as.
PRE_TOKENIZERS = {"gpt2": "gpt-2", "gpt4": "dbrx"}


def pre_tokenizer(tokenizer: Any) -> str:
    """llama.cpp's name for the tokenizer's split pattern; a pattern it has no name for is a UserError."""
    from gpt2.tokenizer.core import PATTERNS

    for ours, theirs in PRE_TOKENIZERS.items():
        if tokenizer.pattern == PATTERNS[ours]:
            return theirs
    raise UserError(f"llama.cpp runs no pre-tokenizer for this tokenizer's split pattern {tokenizer.pattern!r}: "
                    f"only GPT-2's (gpt2) and GPT-4's (gpt4) patterns can be exported to GGUF")


def _check_request(source: str | Path, out: Path, file_type: str) -> None:
    """Refuse what cannot be exported before anything is loaded or written."""
    from gpt2.load import task_of

    if file_type not in FILE_TYPES:
        raise UserError(f"unknown GGUF type {file_type!r}; choose one of {', '.join(FILE_TYPES)}")
    if not out.parent.is_dir():
        raise UserFileNotFoundError(f"cannot write {out}: directory {out.parent} does not exist")
    if out.is_dir():
        raise UserError(f"{out} is a directory; give the path of the .gguf file to write")
    if task_of(source) == "classify":
        raise UserError(f"{source} is a sequence classifier: llama.cpp has no GPT-2 classification head, so only "
                        "language models export to GGUF")


def _merged_model(loaded: Any) -> torch.nn.Module:
    """The loaded language model with any LoRA adapter folded into its weights (in place: we own it)."""
    from gpt2.model.lora import lora_layers, merge_lora

    model = loaded.model
    if lora_layers(model):
        merge_lora(model)
    return model


def chat_template_of(loaded: Any) -> str | None:
    """tokenizer_config.json's chat_template in the model directory, else the one its chat format implies."""
    from gpt2.generate.chat import TOKENIZER_CONFIG_FILE, chat_template

    if loaded.directory is not None:
        path = loaded.directory / TOKENIZER_CONFIG_FILE
        if path.is_file():
            try:
                template = json.loads(path.read_text(encoding="utf-8")).get("chat_template")
            except (json.JSONDecodeError, AttributeError) as e:
                raise UserError(f"{path} is not a JSON object ({e}); save the tokenizer again") from None
            if isinstance(template, str) and template:
                return template
    return chat_template(loaded.chat_format) if loaded.chat_format is not None else None


def _add_vocabulary(writer: Any, tokenizer: Any, *, vocab_size: int) -> None:
    """Tokens, token types, merges and special ids, as the converter's _set_vocab_gpt2 writes them."""
    import gguf

    from gpt2.tokenizer.io import gpt2_vocab_and_merges

    vocab, merges = gpt2_vocab_and_merges(tokenizer)
    by_id = {i: s for s, i in vocab.items()}
    tokens, types = [], []
    for i in range(vocab_size):  # ids the model scores but the tokenizer lacks: placeholders, as the converter
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if tokenizer.is_special(i) else gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer(tokenizer))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    eot = int(tokenizer.eot_token)
    writer.add_bos_token_id(eot)
    writer.add_eos_token_id(eot)
    writer.add_pad_token_id(eot)
    writer.add_add_bos_token(False)  # our prompts never start with an added BOS (SampleConfig.bos="never")


def _add_hyperparameters(writer: Any, config: Any, *, name: str, file_type: str) -> None:
    import gguf

    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[file_type]
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_block_count(config.n_layer)
    writer.add_context_length(config.n_positions)
    writer.add_embedding_length(config.n_embd)
    writer.add_feed_forward_length(config.inner_dim)
    writer.add_head_count(config.n_head)
    writer.add_layer_norm_eps(config.layer_norm_epsilon)
    writer.add_file_type(ftype)
    if file_type == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _add_tensors(writer: Any, model: torch.nn.Module, *, file_type: str) -> None:
    """Every weight under llama.cpp's name, matrices in the file's type, the rest f32 (as the converter)."""
    import gguf

    from gpt2.model.hf import to_hf_state_dict

    qtype = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
             "bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[file_type]
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GPT2, model.config.n_layer)
    for key, t in to_hf_state_dict(model).items():
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        assert name is not None, f"no GGUF name for {key}"
        if key.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
            t = t.t()  # HF's Conv1D (in, out) back to (out, in), as the converter transposes them
        data = t.float().contiguous().numpy()  # (rows, columns): GGUF records the shape reversed, as ggml does
        keep_f32 = data.ndim == 1 or name == "position_embd.weight"
        target = gguf.GGMLQuantizationType.F32 if keep_f32 else qtype
        try:
            data = gguf.quants.quantize(data, target)
        except gguf.QuantError:  # a row not a multiple of Q8_0's block of 32: the converter falls back to f16
            target = gguf.GGMLQuantizationType.F16
            data = gguf.quants.quantize(data, target)
        writer.add_tensor(name, data, raw_dtype=target)


def export_gguf(source: str | Path, out: str | Path, *, file_type: FileType = "f32",
                tokenizer: str | None = None) -> Path:
    """Write the language model `source` names (anything gpt2.load takes) to `out` as GGUF; returns `out`."""
    import gguf

    from gpt2.load import load

    out = Path(out)
    _check_request(source, out, file_type)
    loaded = load(source, tokenizer=tokenizer, device="cpu")
    pre_tokenizer(loaded.tokenizer)  # refuse an unknown split pattern before any writing
    model = _merged_model(loaded)
    template = chat_template_of(loaded)
    name = loaded.directory.name if loaded.directory is not None else str(source)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    writer = gguf.GGUFWriter(tmp, arch=gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.GPT2])
    try:
        _add_hyperparameters(writer, model.config, name=name, file_type=file_type)
        _add_vocabulary(writer, loaded.tokenizer, vocab_size=model.config.vocab_size)
        if template is not None:
            writer.add_chat_template(template)
        _add_tensors(writer, model, file_type=file_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    finally:
        writer.close()
        tmp.unlink(missing_ok=True)
    return out


def read_metadata(path: str | Path) -> dict[str, Any]:
    """A GGUF file's key/value metadata as Python values (through gguf's reader), for tests and `--show`."""
    import gguf

    reader = gguf.GGUFReader(path)
    return {key: field.contents() for key, field in reader.fields.items()}
