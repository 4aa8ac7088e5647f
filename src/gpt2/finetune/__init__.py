"""Fine-tuning: labelled data, metrics and batched inference for sequence classification.

    gpt2 finetune classify finetune-sms-spam

data.py reads labelled texts (csv, tsv, jsonl, parquet) and splits them; metrics.py scores predictions;
classify.py encodes texts and classifies them in batches (`gpt2 classify`, `gpt2 eval --classify`);
merge.py folds a LoRA adapter (gpt2.model.lora, PEFT's format) into its base (`gpt2 lora merge`);
instruct_data.py reads instruction data (Alpaca or chat messages), encodes conversations with a loss
mask, and batches them by length for instruction tuning; preference_data.py reads prompt/chosen/rejected pairs
and dpo.py trains on them (DPO), dpo_eval.py scores a model on them (`gpt2 eval --preference`).
Importing the package loads nothing.
"""
