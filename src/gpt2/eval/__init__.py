"""Evaluation: loss, perplexity and bits per byte (loss.py), HellaSwag (hellaswag.py), completion quality
with repetition, distinct-n and BERTScore (completions.py); `gpt2 eval` runs them (commands.py).

    gpt2 eval runs/shakespeare-cpu --hellaswag ../shared/data/hellaswag_val_sample1000.jsonl
"""
