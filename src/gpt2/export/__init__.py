"""Exports to other runtimes' formats: GGUF for llama.cpp (gpt2.export.gguf).

    python -m gpt2 export gguf runs/shakespeare-cpu model.gguf --type q8_0
"""

from gpt2.export.gguf import FILE_TYPES, export_gguf

__all__ = ["FILE_TYPES", "export_gguf"]
