"""`iterand`: edge-popup with iterative randomisation (Chijiwa, Yamaguchi, Ida, Umakoshi, Inoue,
NeurIPS 2021, arXiv 2106.09269).

Every K_per steps (`supermask.rerand_period`), before the forward pass, a random fraction
r (`supermask.rerand_rate`) of the currently pruned weights of every masked layer is
re-drawn from the initial distribution (B5); the search then sees more candidate weight
values at no extra memory. IteRand ranks raw scores (`supermask.policy=topk_raw`).
Everything else is `edge_popup`'s step (jaxlab.methods.edge_popup).
"""

from jaxlab.errors import UserError
from jaxlab.methods import edge_popup

make_task = edge_popup.make_task
train_step = edge_popup.train_step
eval_step = edge_popup.eval_step


def init(config, rng, spec):
  if not (config.supermask.rerand_period > 0 and config.supermask.rerand_rate > 0):
    raise UserError("iterand needs supermask.rerand_period > 0 and supermask.rerand_rate > 0 "
                    "(with either at 0 it is edge_popup)")
  return edge_popup.init(config, rng, spec)


__all__ = ["make_task", "init", "train_step", "eval_step"]
