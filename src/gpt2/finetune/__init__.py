"""Fine-tuning: a file per task, the data each reads, and the inference and scoring of what they train.

    gpt2 finetune classify finetune-sms-spam

The tasks (gpt2.train.task, each trained by the one trainer): base.py (FinetuneTask: the base model,
LoRA, the seq_len check and the train/val/test split they share), classify_task.py (ClassificationTask
and its evaluator, ClassificationMetrics), instruct.py (InstructTask), dpo.py (DPOTask). Their data:
data.py reads labelled texts (csv, tsv, jsonl, parquet) and splits them; instruct_data.py reads
instruction data (Alpaca or chat messages), encodes conversations with a loss mask, and batches them by
length; preference_data.py reads prompt/chosen/rejected pairs. Inference and scoring:
classify_inference.py encodes texts and classifies them in batches (`gpt2 classify`, `gpt2 eval
--classify`); metrics.py scores predictions; instruct_eval.py and dpo_eval.py score a model on held-out
instructions and pairs (`gpt2 eval --instruct|--preference`); merge.py folds a LoRA adapter
(gpt2.model.lora, PEFT's format) into its base (`gpt2 lora merge`). Importing the package loads nothing.
"""
