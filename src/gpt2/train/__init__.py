"""Training: the loop, AdamW and its schedule, checkpoints, metrics.

    gpt2 train configs/shakespeare-cpu.yaml
"""

from gpt2.train.loop import TrainingStopped, TrainResult, train

__all__ = ["TrainResult", "TrainingStopped", "train"]
