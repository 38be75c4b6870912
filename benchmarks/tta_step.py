"""Milliseconds per Tent step on a CIFAR ResNet-18, jaxlab vs the official Tent loop in
PyTorch, same run.

Shape: 32x32x3 input, ResNet-18 (CIFAR stem, 11.2 M parameters, 10 classes), batch 200 (the
official CIFAR-10-C config; `--batch` for a smaller one on CPU). One step: forward with
batch-statistics BatchNorm, mean softmax entropy, gradient w.r.t. the BatchNorm scales and
offsets only, one Adam step (lr 1e-3) on them; the batch's predictions come from the same
forward.

  python benchmarks/tta_step.py [--batch 200] [--steps 5] [--no-torch]

jaxlab's step is `jaxlab.methods.tta.train_step` (method `tent`) jitted as the training loop
jits it. The reference is the Tent loop as the official `tent.py` writes it (model in train
mode, `requires_grad_` only on BatchNorm2d weight/bias, `track_running_stats=False` with the
running buffers dropped, `-(softmax * log_softmax).sum(1).mean(0)`, `loss.backward()`,
`optimizer.step()`, `optimizer.zero_grad()`), on torchvision's ResNet-18 with the CIFAR stem
(3x3 stride-1 first conv, no max-pool); it runs when torch and torchvision are importable
(`pip install -e '.[bench]'`). Prints ms/step after compilation (median of --steps timed
steps), XLA's FLOP count for the step, the achieved GFLOP/s and the ratio torch / jaxlab
(> 1: jaxlab faster).
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


def make_batch(batch: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  return {"image": rng.uniform(size=(batch, 32, 32, 3)).astype(np.float32),
          "label": rng.integers(0, 10, batch).astype(np.int32)}


def time_jax(batch: int, steps: int):
  config = jaxlab.load_config("configs/tta.py:cifar10,method=tent", {"train.batch_size": batch})
  method = jaxlab.get_method("tent")
  spec = Spec(input_shape=(32, 32, 3), num_classes=10)
  state = method.init(config, jax.random.key(0), spec)
  data = make_batch(batch)
  inputs = jax.device_put({**data, "pair": np.zeros(batch, np.int32),
                           "counted": np.ones(batch, np.float32), "reset": np.asarray(False)})
  step = jax.jit(lambda s, b: method.train_step(s, b, jax.random.key(0), config=config,
                                                spec=spec))
  r = timing.time_step(step, state, inputs, steps)
  return {**r, "loss": float(r["metrics"]["loss"])}


def time_torch(batch: int, steps: int):
  import torch  # pylint: disable=g-import-not-at-top
  import torchvision  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  model = torchvision.models.resnet18(num_classes=10)
  model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
  model.maxpool = nn.Identity()
  # tent.configure_model + collect_params
  model.train()
  model.requires_grad_(False)
  params = []
  for m in model.modules():
    if isinstance(m, nn.BatchNorm2d):
      m.requires_grad_(True)
      m.track_running_stats = False
      m.running_mean = None
      m.running_var = None
      params += [m.weight, m.bias]
  optimizer = torch.optim.Adam(params, lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0)
  x = torch.from_numpy(make_batch(batch)["image"]).permute(0, 3, 1, 2).contiguous()

  def forward_and_adapt():  # tent.forward_and_adapt
    outputs = model(x)
    loss = -(outputs.softmax(1) * outputs.log_softmax(1)).sum(1).mean(0)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return outputs, float(loss)

  forward_and_adapt()
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    _, loss = forward_and_adapt()
    times.append(time.perf_counter() - t0)
  return {"ms": 1e3 * statistics.median(times), "loss": loss, "threads": torch.get_num_threads()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=200)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--no-torch", action="store_true")
  args = parser.parse_args()
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"{os.cpu_count()} CPU cores; jax {jax.__version__}")
  print(f"shape: ResNet-18 (CIFAR stem), 32x32x3, batch {args.batch}, Tent (BN affine, Adam)")
  r = time_jax(args.batch, args.steps)
  print(f"jaxlab tent step   {r['ms']:9.1f} ms/step  (compile {r['compile_s']:.1f} s, "
        f"{r['gflop']:.1f} GFLOP, {r['gflop'] / r['ms'] * 1e3:.1f} GFLOP/s)")
  try:
    if args.no_torch:
      raise ImportError
    t = time_torch(args.batch, args.steps)
  except ImportError:
    print("torch/torchvision not importable: no reference timing (pip install -e '.[bench]')")
    return
  print(f"official Tent loop {t['ms']:9.1f} ms/step  ({t['threads']} threads, "
        f"{r['gflop'] / t['ms'] * 1e3:.1f} GFLOP/s at jaxlab's FLOP count)")
  print(f"ratio torch / jaxlab: {t['ms'] / r['ms']:.2f}")


if __name__ == "__main__":
  main()
