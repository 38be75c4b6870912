"""Task sources of the closed-form meta-learners (docs/specs/closed_form_meta_learning.md §2-§4,
§9.1), drawn inside jit like the few-shot episodes (`jaxlab.data.episodes`): fixed shapes, a
meta-batch of tasks per step, fixed evaluation tasks from `episodes.eval_seed`.

`closed_form.source` picks what a task is:
  `ood`        §2(g): `ways` in-distribution classes with `shots` support examples each;
               queries: `queries` per ID class and as many from one other class of the same
               split (the OoD ones, `ood` = 1). `task_rotation` > 0 rotates all of a
               meta-training task's images by one angle in +-task_rotation degrees.
  `pu`         §3(g): a positive class and the split's other classes as negatives, a class
               prior pi ~ U[prior_low, prior_high]; support P (`positives` positives) and U
               (`unlabeled` rows, each positive with probability pi); labelled queries from
               the same mixture (`queries` rows, `y` = +1 / -1).
  `pu_gauss`   the same on synthetic tasks: in `dim` dimensions, p_P = N(m_P, I), p_N =
               N(m_N, I) with m ~ N(0, `spread`^2 I) drawn per task.
  `ratio_gauss` §4(g): p_A = N(m_A, S_A), p_B = N(m_B, S_B) in `dim` dimensions (means
               N(0, `spread`^2 I), covariances W W^T / dim + 0.5 I, W normal), supports A, B
               (`support_a`, `support_b` rows), queries Q_A, Q_B (`queries` each) and
               `eval_points` points of the alpha-mixture with their true r_alpha.
  `ratio_outlier` §4(g)'s outlier detection: A = `support_a` clean examples of one class,
               B = `support_b` examples of which `outlier_fraction` come from other classes
               (`outlier` = 1); queries Q_A, Q_B as above.
  `tables`     §1(g): semi-supervised classification tables with heterogeneous attribute
               spaces. A task: D_t attributes (padded to `max_attributes`, `column_mask`),
               `ways` classes, `shots` labelled rows a class, `unlabeled` unlabelled rows and
               `queries` query rows a class; every attribute standardised with the support's
               (labelled + unlabelled) statistics. Training and validation tasks are
               procedural (D_t ~ U{`train_attributes`}; half the attributes (rounded up)
               informative with class-conditional Gaussians, a quarter redundant (random
               linear combinations + noise), the rest noise; a random monotone
               a tanh(b x) + c x per attribute; columns shuffled). Test tasks come from the
               tables bundled with scikit-learn (`test_tables`: iris, wine, breast_cancer,
               digits; no download): a random class subset and D_t ~ U{`test_attributes`}
               attributes (capped at the table's) per task.
Image sources read `config.data` (flattened to vectors in [0, 1]); the split's classes are
`closed_form.train_classes` for training and validation episodes (other draws) and
`closed_form.test_classes` for the test episodes (unseen classes), each a `lo-hi` label range
of the pooled training and test examples.
"""

import math
from typing import Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxlab.data import augment, episodes, tasks
from jaxlab.errors import UserError, unknown

SOURCES = ("ood", "pu", "pu_gauss", "ratio_gauss", "ratio_outlier", "tables")
SKLEARN_TABLES = ("iris", "wine", "breast_cancer", "digits")
IMAGE_SOURCES = ("ood", "pu", "ratio_outlier")
Arrays = Dict[str, np.ndarray]
EVAL_SALT = {"validation": 1, "test": 2}


def _range(text: str, field: str) -> Tuple[int, int]:
  try:
    lo, hi = (int(v) for v in text.split("-"))
  except ValueError:
    raise UserError(f"closed_form.{field}={text!r} is not a label range like '0-5'") from None
  if not 0 <= lo <= hi:
    raise UserError(f"closed_form.{field}={text!r}: give lo-hi with 0 <= lo <= hi")
  return lo, hi


def _pick(key: jax.Array, images: jax.Array, counts: jax.Array, c, n: int) -> jax.Array:
  """n distinct real instances of class c."""
  scores = jax.random.uniform(key, (images.shape[1],))
  scores = jnp.where(jnp.arange(images.shape[1]) < counts[c], scores, 2.0)
  return images[c, jnp.argsort(scores)[:n]]


def _with_replacement(key, images, counts, c, n: int) -> jax.Array:
  index = jax.random.randint(key, (n,), 0, counts[c])
  return images[c, index]


def gaussian_logpdf(x: jax.Array, mean: jax.Array, cov: jax.Array) -> jax.Array:
  d = mean.shape[-1]
  diff = x - mean
  _, logdet = jnp.linalg.slogdet(cov)
  quad = jnp.sum(diff * jnp.linalg.solve(cov, diff.T).T, -1)
  return -0.5 * (d * jnp.log(2 * jnp.pi) + logdet + quad)


def true_relative_ratio(x, mean_a, cov_a, mean_b, cov_b, alpha: float) -> jax.Array:
  """r_alpha(x) = p_A / (alpha p_A + (1 - alpha) p_B) of two Gaussians."""
  la, lb = gaussian_logpdf(x, mean_a, cov_a), gaussian_logpdf(x, mean_b, cov_b)
  return 1.0 / (alpha + (1.0 - alpha) * jnp.exp(lb - la))


class MetaTask(episodes._Episodes):  # pylint: disable=protected-access
  """The tasks of `closed_form.source` (see the module docstring)."""

  def __init__(self, config, num_devices: int = 1):
    super().__init__(config, num_devices)
    c = config.closed_form
    if c.source not in SOURCES:
      raise unknown("task source (closed_form.source)", c.source, SOURCES)
    self.source, self.c = c.source, c
    self._data = config.data
    self._pooled = None
    if c.source in IMAGE_SOURCES:
      train = self.train_arrays()
      dim = int(np.prod(train["images"].shape[2:]))
      self._image_shape = tuple(self._pooled["images"].shape[2:])
    elif c.source == "tables":
      dim = c.max_attributes
      self._attribute_range("train_attributes")
      self._attribute_range("test_attributes")
    else:
      dim = c.dim
    self.dim = dim
    classes = c.ways if c.source in ("ood", "tables") else 2
    self.spec = tasks.Spec(input_shape=(dim,), num_classes=classes)

  def _attribute_range(self, field: str) -> Tuple[int, int]:
    lo, hi = _range(self.c[field], field)
    if lo < 1 or hi > self.c.max_attributes:
      raise UserError(f"closed_form.{field}={self.c[field]!r}: attribute counts go from 1 to "
                      f"closed_form.max_attributes={self.c.max_attributes}")
    return lo, hi

  # -- the class-indexed splits of image sources ---------------------------------------------
  def _split(self, classes: str, field: str) -> Arrays:
    if self._pooled is None:
      parts = [tasks.load_arrays(self._data, s) for s in ("train", "test")]
      self._pooled = episodes.class_index(
          np.concatenate([p["image"] for p in parts]),
          np.concatenate([p["label"] for p in parts]))
    lo, hi = _range(classes, field)
    total = len(self._pooled["counts"])
    if hi >= total:
      raise UserError(f"closed_form.{field}={classes!r} reaches class {hi}; "
                      f"{self._data.name!r} has {total} (0-{total - 1})")
    images = self._pooled["images"][lo:hi + 1]
    flat = images.reshape(images.shape[:2] + (-1,))
    needed = self.c.ways + 1 if self.source == "ood" else 2
    if hi - lo + 1 < needed:
      raise UserError(f"closed_form.{field}={classes!r} has {hi - lo + 1} classes; a "
                      f"{self.source} task needs {needed}")
    return {"images": flat, "counts": self._pooled["counts"][lo:hi + 1]}

  def train_arrays(self) -> Arrays:
    if self.source not in IMAGE_SOURCES:
      return {}
    return self._split(self.c.train_classes, "train_classes")

  def eval_arrays(self, split: str) -> Arrays:
    if self.source == "tables" and split == "test":
      arrays = sklearn_tables(self.c.test_tables)
      if arrays["classes"].min() < self.c.ways:
        raise UserError(f"closed_form.test_tables={self.c.test_tables!r} has a table with "
                        f"{arrays['classes'].min()} classes; tasks of closed_form.ways="
                        f"{self.c.ways} need as many")
      return arrays
    if self.source not in IMAGE_SOURCES:   # procedural laws: each split its own draws
      return {"salt": np.asarray(EVAL_SALT.get(split, len(EVAL_SALT) + 1), np.int32)}
    if split == "validation":
      return self.train_arrays()
    return self._split(self.c.test_classes, "test_classes")

  # -- one task ---------------------------------------------------------------------------------
  def episode(self, data, key, evaluation: bool):
    if "salt" in data:
      key = jax.random.fold_in(key, data["salt"])
    if self.source == "ood":
      return self._ood(data, key, evaluation)
    if self.source == "tables":
      return self._table_task(data, key)
    return getattr(self, f"_{self.source}")(data, key)

  def _task_domain(self, key, rows: jax.Array) -> jax.Array:
    """One rotation by U(-task_rotation, task_rotation) degrees for all of a task's images
    (§2(g)'s optional "rotated-digit" domains), float rows in [0, 1]."""
    images = rows.reshape((-1,) + self._image_shape)
    angle = jnp.deg2rad(jax.random.uniform(key, (), minval=-self.c.task_rotation,
                                           maxval=self.c.task_rotation))
    rotated = augment.rotate(images, jnp.full((images.shape[0],), angle))
    return rotated.reshape(rows.shape)

  def _ood(self, data, key, evaluation: bool):
    c = self.c
    images, counts = data["images"], data["counts"]
    class_key, domain_key, key = jax.random.split(key, 3)
    classes = jax.random.choice(class_key, images.shape[0], (c.ways + 1,), replace=False)
    keys = jax.random.split(key, c.ways + 1)
    inside = jax.vmap(lambda k, cl: _pick(k, images, counts, cl, c.shots + c.queries))(
        keys[:c.ways], classes[:c.ways])                      # [ways, shots + queries, D]
    outside = _pick(keys[-1], images, counts, classes[-1], c.ways * c.queries)
    labels = jnp.arange(c.ways, dtype=jnp.int32)
    support = augment.to_float(inside[:, :c.shots].reshape(-1, self.dim))
    query = augment.to_float(jnp.concatenate([inside[:, c.shots:].reshape(-1, self.dim),
                                              outside]))
    if c.get("task_rotation", 0.0) > 0 and not evaluation:
      both = self._task_domain(domain_key, jnp.concatenate([support, query]))
      support, query = both[:support.shape[0]], both[support.shape[0]:]
    return {"support": {"x": support, "y": jnp.repeat(labels, c.shots)},
            "query": {"x": query,
                      "y": jnp.concatenate([jnp.repeat(labels, c.queries),
                                            jnp.full((c.ways * c.queries,), -1, jnp.int32)]),
                      "ood": jnp.repeat(jnp.array([0.0, 1.0]), c.ways * c.queries)}}

  def _prior(self, key):
    return jax.random.uniform(key, (), minval=self.c.prior_low, maxval=self.c.prior_high)

  def _pu_rows(self, key, prior, n, positive_fn, negative_fn):
    p_key, n_key, y_key = jax.random.split(key, 3)
    is_positive = jax.random.bernoulli(y_key, prior, (n,))
    x = jnp.where(is_positive[:, None], positive_fn(p_key, n), negative_fn(n_key, n))
    return x, jnp.where(is_positive, 1, -1).astype(jnp.int32)

  def _pu_task(self, key, positive_fn, negative_fn):
    c = self.c
    prior_key, p_key, u_key, q_key = jax.random.split(key, 4)
    prior = self._prior(prior_key)
    u, _ = self._pu_rows(u_key, prior, c.unlabeled, positive_fn, negative_fn)
    q, y = self._pu_rows(q_key, prior, c.queries, positive_fn, negative_fn)
    return {"support": {"p": positive_fn(p_key, c.positives), "u": u},
            "query": {"x": q, "y": y}, "prior": prior}

  def _pu(self, data, key):
    images, counts = data["images"], data["counts"]
    class_key, key = jax.random.split(key)
    positive = jax.random.randint(class_key, (), 0, images.shape[0])

    def positives(k, n):
      return augment.to_float(_with_replacement(k, images, counts, positive, n))

    def negatives(k, n):  # a uniform other class per row
      class_keys = jax.random.split(k, n)
      offsets = jax.vmap(lambda kk: jax.random.randint(kk, (), 1, images.shape[0]))(class_keys)
      others = (positive + offsets) % images.shape[0]
      rows = jax.vmap(lambda kk, cl: _with_replacement(kk, images, counts, cl, 1)[0])(
          jax.random.split(jax.random.fold_in(k, 1), n), others)
      return augment.to_float(rows)
    return self._pu_task(key, positives, negatives)

  def _pu_gauss(self, data, key):
    del data
    mean_key, key = jax.random.split(key)
    means = self.c.spread * jax.random.normal(mean_key, (2, self.dim))
    draw = lambda m: (lambda k, n: m + jax.random.normal(k, (n, self.dim)))
    return self._pu_task(key, draw(means[0]), draw(means[1]))

  def _ratio_gauss(self, data, key):
    del data
    c = self.c
    keys = jax.random.split(key, 8)
    d = self.dim
    means = c.spread * jax.random.normal(keys[0], (2, d))
    w = jax.random.normal(keys[1], (2, d, d))
    covs = jnp.einsum("sij,skj->sik", w, w) / d + 0.5 * jnp.eye(d)
    roots = jnp.linalg.cholesky(covs)
    draw = lambda k, s, n: means[s] + jax.random.normal(k, (n, d)) @ roots[s].T
    from_a = jax.random.bernoulli(keys[6], c.alpha, (c.eval_points,))
    mixture = jnp.where(from_a[:, None], draw(keys[4], 0, c.eval_points),
                        draw(keys[5], 1, c.eval_points))
    return {"support": {"a": draw(keys[2], 0, c.support_a), "b": draw(keys[3], 1, c.support_b)},
            "query": {"a": draw(keys[7], 0, c.queries),
                      "b": draw(jax.random.fold_in(keys[7], 1), 1, c.queries)},
            "mixture": {"x": mixture, "ratio": true_relative_ratio(
                mixture, means[0], covs[0], means[1], covs[1], c.alpha)}}

  def _ratio_outlier(self, data, key):
    c = self.c
    images, counts = data["images"], data["counts"]
    class_key, key = jax.random.split(key)
    clean = jax.random.randint(class_key, (), 0, images.shape[0])
    keys = jax.random.split(key, 5)

    def rows(k, n, fraction):
      is_out = jax.random.bernoulli(jax.random.fold_in(k, 0), fraction, (n,))
      offsets = jax.random.randint(jax.random.fold_in(k, 1), (n,), 1, images.shape[0])
      cls = jnp.where(is_out, (clean + offsets) % images.shape[0], clean)
      x = jax.vmap(lambda kk, cl: _with_replacement(kk, images, counts, cl, 1)[0])(
          jax.random.split(jax.random.fold_in(k, 2), n), cls)
      return augment.to_float(x), is_out.astype(jnp.float32)

    a, _ = rows(keys[0], c.support_a, 0.0)
    b, outlier = rows(keys[1], c.support_b, c.outlier_fraction)
    qa, _ = rows(keys[2], c.queries, 0.0)
    qb, _ = rows(keys[3], c.queries, c.outlier_fraction)
    return {"support": {"a": a, "b": b, "outlier": outlier}, "query": {"a": qa, "b": qb}}


  # -- §1: tables with heterogeneous attribute spaces ------------------------------------------
  def _rows_labels(self):
    c = self.c
    labeled = jnp.repeat(jnp.arange(c.ways, dtype=jnp.int32), c.shots)
    query = jnp.repeat(jnp.arange(c.ways, dtype=jnp.int32), c.queries)
    return labeled, query

  def _table_task(self, data, key):
    c = self.c
    labeled, query = self._rows_labels()
    keys = jax.random.split(key, 4)
    u_labels = jax.random.randint(keys[0], (c.unlabeled,), 0, c.ways)
    labels = jnp.concatenate([labeled, u_labels, query])
    if "tables" in data:
      x, d_t = self._sklearn_rows(data, keys[1], labels)
    else:
      x, d_t = self._procedural_rows(keys[1], labels)
    columns = jnp.arange(c.max_attributes)
    column_mask = (columns < d_t).astype(jnp.float32)
    n_support = labeled.shape[0] + c.unlabeled
    support = x[:n_support]
    mean = support.mean(0)
    std = jnp.sqrt(jnp.mean((support - mean) ** 2, 0) + 1e-6)
    x = jnp.where(column_mask > 0, (x - mean) / std, 0.0)
    n_l = labeled.shape[0]
    return {"labeled": {"x": x[:n_l], "y": labeled},
            "unlabeled": {"x": x[n_l:n_support], "y": u_labels},
            "query": {"x": x[n_support:], "y": query},
            "column_mask": column_mask}

  def _procedural_rows(self, key, labels):
    """The §1(g) classification generator, D_t attributes of `max_attributes` columns."""
    c = self.c
    d = c.max_attributes
    lo, hi = self._attribute_range("train_attributes")
    keys = jax.random.split(key, 10)
    d_t = jax.random.randint(keys[0], (), lo, hi + 1)
    d_inf = (d_t + 1) // 2
    d_red = (d_t - d_inf) // 2
    means = c.spread * jax.random.normal(keys[1], (c.ways, d))
    w = jax.random.normal(keys[2], (d, d))
    root = jnp.linalg.cholesky(w @ w.T / d + 0.5 * jnp.eye(d))
    n = labels.shape[0]
    columns = jnp.arange(d)
    informative = means[labels] + jax.random.normal(keys[3], (n, d)) @ root.T
    informative = jnp.where(columns < d_inf, informative, 0.0)
    mixing = jax.random.normal(keys[4], (d, d)) / jnp.sqrt(jnp.maximum(d_inf, 1))
    redundant = informative @ mixing + 0.1 * jax.random.normal(keys[5], (n, d))
    noise = jax.random.normal(keys[6], (n, d))
    raw = jnp.where(columns < d_inf, informative, jnp.where(columns < d_inf + d_red,
                                                            redundant, noise))
    a, b, cc = (jax.random.uniform(k, (d,), minval=lo_, maxval=hi_) for k, lo_, hi_ in
                zip(jax.random.split(keys[7], 3), (0.5, 0.5, 0.0), (2.0, 2.0, 0.5)))
    raw = a * jnp.tanh(b * raw) + cc * raw
    order = jnp.argsort(jnp.where(columns < d_t, jax.random.uniform(keys[8], (d,)),
                                  2.0 + columns))              # real columns shuffled first
    return jnp.where(columns < d_t, raw[:, order], 0.0), d_t

  def _sklearn_rows(self, data, key, labels):
    """Rows of one bundled table: a random table, `ways` of its classes, D_t of its
    attributes."""
    c = self.c
    tables, counts = data["tables"], data["counts"]         # [T, C, M, F], [T, C]
    keys = jax.random.split(key, 4)
    t = jax.random.randint(keys[0], (), 0, tables.shape[0])
    n_classes, n_features = data["classes"][t], data["features"][t]
    scores = jnp.where(jnp.arange(counts.shape[1]) < n_classes,
                       jax.random.uniform(keys[1], (counts.shape[1],)), 2.0)
    chosen = jnp.argsort(scores)[:c.ways]                    # ways distinct real classes
    lo, hi = self._attribute_range("test_attributes")
    d_t = jnp.minimum(jax.random.randint(keys[2], (), lo, hi + 1), n_features)
    f = tables.shape[-1]
    feature_order = jnp.argsort(jnp.where(jnp.arange(f) < n_features,
                                          jax.random.uniform(keys[3], (f,)), 2.0))
    picks = jax.random.split(jax.random.fold_in(key, 1), labels.shape[0])
    row_of = lambda k, y: tables[t, chosen[y], jax.random.randint(k, (), 0,
                                                                   counts[t, chosen[y]])]
    rows = jax.vmap(row_of)(picks, labels)[:, feature_order[:c.max_attributes]]
    if rows.shape[1] < c.max_attributes:
      rows = jnp.pad(rows, ((0, 0), (0, c.max_attributes - rows.shape[1])))
    return jnp.where(jnp.arange(c.max_attributes) < d_t, rows, 0.0), d_t


def sklearn_tables(names: str) -> Arrays:
  """The bundled scikit-learn tables, class-indexed and padded: `tables` [T, C, M, F],
  `counts` [T, C], `classes` [T], `features` [T] (rows drawn with replacement per task)."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  chosen = [n.strip() for n in names.split(",") if n.strip()]
  for name in chosen:
    if name not in SKLEARN_TABLES:
      raise unknown("scikit-learn table (closed_form.test_tables)", name, SKLEARN_TABLES)
  loaded = [getattr(datasets, f"load_{name}")() for name in chosen]
  grouped = [episodes.class_index(d.data.astype(np.float32), d.target) for d in loaded]
  shape = [max(g["images"].shape[i] for g in grouped) for i in range(3)]
  tables = np.zeros([len(grouped)] + shape, np.float32)
  counts = np.zeros((len(grouped), shape[0]), np.int32)
  for i, g in enumerate(grouped):
    c, m, f = g["images"].shape
    tables[i, :c, :m, :f] = g["images"]
    counts[i, :c] = g["counts"]
  return {"tables": tables, "counts": counts,
          "classes": np.array([g["images"].shape[0] for g in grouped], np.int32),
          "features": np.array([g["images"].shape[2] for g in grouped], np.int32)}


def make_task(config, num_devices: int = 1) -> MetaTask:
  return MetaTask(config, num_devices)


def auroc(positive: jax.Array, negative: jax.Array, w_pos=None, w_neg=None) -> jax.Array:
  """P(score of a positive > score of a negative), ties counting 1/2 (the Mann-Whitney
  statistic), over all pairs, with optional 0/1 weights."""
  w_pos = jnp.ones_like(positive) if w_pos is None else w_pos
  w_neg = jnp.ones_like(negative) if w_neg is None else w_neg
  diff = positive[:, None] - negative[None]
  wins = (diff > 0) + 0.5 * (diff == 0)
  weights = w_pos[:, None] * w_neg[None]
  return jnp.sum(wins * weights) / jnp.maximum(weights.sum(), 1e-12)


def soft_auroc(positive: jax.Array, negative: jax.Array, temperature) -> jax.Array:
  """The smoothed AUROC: mean sigmoid((s_pos - s_neg) / tau) over all pairs."""
  return jnp.mean(jax.nn.sigmoid((positive[:, None] - negative[None]) / temperature))
