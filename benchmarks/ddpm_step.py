"""Milliseconds per DDPM training step of the 32x32 U-Net, jaxlab vs the same step written in
PyTorch, same run.

Shape: 32x32x3 images, batch 128, 10 classes + the null class; the U-Net of
configs/ddpm.py:glyphs_color32 (64 channels x (1, 2, 2), 2 residual blocks a level, group
norm, self-attention at 8x8 and in the middle, sinusoidal time and class embeddings;
`--channels` for a narrower one); T = 1000. One step: t uniform, noise, label dropout 0.1, the
simple loss ||eps - eps_theta||^2, gradients of every parameter, gradient clipping at norm 1
and one Adam step (lr 2e-4), then the EMA update (0.999) of the weights.

  python benchmarks/ddpm_step.py [--batch 128] [--steps 3] [--channels 64] [--no-torch]

jaxlab's step is `jaxlab.methods.diffusion.train_step` (method `ddpm`) jitted as the training
loop jits it. The reference is the same network in torch.nn (the same layers in the same
order: the script prints both parameter counts, which must agree) with the same loss, clip,
Adam and EMA, in eager mode (float32, torch's default threads). It runs when torch is
importable (`pip install -e '.[bench]'`). Prints ms/step after compilation (median of
--steps timed steps), XLA's FLOP count for the step, the achieved GFLOP/s and the ratio
torch / jaxlab (> 1: jaxlab faster).
"""

import argparse
import math
import os
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jaxlab  # pylint: disable=wrong-import-position
import timing  # pylint: disable=wrong-import-position  (benchmarks/timing.py)
from jaxlab.data.tasks import Spec  # pylint: disable=wrong-import-position

NUM_CLASSES = 10


def make_batch(batch: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  return {"image": rng.uniform(size=(batch, 32, 32, 3)).astype(np.float32),
          "label": rng.integers(0, NUM_CLASSES, batch).astype(np.int32)}


def _config(batch: int, channels: int):
  return jaxlab.load_config("configs/ddpm.py:glyphs_color32", {
      "train.batch_size": batch, "model.channels": channels})


def time_jax(batch: int, steps: int, channels: int):
  config = _config(batch, channels)
  method = jaxlab.get_method("ddpm")
  spec = Spec(input_shape=(32, 32, 3), num_classes=NUM_CLASSES)
  state = method.init(config, jax.random.key(0), spec)
  step = jax.jit(lambda s, b: method.train_step(s, b, jax.random.fold_in(jax.random.key(0),
                                                                          s.step),
                                                config=config, spec=spec))
  r = timing.time_step(step, state, jax.device_put(make_batch(batch)), steps)
  params = sum(x.size for x in jax.tree.leaves(state.params))
  return {**r, "loss": float(r["metrics"]["loss"]), "params": params}


def torch_unet(channels: int, multipliers=(1, 2, 2), res_blocks=2, attention=(8,),
               image_channels=3, num_classes=NUM_CLASSES):
  """jaxlab.models.unet.UNet in torch.nn, layer for layer."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top

  def groups(c):
    return next(g for g in (32, 16, 8, 4, 2, 1) if c % g == 0 and c // g >= 4 or g == 1)

  def embedding(t, dim):
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(angles), torch.cos(angles)], -1)

  class ResBlock(nn.Module):
    def __init__(self, cin, cout, emb):
      super().__init__()
      self.norm1, self.conv1 = nn.GroupNorm(groups(cin), cin), nn.Conv2d(cin, cout, 3, padding=1)
      self.emb = nn.Linear(emb, cout)
      self.norm2, self.conv2 = nn.GroupNorm(groups(cout), cout), nn.Conv2d(cout, cout, 3, padding=1)
      self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x, e):
      h = self.conv1(nn.functional.silu(self.norm1(x)))
      h = h + self.emb(nn.functional.silu(e))[:, :, None, None]
      h = self.conv2(nn.functional.silu(self.norm2(h)))
      return self.skip(x) + h

  class Attention(nn.Module):
    def __init__(self, c):
      super().__init__()
      self.norm = nn.GroupNorm(groups(c), c)
      self.q, self.k, self.v, self.out = (nn.Linear(c, c) for _ in range(4))

    def forward(self, x):
      b, c, h, w = x.shape
      y = self.norm(x).flatten(2).transpose(1, 2)
      q, k, v = self.q(y), self.k(y), self.v(y)
      weights = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(c), -1)
      return x + self.out(weights @ v).transpose(1, 2).reshape(b, c, h, w)

  class UNet(nn.Module):
    def __init__(self):
      super().__init__()
      emb = 4 * channels
      self.t1, self.t2 = nn.Linear(emb, emb), nn.Linear(emb, emb)
      self.cls = nn.Linear(num_classes + 1, emb, bias=False)
      self.conv_in = nn.Conv2d(image_channels, channels, 3, padding=1)
      self.down, skips, c, size = nn.ModuleList(), [channels], channels, 32
      for level, mult in enumerate(multipliers):
        for _ in range(res_blocks):
          self.down.append(ResBlock(c, channels * mult, emb))
          c = channels * mult
          if size in attention:
            self.down.append(Attention(c))
          skips.append(c)
        if level != len(multipliers) - 1:
          self.down.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
          skips.append(c)
          size //= 2
      self.mid = nn.ModuleList([ResBlock(c, c, emb), Attention(c), ResBlock(c, c, emb)])
      self.up = nn.ModuleList()
      for level, mult in reversed(list(enumerate(multipliers))):
        for _ in range(res_blocks + 1):
          self.up.append(ResBlock(c + skips.pop(), channels * mult, emb))
          c = channels * mult
          if size in attention:
            self.up.append(Attention(c))
        if level:
          self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))
          self.up.append(nn.Conv2d(c, c, 3, padding=1))
          size *= 2
      self.norm_out = nn.GroupNorm(groups(c), c)
      self.conv_out = nn.Conv2d(c, image_channels, 3, padding=1)

    def forward(self, x, t, cond):
      e = self.t2(nn.functional.silu(self.t1(embedding(t, self.t1.in_features))))
      e = e + self.cls(cond)
      h = self.conv_in(x)
      hs = [h]
      for layer in self.down:
        if isinstance(layer, ResBlock):
          h = layer(h, e)
          hs.append(h)
        elif isinstance(layer, Attention):
          h = layer(h)
          hs[-1] = h
        else:
          h = layer(h)
          hs.append(h)
      h = self.mid[2](self.mid[1](self.mid[0](h, e)), e)
      for layer in self.up:
        h = layer(torch.cat([h, hs.pop()], 1), e) if isinstance(layer, ResBlock) else layer(h)
      return self.conv_out(nn.functional.silu(self.norm_out(h)))

  return UNet()


def time_torch(batch: int, steps: int, channels: int):
  import copy  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  model = torch_unet(channels)
  ema = copy.deepcopy(model).requires_grad_(False)
  optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)
  betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
  alpha_bars = torch.cumprod(torch.cat([torch.zeros(1, dtype=torch.float64), betas]).neg_().add_(1),
                             0).float()
  data = make_batch(batch)
  x0 = torch.from_numpy(data["image"]).permute(0, 3, 1, 2).contiguous() * 2 - 1
  labels = torch.from_numpy(data["label"]).long()

  def step():
    t = torch.randint(1, 1001, (batch,))
    eps = torch.randn_like(x0)
    ab = alpha_bars[t][:, None, None, None]
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    dropped = torch.rand(batch) < 0.1
    cond = torch.nn.functional.one_hot(torch.where(dropped, NUM_CLASSES, labels),
                                       NUM_CLASSES + 1).float()
    loss = ((model(x_t, t, cond) - eps) ** 2).mean()
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    with torch.no_grad():
      for e, p in zip(ema.parameters(), model.parameters()):
        e.mul_(0.999).add_(p, alpha=0.001)
    return float(loss.detach())

  step()
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    loss = step()
    times.append(time.perf_counter() - t0)
  params = sum(p.numel() for p in model.parameters())
  return {"ms": 1e3 * statistics.median(times), "loss": loss, "params": params,
          "threads": torch.get_num_threads()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--channels", type=int, default=64)
  parser.add_argument("--no-torch", action="store_true")
  args = parser.parse_args()
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"{os.cpu_count()} CPU cores; jax {jax.__version__}")
  print(f"shape: U-Net {args.channels} x (1, 2, 2), 32x32x3, batch {args.batch}, DDPM step "
        "(loss, clip, Adam, EMA)")
  r = time_jax(args.batch, args.steps, args.channels)
  print(f"jaxlab ddpm step   {r['ms']:9.1f} ms/step  (compile {r['compile_s']:.1f} s, "
        f"{r['gflop']:.1f} GFLOP, {r['gflop'] / r['ms'] * 1e3:.1f} GFLOP/s, "
        f"{r['params']:,} parameters)")
  try:
    if args.no_torch:
      raise ImportError
    t = time_torch(args.batch, args.steps, args.channels)
  except ImportError:
    print("torch not importable: no reference timing (pip install -e '.[bench]')")
    return
  print(f"torch ddpm step    {t['ms']:9.1f} ms/step  ({t['threads']} threads, "
        f"{r['gflop'] / t['ms'] * 1e3:.1f} GFLOP/s at jaxlab's FLOP count, "
        f"{t['params']:,} parameters)")
  print(f"ratio torch / jaxlab: {t['ms'] / r['ms']:.2f}")


if __name__ == "__main__":
  main()
