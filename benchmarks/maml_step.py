"""Milliseconds per second-order MAML meta-step, jaxlab vs a torch.func reference, same run.

Shape (Omniglot, MAML's Conv-4): 28x28x1 input, Conv-4 with 64 filters, stride-2
3x3 convs, batch-statistics BatchNorm, 5-way 1-shot, 5 queries per class,
meta-batch 32, 1 inner step (alpha 0.4), Adam outer step.

  python benchmarks/maml_step.py [--steps 5] [--parallel vmap,map,unroll] [--no-torch]

jaxlab's step is `jaxlab.methods.maml.train_step` jitted as the training loop
jits it (no special benchmark path). The reference is the same step in PyTorch
written with `torch.func` (functional_call + grad), looping over tasks; it runs
only when torch is importable (`pip install -e '.[bench]'`). Prints ms/step
after compilation (median of --steps timed steps), XLA's FLOP count and bytes
accessed for the step, the achieved GFLOP/s, peak temporary memory, and the
ratio torch / jaxlab (> 1: jaxlab faster).
"""

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jaxlab  # pylint: disable=wrong-import-position
import timing  # pylint: disable=wrong-import-position  (benchmarks/timing.py)
from jaxlab.data.tasks import Spec  # pylint: disable=wrong-import-position

WAYS, SHOTS, QUERIES, META_BATCH, ALPHA, FILTERS = 5, 1, 5, 32, 0.4, 64
QUERIES = int(os.environ.get("BENCH_QUERIES", QUERIES))  # the glyphs presets use 1


def make_batch(seed: int = 0):
  rng = np.random.default_rng(seed)
  def split(k):
    x = rng.uniform(size=(META_BATCH, WAYS * k, 28, 28, 1)).astype(np.float32)
    y = np.tile(np.repeat(np.arange(WAYS), k), (META_BATCH, 1)).astype(np.int32)
    return {"x": x, "y": y}
  return {"support": split(SHOTS), "query": split(QUERIES)}


def time_jax(parallel: str, steps: int):
  config = jaxlab.load_config("configs/maml.py:glyphs_5w1s", {
      "meta.task_parallel": parallel, "meta.inner_lr": ALPHA, "meta.train_steps": 1,
      "model.filters": FILTERS})
  method = jaxlab.get_method("maml")
  spec = Spec(input_shape=(28, 28, 1), num_classes=WAYS)
  state = method.init(config, jax.random.key(0), spec)
  batch = jax.device_put(make_batch())
  step = jax.jit(lambda s, b: method.train_step(s, b, jax.random.key(0), config=config,
                                                spec=spec))
  r = timing.time_step(step, state, batch, steps)
  return {**r, "loss": float(r["metrics"]["loss"])}


def time_torch(steps: int):
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  from torch.func import functional_call, grad  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  layers = []
  for i in range(4):
    layers += [nn.Conv2d(1 if i == 0 else FILTERS, FILTERS, 3, stride=2, padding=1),
               nn.BatchNorm2d(FILTERS, track_running_stats=False), nn.ReLU()]
  body = nn.Sequential(*layers)
  head = nn.Linear(FILTERS, WAYS)

  class Net(nn.Module):
    def __init__(self):
      super().__init__()
      self.body, self.head = body, head

    def forward(self, x):
      return self.head(self.body(x).mean((2, 3)))

  net = Net()
  params = {k: v for k, v in net.named_parameters()}
  opt = torch.optim.Adam(params.values(), lr=1e-3)
  batch = make_batch()
  to_t = lambda a: torch.from_numpy(np.ascontiguousarray(a))
  xs = to_t(batch["support"]["x"]).permute(0, 1, 4, 2, 3).contiguous()
  xq = to_t(batch["query"]["x"]).permute(0, 1, 4, 2, 3).contiguous()
  ys, yq = to_t(batch["support"]["y"]).long(), to_t(batch["query"]["y"]).long()
  loss_fn = nn.functional.cross_entropy

  def inner_loss(p, x, y):
    return loss_fn(functional_call(net, p, (x,)), y)

  def meta_step():
    opt.zero_grad()
    total = 0.0
    for t in range(META_BATCH):
      g = grad(inner_loss)(params, xs[t], ys[t])  # differentiable: second order
      adapted = {k: params[k] - ALPHA * g[k] for k in params}
      total = total + loss_fn(functional_call(net, adapted, (xq[t],)), yq[t])
    loss = total / META_BATCH
    loss.backward()
    opt.step()
    return float(loss)

  meta_step()
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    loss = meta_step()
    times.append(time.perf_counter() - t0)
  return {"ms": 1e3 * statistics.median(times), "loss": loss, "threads": torch.get_num_threads()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--parallel", default="auto,vmap,map")
  parser.add_argument("--no-torch", action="store_true")
  args = parser.parse_args()
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"{os.cpu_count()} CPU cores; jax {jax.__version__}")
  print(f"shape: Conv-4 x{FILTERS}, 28x28x1, {WAYS}-way {SHOTS}-shot, {QUERIES} queries, "
        f"meta-batch {META_BATCH}, 1 inner step, second order")
  results = {}
  for parallel in args.parallel.split(","):
    r = time_jax(parallel, args.steps)
    results[parallel] = r
    print(f"jaxlab task_parallel={parallel:7s} {r['ms']:8.1f} ms/step  "
          f"(compile {r['compile_s']:.1f} s, {r['gflop']:.1f} GFLOP, {r['gbytes']:.1f} GB accessed, "
          f"{r['gflop'] / r['ms'] * 1e3:.1f} GFLOP/s, temp memory {r['temp_mib']:.0f} MiB)")
  best = min(results, key=lambda k: results[k]["ms"])
  try:
    if args.no_torch:
      raise ImportError
    t = time_torch(args.steps)
  except ImportError:
    print("torch not importable: no reference timing (pip install -e '.[bench]')")
    return
  print(f"torch.func reference           {t['ms']:8.1f} ms/step  ({t['threads']} threads)")
  print(f"ratio torch / jaxlab ({best}): {t['ms'] / results[best]['ms']:.2f}")


if __name__ == "__main__":
  main()
