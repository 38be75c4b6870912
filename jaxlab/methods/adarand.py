"""`adarand`: adaptive random feature regularisation (AdaRand, Yamaguchi et al., CVPR 2024,
arXiv 2403.10097).

Spec: shared/methods/generative_and_finetuning.md §1. Class-conditional Gaussian priors
initialised from the pretrained per-class feature statistics; their means follow running
class means (intra term) and are pushed to mutual orthogonality (inter term) by their own
Adam optimiser, after each classifier step. The step, the state and the evaluation are the
shared fine-tuning ones (`_finetune_core`).
"""

from jaxlab.methods._finetune_core import eval_step, init, make_task, start_from, train_step

__all__ = ["make_task", "init", "start_from", "train_step", "eval_step"]
