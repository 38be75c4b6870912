"""`l2sp`: L2-SP (Li et al., ICML 2018, arXiv 1802.01483), the starting-point regulariser.

Spec: shared/methods/generative_and_finetuning.md §1. Loss: CE + alpha/2 ||w_body -
w_0||^2 + beta/2 ||w_head||^2 with w_0 the pretrained body (`finetune.l2sp_alpha`,
`finetune.l2sp_beta`). The step, the state and the evaluation are the shared fine-tuning
ones (`_finetune_core`).
"""

from jaxlab.methods._finetune_core import eval_step, init, make_task, start_from, train_step

__all__ = ["make_task", "init", "start_from", "train_step", "eval_step"]
