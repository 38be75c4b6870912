"""`finetune`: plain fine-tuning (FT) of a pretrained backbone with a new head.

Spec: shared/methods/generative_and_finetuning.md §1. Loss: cross-entropy only (AdaRand's
FT baseline; the other regularisers at weight 0). The step, the state and the evaluation
are the shared fine-tuning ones (`_finetune_core`).
"""

from jaxlab.methods._finetune_core import eval_step, init, make_task, start_from, train_step

__all__ = ["make_task", "init", "start_from", "train_step", "eval_step"]
