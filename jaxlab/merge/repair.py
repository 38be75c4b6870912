"""BatchNorm statistics reset after interpolation (the merging code's `reset_bn_stats`, the
statistics part of REPAIR, Jordan et al. 2023, arXiv 2211.08403).

The running statistics of an interpolated (or permuted-and-interpolated) network are not the
statistics of its own activations; the merging code recomputes them over D_merge with
momentum None (a cumulative average of the batch statistics) before evaluating. This module
does the same: every batch is passed in train mode from statistics 0 and from statistics 1;
Flax's update new = m * old + (1 - m) * batch gives m and the batch statistic exactly, and the
reset statistics are the mean of the batch statistics over the batches. REPAIR's rescaling of
each unit to the endpoints' interpolated statistics is not implemented (not used by the
merging paper).
"""

import jax
import jax.numpy as jnp


def has_batch_stats(variables) -> bool:
  return bool(jax.tree.leaves(variables.get("batch_stats", {})))


def reset_batch_stats(model, variables, batches: jax.Array):
  """`variables` with `batch_stats` the average batch statistics of `batches` [k, b, ...]
  (float images), the network in train mode; unchanged when it has none."""
  if not has_batch_stats(variables):
    return variables
  stats = variables["batch_stats"]

  def batch_statistics(images):
    run = lambda fill: model.apply({**variables, "batch_stats": jax.tree.map(
        lambda s: jnp.full_like(s, fill), stats)}, images, train=True,
                                   mutable=["batch_stats"])[1]["batch_stats"]
    from_0, from_1 = run(0.0), run(1.0)
    # new_0 = (1 - m) s, new_1 = m + (1 - m) s
    return jax.tree.map(lambda n0, n1: n0 / (1.0 - (n1 - n0)), from_0, from_1)

  per_batch = jax.lax.map(batch_statistics, batches)
  return {**variables, "batch_stats": jax.tree.map(lambda s: s.mean(0), per_batch)}
