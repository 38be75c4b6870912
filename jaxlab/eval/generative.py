"""Sample quality of a conditional generator, measured with a classifier trained in jaxlab.

Inception weights are not available offline, so the Frechet distance is taken in the
penultimate feature space of a jaxlab classifier (a run's workdir, e.g. `configs/erm.py:digits`
on the same data): FD = ||mu_r - mu_g||^2 + tr(S_r + S_g - 2 (S_r S_g)^(1/2)) between the
Gaussians fitted to the features of real and generated images (the FID formula, Heusel et al.
2017, arXiv 1706.08500, with another feature extractor; FID values do not transfer). The same
classifier's accuracy on class-conditional samples (does it see the class asked for?) is
reported beside it, with its accuracy on the real images for reference. The classifier is a
frozen input of the run (`jaxlab.train.inputs.classifier`).
"""

import math
from typing import Callable, Dict

import jax
import numpy as np

from jaxlab import models


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
  """Frechet distance between Gaussians fitted to two [N, d] feature sets (float64)."""
  a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
  mean_a, mean_b = a.mean(0), b.mean(0)
  cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  # tr (S_a S_b)^(1/2) = sum sqrt(eig(S_a^(1/2) S_b S_a^(1/2))), all symmetric PSD
  values, vectors = np.linalg.eigh(cov_a)
  root_a = (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T
  cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0.0, None)).sum()
  return float(np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * cross)


def in_chunks(fn: Callable, *arrays, chunk: int = 500):
  """fn applied to consecutive `chunk`-row slices of `arrays`, outputs concatenated on the
  host (a tuple of outputs stays a tuple)."""
  outputs = [jax.device_get(fn(*(a[i:i + chunk] for a in arrays)))
             for i in range(0, len(arrays[0]), chunk)]
  return jax.tree.map(lambda *parts: np.concatenate(parts), *outputs)


def logits_and_features(model, variables, images: np.ndarray, chunk: int = 500):
  """Eval-mode logits and penultimate features of float images in [0, 1], in chunks."""
  run = jax.jit(lambda x: models.logits_and_features(model, variables, x, train=False)[:2])
  return in_chunks(run, images, chunk=chunk)


def quality(model, variables, real: np.ndarray, real_labels: np.ndarray,
            generated: np.ndarray, generated_labels: np.ndarray) -> Dict[str, float]:
  """frechet_distance (classifier features), sample_accuracy (the classifier predicts the class
  the sample was conditioned on), real_accuracy (the same classifier on the real images)."""
  real_logits, real_features = logits_and_features(model, variables, real)
  fake_logits, fake_features = logits_and_features(model, variables, generated)
  return {"frechet_distance": frechet_distance(real_features, fake_features),
          "sample_accuracy": float(np.mean(fake_logits.argmax(-1) == generated_labels)),
          "real_accuracy": float(np.mean(real_logits.argmax(-1) == real_labels))}


def _pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2.0 * a @ b.T
  return np.sqrt(np.maximum(squared, 0.0))


def _knn_radii(features: np.ndarray, k: int) -> np.ndarray:
  """Each point's distance to its k-th nearest other point of the same set."""
  distances = _pairwise(features, features)
  return np.sort(distances, axis=1)[:, k]   # column 0 is the point itself


def manifold_metrics(real: np.ndarray, fake: np.ndarray, k: int = 5) -> Dict[str, float]:
  """k-NN manifold estimates between [N, d] real and [M, d] generated features:
  precision / recall (Kynkaenniemi et al. 2019, arXiv 1904.06991: the fraction of generated
  points inside the union of the real points' k-NN balls, and the reverse) and density /
  coverage (Naeem et al. 2020, arXiv 2002.09797: the mean count of real balls holding a
  generated point, over k; the fraction of real balls holding at least one)."""
  real_radii, fake_radii = _knn_radii(real, k), _knn_radii(fake, k)
  cross = _pairwise(real, fake)                        # [N, M]
  inside_real = cross <= real_radii[:, None]           # fake j in real i's ball
  return {"precision": float(inside_real.any(0).mean()),
          "recall": float((cross <= fake_radii[None, :]).any(1).mean()),
          "density": float(inside_real.sum(0).mean() / k),
          "coverage": float(inside_real.any(1).mean())}


def class_geometry(features: np.ndarray, labels: np.ndarray,
                   centroids: np.ndarray) -> Dict[str, float]:
  """centroid_distance: the mean distance of each point to its class's (reference) centroid;
  spread: the mean over classes of the mean distance to the class's own mean (dispersion)."""
  features = np.asarray(features, np.float64)
  to_centroid = np.linalg.norm(features - centroids[labels], axis=1)
  spreads = [np.linalg.norm(features[labels == y] - features[labels == y].mean(0), axis=1).mean()
             for y in np.unique(labels)]
  return {"centroid_distance": float(to_centroid.mean()), "spread": float(np.mean(spreads))}


def class_centroids(features: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
  features = np.asarray(features, np.float64)
  return np.stack([features[labels == y].mean(0) if np.any(labels == y)
                   else np.zeros(features.shape[1]) for y in range(num_classes)])


def save_image_grid(path: str, images: np.ndarray, columns: int) -> None:
  """Writes float images [N, H, W, C] in [0, 1] as one PNG, `columns` per row, 1-pixel gaps."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  n, h, w, c = images.shape
  rows = math.ceil(n / columns)
  grid = np.ones((rows * (h + 1) + 1, columns * (w + 1) + 1, c), np.float32)
  for i, image in enumerate(images):
    r, col = divmod(i, columns)
    grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + col * (w + 1):1 + col * (w + 1) + w] = image
  pixels = np.round(np.clip(grid, 0.0, 1.0) * 255).astype(np.uint8)
  scale = max(1, 256 // max(grid.shape[:2]))  # make 8x8 digits visible
  pixels = pixels.repeat(scale, 0).repeat(scale, 1)
  Image.fromarray(pixels[..., 0] if c == 1 else pixels).save(path)
