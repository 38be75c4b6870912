"""The one-step look-ahead meta-gradient of bilevel methods whose meta-parameters phi enter
only the inner loss (MGR's finder network, meta-optimised latents for SSL).

Spec: docs/specs/generative_and_finetuning.md §0.4. With the inner update

    theta'(phi) = theta - eta * grad_theta L_inner(theta, phi)     (one step of `adapt`)

the meta-gradient is grad_phi L_outer(theta'(phi)) = -eta (d^2 L_inner / dphi dtheta)^T v,
v = grad L_outer(theta'). phi reaches theta' only through the inner gradient, so a
first-order variant would be exactly zero; the choices are
  `exact`              jax.grad through the look-ahead (second order, exact for one step);
  `finite_difference`  DARTS' central difference (Liu et al. 2019, arXiv 1806.09055):
                       -eta [grad_phi L_inner(theta+, phi) - grad_phi L_inner(theta-, phi)]
                       / (2 eps), theta+- = theta +- eps v, eps = epsilon / ||v||; two inner
                       gradients and no second derivatives.
`trainable` (pytree of bools, `path_mask`) restricts the look-ahead to a parameter subset:
the other leaves keep their values in theta' and get no finite-difference perturbation.
"""

from typing import Any, Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import optax

from jaxlab.errors import unknown
from jaxlab.meta.inner import adapt

HVP_MODES = ("exact", "finite_difference")


def lookahead_loss(inner_loss: Callable[[Any, Any], jax.Array],
                   outer_loss: Callable[[Any], jax.Array], params: Any, meta_params: Any, *,
                   inner_lr, trainable: Optional[Any] = None) -> jax.Array:
  """L_outer(theta'(phi)) after one inner step; differentiable in `meta_params`."""
  adapted = adapt(inner_loss, params, meta_params, steps=1, inner_lr=inner_lr,
                  trainable=trainable)
  return outer_loss(adapted)


def lookahead_gradient(inner_loss: Callable[[Any, Any], jax.Array],
                       outer_loss: Callable[[Any], jax.Array], params: Any, meta_params: Any, *,
                       inner_lr, mode: str = "exact", trainable: Optional[Any] = None,
                       epsilon: float = 0.01) -> Tuple[jax.Array, Any]:
  """(L_outer(theta'(phi)), its gradient in phi) for `inner_loss(theta, phi)`, `outer_loss(theta)`.

  `inner_lr` is a scalar (the step the classifier would take, e.g. its current learning rate).
  """
  if mode == "exact":
    return jax.value_and_grad(lambda phi: lookahead_loss(
        inner_loss, outer_loss, params, phi, inner_lr=inner_lr, trainable=trainable))(
            meta_params)
  if mode != "finite_difference":
    raise unknown("hvp_mode", mode, HVP_MODES)
  adapted = adapt(inner_loss, params, meta_params, steps=1, inner_lr=inner_lr,
                  trainable=trainable)
  value, direction = jax.value_and_grad(outer_loss)(adapted)
  if trainable is not None:
    direction = jax.tree.map(lambda d, m: d if m else jnp.zeros_like(d), direction, trainable)
  eps = epsilon / (optax.tree.norm(direction) + 1e-12)
  meta_grad_at = lambda sign: jax.grad(inner_loss, argnums=1)(
      jax.tree.map(lambda p, d: p + sign * eps * d, params, direction), meta_params)
  plus, minus = meta_grad_at(1.0), meta_grad_at(-1.0)
  return value, jax.tree.map(lambda a, b: -inner_lr * (a - b) / (2.0 * eps), plus, minus)
