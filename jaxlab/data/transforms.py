"""Host-side per-example image transforms, written as a preprocessing string.

`data.train_pp` and `data.eval_pp` are '|'-joined ops, big_vision style, applied in order to
one decoded image (uint8 HWC, any size) in the input workers:

  resize(S)                      squash to S x S
  resize_small(S)                shorter side to S, aspect kept (torchvision Resize(S))
  central_crop(S)                the centred S x S crop (torchvision CenterCrop(S))
  random_resized_crop(S[, smin, smax[, rmin, rmax]])
                                 torchvision RandomResizedCrop(S, scale=(smin, smax),
                                 ratio=(rmin, rmax)); defaults (0.08, 1) and (3/4, 4/3)
  flip_lr                        left-right flip with probability 1/2
  grayscale                      ITU-R 601 luma, one channel

So torchvision's ImageNet recipe is `random_resized_crop(224)|flip_lr` for training and
`resize_small(256)|central_crop(224)` for evaluation. Resizing is Pillow's bilinear filter
(antialiased when shrinking), as torchvision's transforms on PIL images. Images stay uint8:
the models normalise (`model.mean`, `model.std`; ImageNet's are `IMAGENET_MEAN`/`_STD` in
[0, 1] units), so attacks and generators keep working in pixel space.

Randomness: a random op draws from the numpy Generator it is given; the streaming input
builds it from (seed, step, position in the global batch), so a batch does not depend on the
number of workers or processes, and a resumed run draws what an uninterrupted one drew.
"""

import math
import re
from typing import Callable, List, Sequence, Tuple

import numpy as np
from PIL import Image

from jaxlab.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Op = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _pil(image: np.ndarray) -> Image.Image:
  return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def _array(image: Image.Image, channels: int) -> np.ndarray:
  out = np.asarray(image)
  return out.reshape(out.shape[0], out.shape[1], channels)


def resize_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """Pillow bilinear resize of an HWC uint8 image."""
  if image.shape[:2] == (height, width):
    return image
  return _array(_pil(image).resize((width, height), Image.BILINEAR), image.shape[-1])


def resize_small(image: np.ndarray, size: int) -> np.ndarray:
  """Shorter side to `size`; the longer one to int(size * long / short), as torchvision."""
  h, w = image.shape[:2]
  if h <= w:
    return resize_to(image, size, int(size * w / h))
  return resize_to(image, int(size * h / w), size)


def central_crop(image: np.ndarray, size: int) -> np.ndarray:
  """torchvision CenterCrop: offsets round((H - S) / 2); a smaller image is zero-padded."""
  h, w = image.shape[:2]
  if h < size or w < size:
    pad_h, pad_w = max(size - h, 0), max(size - w, 0)
    image = np.pad(image, ((pad_h // 2, (pad_h + 1) // 2), (pad_w // 2, (pad_w + 1) // 2),
                           (0, 0)))
    h, w = image.shape[:2]
  top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
  return image[top:top + size, left:left + size]


def random_resized_crop_box(height: int, width: int, rng: np.random.Generator,
                            scale: Tuple[float, float] = (0.08, 1.0),
                            ratio: Tuple[float, float] = (3 / 4, 4 / 3)) -> Tuple[int, ...]:
  """(top, left, h, w) of torchvision's RandomResizedCrop.get_params: ten tries at an area
  fraction ~ U(scale) and a log-uniform aspect ratio, then the centred crop of the whole
  image clamped to the ratio range."""
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    h, w = height, int(round(height * max(ratio)))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(image: np.ndarray, rng: np.random.Generator, size: int,
                        scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> np.ndarray:
  top, left, h, w = random_resized_crop_box(image.shape[0], image.shape[1], rng, scale, ratio)
  # crop, then resize (as torchvision's resized_crop): a resize with `box=` would let the
  # filter read pixels just outside the box
  return resize_to(image[top:top + h, left:left + w], size, size)


def grayscale(image: np.ndarray) -> np.ndarray:
  if image.shape[-1] == 1:
    return image
  luma = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
  return np.round(luma).astype(np.uint8)[..., None]


def flip_lr(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  return image[:, ::-1] if rng.uniform() < 0.5 else image


# name: (number of arguments allowed, whether it draws, builder(args) -> op)
_OPS = {
    "resize": ((1,), False, lambda a: lambda im, _: resize_to(im, int(a[0]), int(a[0]))),
    "resize_small": ((1,), False, lambda a: lambda im, _: resize_small(im, int(a[0]))),
    "central_crop": ((1,), False, lambda a: lambda im, _: central_crop(im, int(a[0]))),
    "random_resized_crop": ((1, 3, 5), True, lambda a: lambda im, rng: random_resized_crop(
        im, rng, int(a[0]), tuple(a[1:3]) or (0.08, 1.0), tuple(a[3:5]) or (3 / 4, 4 / 3))),
    "flip_lr": ((0,), True, lambda a: flip_lr),
    "grayscale": ((0,), False, lambda a: lambda im, _: grayscale(im)),
}
_SYNTAX = re.compile(r"^([a-z_]+)(?:\(([^()]*)\))?$")


def parse(pp: str, field: str = "data.train_pp") -> List[Tuple[str, Tuple[float, ...]]]:
  """[(op, args)] of a preprocessing string, or a UserError naming the bad op."""
  ops = []
  for part in (p.strip() for p in pp.split("|")):
    if not part:
      continue
    match = _SYNTAX.match(part.replace(" ", ""))
    name = match.group(1) if match else part
    if name not in _OPS:
      raise UserError(f"{field}={pp!r}: unknown op {part!r}; valid: "
                      + ", ".join(sorted(_OPS)) + " (e.g. 'random_resized_crop(224)|flip_lr')")
    try:
      args = tuple(float(a) for a in match.group(2).split(",")) if match.group(2) else ()
    except ValueError:
      args = None
    if args is None or len(args) not in _OPS[name][0]:
      counts = " or ".join(str(n) for n in _OPS[name][0])
      raise UserError(f"{field}={pp!r}: {name} takes {counts} numeric arguments, got "
                      f"{part!r}")
    ops.append((name, args))
  return ops


def build(pp: str, field: str = "data.train_pp") -> Callable[[np.ndarray, np.random.Generator],
                                                             np.ndarray]:
  """The op chain of `pp` as one function (image, rng) -> image."""
  chain = [_OPS[name][2](args) for name, args in parse(pp, field)]

  def apply(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
      image = image[..., None]
    for op in chain:
      image = op(image, rng)
    return np.ascontiguousarray(image)
  return apply


def is_random(pp: str) -> bool:
  return any(_OPS[name][1] for name, _ in parse(pp))


def output_size(pp: str) -> int:
  """The side every image leaves `pp` with (0 when the ops do not fix it)."""
  size = 0
  for name, args in parse(pp):
    if name in ("resize", "central_crop", "random_resized_crop"):
      size = int(args[0])
    elif name == "resize_small":
      size = 0
  return size


def legacy_pp(image_size: int, grayscale_: bool) -> str:
  """The preprocessing string of the device path's `data.image_size` / `data.grayscale`."""
  ops = (["grayscale"] if grayscale_ else []) + ([f"resize({image_size})"] if image_size else [])
  return "|".join(ops)


def random_for(seed: int, step: int, position: int, tag: int) -> np.random.Generator:
  """The Generator of one example: position `position` of the global batch of `step`."""
  return np.random.default_rng([seed, tag, step, position])


def stack(images: Sequence[np.ndarray], field: str) -> np.ndarray:
  shapes = {im.shape for im in images}
  if len(shapes) > 1:
    shown = ", ".join(map(str, sorted(shapes)[:3]))
    raise UserError(f"images leave {field} in different shapes ({shown}, ...); end it with a "
                    "fixed size, e.g. central_crop(224) or resize(224)")
  return np.stack(images)
