"""Linear mode connectivity without permutations in wide networks: softmax-temperature
calibration and the layerwise exponentially weighted connectivity (LEWC) probes.

Ito, Yamada, Chijiwa, Kumagai, "Do we really need permutations? Impact of width expansion on
linear mode connectivity" (arXiv 2510.08023; robustness_tta_merging.md §6.2). For a
bias-free ReLU MLP h_l = relu(W_l h_{l-1}) and theta_lam = (1 - lam) theta_a + lam theta_b, if
each model's weights nearly annihilate the other's features (reciprocal orthogonality) and
relu(u + v) ~ relu(u) + relu(v) (weak additivity), then by induction

    h_l(theta_lam) ~ (1 - lam)^l h_l(theta_a) + lam^l h_l(theta_b)      (LEWC)

so the midpoint's logits are 2^-L (z_a + z_b): the ensemble's argmax at a scale shrunk by
2^(1-L). The accuracy barrier vanishes with width; the loss barrier only after the
softmax temperature is recalibrated (`calibrated`).

Our reading where the spec is [R] (§6.2(h)): the exponent l counts the linear layers (the
first hidden layer is l = 1, the logits l = L); the temperature is one T per lam, chosen on a
calibration split by a grid over log T in [-3, 3] (`log_temperatures`); the probes are taken
at one lam (0.5 in the report). Networks with biases are probed as they are (a bias breaks
the exact scaling; the paper's nets are bias-free).
"""

from typing import Dict, List

import chex
import jax
import jax.numpy as jnp

from jaxlab.errors import UserError


def log_temperatures(points: int = 121) -> jax.Array:
  """The grid of log T searched by the calibration (log T in [-3, 3])."""
  return jnp.linspace(-3.0, 3.0, points)


def nll_by_temperature(logits: jax.Array, labels: jax.Array, mask: jax.Array,
                       log_temps: jax.Array) -> jax.Array:
  """[G] summed NLL of softmax(logits / T) over the masked rows, for each T = exp(log_temps)."""
  chex.assert_rank(logits, 2)
  def nll(log_t):
    logp = jax.nn.log_softmax(logits * jnp.exp(-log_t), -1)
    return -jnp.sum(mask * jnp.take_along_axis(logp, labels[:, None], 1)[:, 0])
  return jax.vmap(nll)(log_temps)


def calibrated(calibration: jax.Array, evaluation: jax.Array, log_temps: jax.Array):
  """(log T*, the evaluation loss at T*) per row: T* minimises the calibration loss of that
  row over the grid. Both tables are [..., G] mean NLLs."""
  best = jnp.argmin(calibration, -1)
  return log_temps[best], jnp.take_along_axis(evaluation, best[..., None], -1)[..., 0]


def _mlp_layers(variables) -> List[str]:
  """The MLP's linear layers in order: Dense_0, Dense_1, ..., head."""
  names = list(variables["params"])
  hidden = sorted((n for n in names if n.startswith("Dense_")), key=lambda n: int(n[6:]))
  if "batch_stats" in variables or not hidden or set(names) != set(hidden) | {"head"}:
    raise UserError("the LEWC probe (merge.lewc_examples) takes an MLP without normalisation "
                    f"(model.name=mlp, model.norm=none); this model has layers {sorted(names)}")
  return hidden + ["head"]


def pre_activations(model, variables, x: jax.Array) -> List[jax.Array]:
  """[W_l h_{l-1} (+ b_l)] of every linear layer, the logits last."""
  layers = _mlp_layers(variables)
  _, captured = model.apply(variables, x, train=False, capture_intermediates=True,
                            mutable=["intermediates"])
  return [captured["intermediates"][name]["__call__"][0] for name in layers]


def _row_norm(x: jax.Array) -> jax.Array:
  return jnp.linalg.norm(x.reshape(x.shape[0], -1), axis=-1)


def probe(model, variables_a, variables_b, x: jax.Array, lam: float = 0.5
          ) -> Dict[str, jax.Array]:
  """The §6.2(b) fidelity probes of the pair at `lam`, each [L] over the linear layers:
    cos       mean over inputs of cos(h_l(theta_lam), (1-lam)^l h_l^a + lam^l h_l^b)
              (inputs where either is all zero are left out)
    rel_error mean over those inputs of ||h_l(theta_lam) - that|| / ||h_l(theta_lam)||
    magnitude ||h_l(theta_lam)|| / ||(1-lam) h_l^a + lam h_l^b|| (LEWC at lam = 1/2: 2^(1-l))
    additivity WA_l = ||relu(u+v) - relu(u) - relu(v)|| / ||relu(u+v)||, u = (1-lam)^l W_a h^a,
              v = lam^l W_b h^b (the logits layer, which has no ReLU: 0)
    orthogonality RO_l = mean of ||W_a h^b|| / ||W_a h^a|| and ||W_b h^a|| / ||W_b h^b|| at
              layer l's input (the first layer sees one input: 1 by definition)
  where h_l is post-ReLU for hidden layers and the logits for the last; norms over the batch."""
  merged = jax.tree.map(lambda a, b: (1 - lam) * a + lam * b, variables_a, variables_b)
  pre = {side: pre_activations(model, v, x) for side, v in
         (("a", variables_a), ("b", variables_b), ("m", merged))}
  depth = len(pre["a"])
  act = {side: [jax.nn.relu(p) for p in values[:-1]] + [values[-1]]
         for side, values in pre.items()}
  layers = _mlp_layers(variables_a)
  out = {k: [] for k in ("cos", "rel_error", "magnitude", "additivity", "orthogonality")}
  for index in range(depth):
    power = index + 1
    ha, hb, hm = act["a"][index], act["b"][index], act["m"][index]
    predicted = (1 - lam) ** power * ha + lam ** power * hb
    norm_m, norm_p = _row_norm(hm), _row_norm(predicted)
    live = (norm_m > 0) & (norm_p > 0)  # an input whose layer is all zero has no direction
    count = jnp.maximum(jnp.sum(live), 1)
    cos = jnp.sum(hm * predicted, -1) / jnp.where(live, norm_m * norm_p, 1.0)
    out["cos"].append(jnp.sum(jnp.where(live, cos, 0.0)) / count)
    error = _row_norm(hm - predicted) / jnp.where(live, norm_m, 1.0)
    out["rel_error"].append(jnp.sum(jnp.where(live, error, 0.0)) / count)
    out["magnitude"].append(jnp.linalg.norm(hm) / jnp.maximum(
        jnp.linalg.norm((1 - lam) * ha + lam * hb), 1e-12))
    if index < depth - 1:
      u = (1 - lam) ** power * pre["a"][index]
      v = lam ** power * pre["b"][index]
      joint = jax.nn.relu(u + v)
      out["additivity"].append(jnp.linalg.norm(joint - jax.nn.relu(u) - jax.nn.relu(v))
                               / jnp.maximum(jnp.linalg.norm(joint), 1e-12))
    else:
      out["additivity"].append(jnp.zeros(()))
    if index == 0:
      out["orthogonality"].append(jnp.ones(()))
    else:
      wa = variables_a["params"][layers[index]]["kernel"]
      wb = variables_b["params"][layers[index]]["kernel"]
      ia, ib = act["a"][index - 1], act["b"][index - 1]
      out["orthogonality"].append(0.5 * (jnp.linalg.norm(ib @ wa) / jnp.linalg.norm(ia @ wa)
                                         + jnp.linalg.norm(ia @ wb) / jnp.linalg.norm(ib @ wb)))
  return {k: jnp.stack(v) for k, v in out.items()}
