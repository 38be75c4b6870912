"""Test-time adaptation streams: a labelled test split, corrupted, fed once in a fixed order.

Adaptation is "one ordered pass of training over the test stream": the training loop's step
is the adaptation step and step t reads the stream's batch t (`AdaptationTask.train_batch`),
so `metrics.jsonl` holds the online error of every batch and checkpoints / resume work as for
any run (`train.steps = -1`: the stream's length). The protocol is configuration
(`config.tta`), recorded in config.json, and the order itself goes to `stream.npz`:

  tta.corruption_set   `digits` (§4(g) set) or `cifar` (CIFAR-10-C tables), jaxlab.data.corruptions
  tta.corruptions      comma-separated names, "" = the whole set
  tta.severities       e.g. "5" or "5,4,3,2,1"; the (corruption, severity) pairs are ordered
                       severity-major as Tent's CIFAR-10-C script loops
  tta.protocol         `single`: one segment per pair, the model (and optimizer) reset at each;
                       `continual`: the same segments, never reset;
                       `mixed`: every (example, pair) of all pairs pooled and shuffled, one
                       span, never reset
  tta.class_order      `shuffled` (each span a seeded permutation) or `runs` (label shift:
                       within a span examples arrive class by class, the class order and the
                       order inside a class seeded)
  tta.prepared         "" (corrupt on device), or a prepared TFDS family of corrupted test
                       sets read instead, `<prepared>/<corruption>_<severity>` (e.g.
                       `cifar10_corrupted`: all 15 + 4 extra CIFAR-10-C corruptions, built by
                       the user with `tfds build cifar10_corrupted`); its names are TFDS's
  tta.corruption_seed  the corruptions' randomness: key(corruption_seed) folded with the pair
                       and the example, so every run and method sees the same corrupted test
                       set (as the released CIFAR-10-C arrays) while `seed` orders the stream

Each (example, pair) is counted exactly once. A span whose length is not a multiple of the
batch size ends with a batch completed by the span's first examples again: they take part in
the adaptation (BatchNorm statistics, the loss) but carry `counted = 0`, so no example is
scored twice. Batch size 1 is allowed (BN-adapt and Tent are known to fail there).

Evaluation splits: `stream`, the last reset span (the whole stream unless `single`) scored
again after the stream with the final state (offline accuracy), and `test`, the clean test
split. The task's `start_data` is the clean training split (CAFe's source statistics).
"""

import functools
import hashlib
import math
from typing import Dict, List, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxlab.data import corruptions, loading, tasks
from jaxlab.errors import UserError, unknown
from jaxlab.train import sharding

PROTOCOLS = ("single", "continual", "mixed")
CLASS_ORDERS = ("shuffled", "runs")
CORRUPTION_TAG = 2000  # the corruption root: fold_in(key(tta.corruption_seed), 2000)
STREAM = "stream"


def prepared_names(prepared: str) -> List[str]:
  """The corruptions of a prepared TFDS family (its builder configs `<name>_<severity>`)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    builder = tfds.builder_cls(prepared)
  except Exception:  # pylint: disable=broad-except  (tfds raises several kinds)
    raise UserError(f"tta.prepared={prepared!r} is not a TFDS dataset (e.g. "
                    "cifar10_corrupted)") from None
  configs = getattr(builder, "BUILDER_CONFIGS", [])
  names = sorted({c.name.rsplit("_", 1)[0] for c in configs if c.name[-1:].isdigit()})
  if not names:
    raise UserError(f"tta.prepared={prepared!r} has no <corruption>_<severity> configs")
  return names


def parse_pairs(tta) -> List[Tuple[str, int]]:
  """The (corruption, severity) pairs of `config.tta`, severity-major."""
  prepared = tta.get("prepared", "")
  valid = prepared_names(prepared) if prepared else corruptions.names(tta.corruption_set)
  chosen = [n.strip() for n in tta.corruptions.split(",") if n.strip()] or valid
  if prepared:
    bad = [n for n in chosen if n not in valid]
    if bad:
      raise UserError(f"tta.corruptions: {bad[0]!r} is not in {prepared!r}; valid: "
                      + ", ".join(valid))
  else:
    corruptions.check(tta.corruption_set, chosen)
  try:
    severities = [int(s) for s in str(tta.severities).split(",") if s.strip()]
  except ValueError:
    severities = []
  if not severities or any(not 1 <= s <= 5 for s in severities):
    raise UserError(f"tta.severities={tta.severities!r} is not valid: comma-separated "
                    "integers in 1..5, e.g. '5' or '5,4,3,2,1'")
  return [(name, s) for s in severities for name in chosen]


def pair_id(corruption_set: str, name: str, severity: int) -> int:
  """A number per (corruption, severity) of the set, independent of which pairs a run uses."""
  return corruptions.names(corruption_set).index(name) * 5 + severity - 1


def _span_order(labels: np.ndarray, rows: np.ndarray, class_order: str,
                rng: np.random.Generator) -> np.ndarray:
  """Positions into `rows` in the span's arrival order."""
  if class_order == "shuffled":
    return rng.permutation(len(rows))
  classes = rng.permutation(np.unique(labels[rows]))
  return np.concatenate([rng.permutation(np.flatnonzero(labels[rows] == c)) for c in classes])


def build_plan(labels: np.ndarray, num_pairs: int, batch_size: int, protocol: str,
               class_order: str, seed: int) -> Dict[str, np.ndarray]:
  """The stream: per step t and slot b, `rows[t, b]` (test example), `pairs[t, b]` (index
  into the run's pairs), `counted[t, b]` (0 for a span's completing repeats), and per step
  `reset[t]` (the state goes back to the source before step t) and `span[t]`."""
  if protocol not in PROTOCOLS:
    raise unknown("protocol (tta.protocol)", protocol, PROTOCOLS)
  if class_order not in CLASS_ORDERS:
    raise unknown("class order (tta.class_order)", class_order, CLASS_ORDERS)
  rng = np.random.default_rng([seed, CORRUPTION_TAG])
  n = len(labels)
  examples = np.arange(n)
  if protocol == "mixed":
    spans = [(np.tile(examples, num_pairs), np.repeat(np.arange(num_pairs), n))]
  else:
    spans = [(examples, np.full(n, p)) for p in range(num_pairs)]
  rows, pairs, counted, reset, span_of = [], [], [], [], []
  for index, (span_rows, span_pairs) in enumerate(spans):
    order = _span_order(labels, span_rows, class_order, rng)
    span_rows, span_pairs = span_rows[order], span_pairs[order]
    steps = math.ceil(len(span_rows) / batch_size)
    fill = steps * batch_size - len(span_rows)
    take = np.arange(steps * batch_size) % len(span_rows)  # the completing repeats wrap round
    rows.append(span_rows[take].reshape(steps, batch_size))
    pairs.append(span_pairs[take].reshape(steps, batch_size))
    counted.append(np.concatenate([np.ones(len(span_rows)), np.zeros(fill)]).reshape(
        steps, batch_size))
    reset.append(np.arange(steps) == 0 if (protocol == "single" or index == 0) else
                 np.zeros(steps, bool))
    span_of.append(np.full(steps, index))
  return {"rows": np.concatenate(rows).astype(np.int32),
          "pairs": np.concatenate(pairs).astype(np.int32),
          "counted": np.concatenate(counted).astype(np.float32),
          "reset": np.concatenate(reset).astype(bool),
          "span": np.concatenate(span_of).astype(np.int32)}


def plan_digest(plan: Dict[str, np.ndarray]) -> str:
  h = hashlib.sha1()
  for key in sorted(plan):
    h.update(key.encode())
    h.update(np.ascontiguousarray(plan[key]).tobytes())
  return h.hexdigest()[:16]


class AdaptationTask(tasks.SupervisedTask):
  """The test split of `config.data` as a corrupted stream (see the module docstring)."""

  def __init__(self, config, num_devices: int = 1):
    if config.data.get("pipeline", "auto") == "stream":
      raise UserError("test-time adaptation holds its test split on the device: run it with "
                      "data.pipeline=device or auto")
    self._tta = tta = config.tta
    self.pairs = parse_pairs(tta)
    self.corruption_set = tta.corruption_set
    self.test_split = tta.test_split
    self.prepared = tta.get("prepared", "")
    super().__init__(config, num_devices)
    labels = self._stream_arrays()["label"]
    labels = labels[0] if self.prepared else labels
    self.plan = build_plan(labels, len(self.pairs), self.batch_size, tta.protocol,
                           tta.class_order, config.seed)
    self.fixed_steps = len(self.plan["reset"])
    if config.train.steps not in (-1, self.fixed_steps):
      raise UserError(f"train.steps={config.train.steps}, but the adaptation stream has "
                      f"{self.fixed_steps} batches; set train.steps=-1 (the stream's length)")
    self.homogeneous = tta.protocol != "mixed"  # one pair per batch: only its branch runs
    ids = [pair_id(self.corruption_set, n, s) for n, s in self.pairs] if not self.prepared else (
        list(range(len(self.pairs))))
    self.pair_ids = np.asarray(ids, np.int32)
    self.root = jax.random.fold_in(jax.random.key(tta.corruption_seed), CORRUPTION_TAG)

  def _stream_arrays(self):
    """{"image", "label"} the stream reads: the clean test split (corrupted on device), or
    the prepared sets stacked [pairs, n, ...]."""
    if not self.prepared:
      return self.split_arrays(self.test_split)
    if "prepared" not in self._cache:
      data = self._data
      sets = [loading.load_split(f"{self.prepared}/{n}_{s}", self.test_split,
                                 data.data_dir or None, data.download) for n, s in self.pairs]
      sizes = {len(t[data.label_key]) for t in sets}
      if len(sizes) > 1:
        raise UserError(f"the {self.prepared} sets differ in size ({sorted(sizes)}); the "
                        "stream needs the same test examples under every corruption")
      images = [t[data.image_key] for t in sets]
      self._cache["prepared"] = {"image": np.stack(images),
                                 "label": np.stack([t[data.label_key] for t in sets]).astype(
                                     np.int32)}
    return self._cache["prepared"]

  def stream_batch(self, data, rows: jax.Array, pairs: jax.Array, homogeneous: bool):
    """(float images, labels) of the stream's (row, pair) examples."""
    if self.prepared:
      return (data["image"][pairs, rows].astype(jnp.float32) / 255.0,
              data["label"][pairs, rows])
    return self.corrupt(data["image"][rows], rows, pairs, homogeneous), data["label"][rows]

  # -- corruption ---------------------------------------------------------------------------
  def corrupt(self, images: jax.Array, rows: jax.Array, pairs: jax.Array,
              homogeneous: bool) -> jax.Array:
    """uint8 images [B, H, W, C] of test `rows`, each corrupted by its pair (float [0, 1])."""
    ids = jnp.asarray(self.pair_ids)[pairs]
    keys = jax.vmap(lambda p, r: jax.random.fold_in(jax.random.fold_in(self.root, p), r))(
        ids, rows)
    if homogeneous:
      branches = [functools.partial(self._corrupt_batch, name=n, severity=s)
                  for n, s in self.pairs]
      return jax.lax.switch(pairs[0], branches, images, keys)
    one = lambda image, key, index: corruptions.switch_corrupt(
        image, key, self.corruption_set, self.pairs, index)
    return jax.vmap(one)(images, keys, pairs)

  def _corrupt_batch(self, images, keys, *, name: str, severity: int):
    return jax.vmap(lambda im, k: corruptions.corrupt(im, k, self.corruption_set, name,
                                                      severity))(images, keys)

  # -- the stream (training) ----------------------------------------------------------------
  def _device_train(self, mesh):
    if getattr(self, "_on_device", None) is None:
      test = self._stream_arrays()
      self._on_device = sharding.put_replicated(
          {"image": test["image"], "label": test["label"],
           **{k: v for k, v in self.plan.items()}}, mesh)
    return self._on_device

  def start_data(self, mesh):
    if getattr(self, "_start_on_device", None) is None:
      self._start_on_device = sharding.put_replicated(self.train_arrays(), mesh)
    return self._start_on_device

  def train_batch(self, data, key: jax.Array, step: jax.Array):
    del key  # the order is the plan's; the corruptions have their own root
    rows, pairs = data["rows"][step], data["pairs"][step]
    images, labels = self.stream_batch(data, rows, pairs, self.homogeneous)
    return {"image": images, "label": labels, "pair": pairs, "counted": data["counted"][step],
            "reset": data["reset"][step]}

  # -- evaluation ---------------------------------------------------------------------------
  def last_span(self) -> Tuple[np.ndarray, np.ndarray]:
    """(rows, pairs) counted in the last reset span: what the final state adapted on."""
    last = np.flatnonzero(self.plan["reset"])[-1]
    keep = self.plan["counted"][last:] > 0
    return self.plan["rows"][last:][keep], self.plan["pairs"][last:][keep]

  def eval_arrays(self, split: str):
    """The split (or, for `stream`, the last span's rows and pairs) padded to whole batches
    by wrapping round, not with blank images: methods that normalise with the evaluation
    batch's statistics would see them; the padding has mask 0."""
    test = self._stream_arrays() if split == STREAM else self.split_arrays(split)
    rows, pairs = self.last_span() if split == STREAM else (
        np.arange(len(test["label"])), np.zeros(len(test["label"]), np.int32))
    n = len(rows)
    padded = self.eval_batch_size * max(1, math.ceil(n / self.eval_batch_size))
    wrap = np.arange(padded) % n
    out = {"image": test["image"], "label": test["label"], "rows": rows[wrap],
           "mask": (np.arange(padded) < n).astype(np.float32)}
    if split == STREAM:
      out["pairs"] = pairs[wrap]
    return out

  def num_eval_batches(self, data) -> int:
    return data["mask"].shape[0] // self.eval_batch_size

  def eval_batch(self, data, index: jax.Array):
    take = lambda a: jax.lax.dynamic_slice_in_dim(a, index * self.eval_batch_size,
                                                  self.eval_batch_size)
    rows, mask = take(data["rows"]), take(data["mask"])
    if "pairs" not in data:  # a clean split
      return {"image": data["image"][rows].astype(jnp.float32) / 255.0,
              "label": data["label"][rows], "mask": mask}
    pairs = take(data["pairs"])
    homogeneous = self._tta.protocol == "single"  # the last span is one pair
    images, labels = self.stream_batch(data, rows, pairs, homogeneous)
    return {"image": images, "label": labels, "pair": pairs, "mask": mask}

  def split_arrays(self, split: str):
    if split == STREAM:
      raise UserError("the 'stream' split is built from the test stream, not read")
    return super().split_arrays(split)

  def describe(self) -> Dict[str, object]:
    """What results.json records about the stream."""
    return {"stream/steps": self.fixed_steps, "stream/sha1": plan_digest(self.plan),
            "stream/examples": int(self.plan["counted"].sum()),
            "stream/pairs": ",".join(f"{n}@{s}" for n, s in self.pairs)}
