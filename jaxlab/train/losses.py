"""Losses and per-example metrics shared by the methods."""

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  """Per-example softmax cross-entropy with integer labels."""
  if label_smoothing:
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example 0/1 accuracy as float32."""
  return (jnp.argmax(logits, -1) == labels).astype(jnp.float32)


def kl_divergence(logits_p: jax.Array, logits_q: jax.Array) -> jax.Array:
  """Per-example KL(softmax(logits_p) || softmax(logits_q)), summed over classes."""
  log_p, log_q = jax.nn.log_softmax(logits_p), jax.nn.log_softmax(logits_q)
  return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def cosine_similarity(a: jax.Array, b: jax.Array) -> jax.Array:
  """Per-row cos(a, b) over the last axis (0 when either row is zero)."""
  return jnp.sum(a * b, -1) / (jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1) + 1e-12)


def entropy(probs: jax.Array) -> jax.Array:
  """Per-row Shannon entropy (nats) of probability vectors."""
  return -(probs * jnp.log(jnp.clip(probs, 1e-12))).sum(-1)


def logit_margin(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example z_y - max_{k != y} z_k (negative when misclassified)."""
  z_y = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
  others = jnp.where(jax.nn.one_hot(labels, logits.shape[-1], dtype=bool), -jnp.inf, logits)
  return z_y - jnp.max(others, axis=-1)


def one_vs_rest(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example one-vs-the-rest loss: K logistic losses, the true class positive and
  every other class negative, summed: softplus(-z_y) + sum_{k != y} softplus(z_k)."""
  positive = jax.nn.one_hot(labels, logits.shape[-1], dtype=bool)
  return jnp.sum(jax.nn.softplus(jnp.where(positive, -logits, logits)), axis=-1)
