"""The one inner-loop utility: differentiable gradient-descent adaptation.

`adapt(loss_fn, params, batch, steps=k, inner_lr=alpha)` runs

    theta^(0) = theta,   theta^(j+1) = theta^(j) - alpha * grad L(theta^(j); batch)

and returns theta^(k), differentiable with respect to `params` (and `inner_lr`)
through every step: the outer gradient of a loss at theta^(k) is MAML's
second-order meta-gradient (Finn et al. 2017, arXiv 1703.03400),

    prod_{j=k-1..0} (I - diag(alpha) H(theta^(j))) grad L_outer(theta^(k)).

`first_order=True` stops the gradient through the inner gradients (FOMAML):
the product becomes I. `inner_lr` is a float, or a pytree of per-leaf scalars
or per-parameter arrays (Meta-SGD, Li et al. 2017, arXiv 1707.09835; learnable
when it is part of what the outer loop differentiates). `trainable` (a pytree
of bools, see `path_mask`) picks the leaves that adapt: the others are not
differentiated in the inner loop and come back unchanged (inner lr 0), while
the outer gradient still reaches them through the inner losses. ANIL adapts
the head only, BOIL the body only (docs/specs/meta_learning_and_sparse.md
§1). Steps run as a Python loop (`unroll=True`, the default: XLA sees every
step) or as `lax.scan` (one compiled step; better for many steps).
"""

from typing import Any, Callable, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp

Params = Any
LossFn = Callable[[Params, Any], jax.Array]


def leaf_paths(tree: Params) -> Sequence[str]:
  """'a/b/kernel'-style path of every leaf, in `jax.tree.leaves` order."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  def name(key):
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        return str(getattr(key, attr))
    return str(key)
  return ["/".join(name(k) for k in path) for path, _ in flat]


def path_mask(tree: Params, predicate: Callable[[str], bool]) -> Params:
  """Pytree of bools: `predicate(path)` for every leaf (path like 'head/kernel')."""
  treedef = jax.tree.structure(tree)
  return jax.tree.unflatten(treedef, [bool(predicate(p)) for p in leaf_paths(tree)])


def _per_leaf(value, treedef, n: int):
  if value is None or isinstance(value, bool):
    return [True if value is None else value] * n
  if isinstance(value, (int, float)) or (hasattr(value, "ndim") and value.ndim == 0
                                         and not isinstance(value, dict)):
    return [value] * n
  return treedef.flatten_up_to(value)


def adapt(loss_fn: LossFn, params: Params, batch: Any, *, steps: int,
          inner_lr: Union[float, Params], first_order: bool = False,
          trainable: Optional[Params] = None, unroll: bool = True,
          return_losses: bool = False) -> Union[Params, Tuple[Params, jax.Array]]:
  """Adapts `params` by `steps` steps of gradient descent on `loss_fn(params, batch)`.

  Args:
    loss_fn: `(params, batch) -> scalar`.
    params: the starting point theta (differentiable).
    batch: the data the inner loss sees (e.g. a task's support set).
    steps: number of inner steps (0 returns `params`).
    inner_lr: float, or pytree (prefix of `params`) of scalars or arrays.
    first_order: drop second-order terms (stop_gradient on inner gradients).
    trainable: pytree of bools (prefix of `params`); False leaves stay fixed.
    unroll: Python loop (True) or `lax.scan` (False).
    return_losses: also return the inner loss before each step, shape (steps,).

  Returns:
    Adapted params (and the inner losses if requested).
  """
  leaves, treedef = jax.tree.flatten(params)
  mask = _per_leaf(trainable, treedef, len(leaves))
  lrs = _per_leaf(inner_lr, treedef, len(leaves))
  index = [i for i, m in enumerate(mask) if m]
  if steps == 0 or not index:
    losses = jnp.zeros((0,))
    return (params, losses) if return_losses else params

  def loss_of_adapting(adapting, leaves):
    full = list(leaves)
    for i, a in zip(index, adapting):
      full[i] = a
    return loss_fn(jax.tree.unflatten(treedef, full), batch)

  def one_step(leaves):
    adapting = [leaves[i] for i in index]
    loss, grads = jax.value_and_grad(loss_of_adapting)(adapting, leaves)
    if first_order:
      grads = jax.lax.stop_gradient(grads)
    new = list(leaves)
    for i, a, g in zip(index, adapting, grads):
      new[i] = a - lrs[i] * g
    return new, loss

  if unroll:
    losses = []
    for _ in range(steps):
      leaves, loss = one_step(leaves)
      losses.append(loss)
    losses = jnp.stack(losses)
  else:
    leaves, losses = jax.lax.scan(lambda l, _: one_step(l), leaves, None, length=steps)
  adapted = jax.tree.unflatten(treedef, leaves)
  return (adapted, losses) if return_losses else adapted
