"""Dataset condensation by gradient matching (DC; Zhao, Mopuri, Bilen, ICLR 2021, arXiv
2006.05929), the condensed D_merge of the merging paper (robustness_tta_merging.md §5(b)).

A synthetic set S of `ipc` images per class is learned so that, for freshly initialised
networks along their own training on S, the gradient of the loss on S matches the gradient
on real data, class by class. One DC iteration (one training step here):
  theta <- a fresh initialisation
  repeat outer_loop times:
    for every class c: D_c = distance(grad L(theta; real batch of c), grad L(theta; S_c))
    S <- SGD step on sum_c D_c (second order: through grad L(theta; S_c))
    (not after the last) theta <- inner_loop full-batch SGD steps of lr_net on S
distance = the sum over weight matrices of sum over output units (rows) of 1 - cos between the
two gradients' rows; biases do not count (DC's `distance_wb`). DC's settings: outer_loop 10 /
inner_loop 50 for 10 images per class, 1 / 1 for one; batch_real 256; SGD lr_img 0.1
momentum 0.5 on S, lr_net 0.01 on theta; S initialised N(0, 1).
DC itself leaves S unbounded in its normalised input space (the shipped sets exceed [0, 1]);
jaxlab's models read [0, 1] images, so `clip` (default on) keeps S in [0, 1] after every
update; off is the published behaviour. Models with BatchNorm are not supported (DC treats
their statistics specially); use a model with norm=none.
"""

from typing import Tuple

import jax
import jax.numpy as jnp
import optax

from jaxlab.train import losses


def _norm(rows: jax.Array) -> jax.Array:
  """Row norms with gradient 0 at a zero row (a dead unit's), as torch.norm's backward."""
  squares = jnp.sum(rows * rows, -1)
  safe = jnp.where(squares > 0, squares, 1.0)
  return jnp.where(squares > 0, jnp.sqrt(safe), 0.0)


def distance(grads_real, grads_syn) -> jax.Array:
  """sum over kernels of sum over output units of 1 - cos(real row, synthetic row)."""
  total = jnp.zeros(())
  for real, syn in zip(jax.tree.leaves(grads_real), jax.tree.leaves(grads_syn)):
    if real.ndim < 2:  # biases and norm parameters: DC's 'do nothing'
      continue
    rows_real = jnp.moveaxis(real, -1, 0).reshape(real.shape[-1], -1)
    rows_syn = jnp.moveaxis(syn, -1, 0).reshape(syn.shape[-1], -1)
    cos = jnp.sum(rows_real * rows_syn, -1) / (_norm(rows_real) * _norm(rows_syn) + 1e-6)
    total = total + jnp.sum(1.0 - cos)
  return total


def _grads(model, params, images, labels):
  loss = lambda p: losses.cross_entropy(model.apply({"params": p}, images), labels).mean()
  return jax.grad(loss)(params)


def matching_loss(model, params, synthetic: jax.Array, real: jax.Array) -> jax.Array:
  """sum over classes of distance(grad on real[c], grad on synthetic[c]); synthetic
  [C, ipc, ...], real [C, b, ...]."""
  def one(c, syn_c, real_c):
    g_real = _grads(model, params, real_c, jnp.full(real_c.shape[0], c))
    g_syn = _grads(model, params, syn_c, jnp.full(syn_c.shape[0], c))
    return distance(jax.lax.stop_gradient(g_real), g_syn)
  return jnp.sum(jax.vmap(one)(jnp.arange(synthetic.shape[0]), synthetic, real))


def iteration(model, synthetic: jax.Array, opt_state, tx: optax.GradientTransformation,
              real: jax.Array, key: jax.Array, *, inner_loop: int, lr_net: float,
              clip: bool) -> Tuple[jax.Array, optax.OptState, jax.Array]:
  """One DC iteration; real [outer_loop, C, b, ...] holds each outer step's real batches.
  Returns (S, its optimiser state, the mean matching loss over the outer steps)."""
  classes, ipc = synthetic.shape[:2]
  labels = jnp.repeat(jnp.arange(classes), ipc)
  params = model.init(key, synthetic[0, :1])["params"]

  def train_net(params, synthetic):
    flat = jax.lax.stop_gradient(synthetic.reshape((-1,) + synthetic.shape[2:]))
    step = lambda _, p: jax.tree.map(lambda w, g: w - lr_net * g, p,
                                     _grads(model, p, flat, labels))
    return jax.lax.fori_loop(0, inner_loop, step, params)

  def outer(index, carry):
    params, synthetic, opt_state, total = carry
    loss, grad = jax.value_and_grad(
        lambda s: matching_loss(model, params, s, real[index]))(synthetic)
    updates, opt_state = tx.update(grad, opt_state, synthetic)
    synthetic = optax.apply_updates(synthetic, updates)
    if clip:
      synthetic = jnp.clip(synthetic, 0.0, 1.0)
    last = index == real.shape[0] - 1
    params = jax.lax.cond(last, lambda p, s: p, train_net, params, synthetic)
    return params, synthetic, opt_state, total + loss

  _, synthetic, opt_state, total = jax.lax.fori_loop(
      0, real.shape[0], outer, (params, synthetic, opt_state, jnp.zeros(())))
  return synthetic, opt_state, total / real.shape[0]


def train_fresh(model, images: jax.Array, labels: jax.Array, keys: jax.Array, *, steps: int,
                learning_rate: float, momentum: float = 0.9, weight_decay: float = 5e-4):
  """Params of len(keys) fresh models, each trained full-batch on (images, labels) for
  `steps` SGD steps, the rate x0.1 at half (DC's `evaluate_synset`)."""
  tx = optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(
      optax.piecewise_constant_schedule(learning_rate, {steps // 2: 0.1}), momentum))

  def one(key):
    params = model.init(key, images[:1])["params"]
    def step(carry, _):
      params, state = carry
      updates, state = tx.update(_grads(model, params, images, labels), state, params)
      return (optax.apply_updates(params, updates), state), None
    return jax.lax.scan(step, (params, tx.init(params)), None, length=steps)[0][0]

  return jax.vmap(one)(keys)
