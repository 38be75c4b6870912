"""`glyphs`: an offline, Omniglot-shaped few-shot dataset rendered from fonts.

Characters of 15 scripts (alphabets) are rendered from the TrueType faces that
ship inside the matplotlib wheel (DejaVu Sans / Serif / Sans Mono and
STIXGeneral, four cuts each), with a random covering face, size, rotation,
shift, stroke width and pixel noise per instance; 20 instances per character.
This is the Omniglot stand-in of docs/specs/meta_learning_and_sparse.md
§1(g) (Omniglot itself: Lake et al. 2015).

Which characters are used, and why:
  * letters (Unicode category L*) of the scripts in `SCRIPTS`, recognised by
    the first words of their Unicode name;
  * a face counts as covering a character only if its cmap maps the code point
    AND the rendering has ink and differs from that face's .notdef box
    (`LastResortHE`, which draws a placeholder for everything, is not used);
  * near-duplicates are dropped: each character is rendered once in its first
    covering face, cropped to its ink, scaled to 16x16 and binarised; a
    character within 6 of 256 pixels of an earlier one (scripts in `SCRIPTS`
    order) is a homoglyph (Latin A, Greek Alpha, Cyrillic A) and is dropped, so
    no class of a test alphabet looks like a training class.
This gives 2,359 characters from 15 scripts (see `character_table()`).

Builder configs:
  * `default`: 28x28x1 uint8 (ink high), splits `train` / `validation` / `test`
    disjoint by alphabet (~60/15/25 % of classes, `SPLIT_OF_SCRIPT`).
  * `color32`: 32x32x3 uint8 with random foreground and background colours,
    every character, split by instance (16 `train`, 4 `test` per character):
    a CIFAR-shaped offline stand-in.

Every random draw comes from numpy generators seeded by (config, code point,
instance), so a build gives the same bytes every time and in any process.
"""

import concurrent.futures
import functools
import multiprocessing
import os
import unicodedata
from typing import Dict, List, Sequence, Tuple

import numpy as np
import tensorflow_datasets as tfds

SCRIPTS = (
    "LATIN", "ARABIC", "CYRILLIC", "NKO", "OLD ITALIC", "OGHAM", "LISU",
    "GREEK", "GEORGIAN", "COPTIC",
    "CANADIAN SYLLABICS", "ARMENIAN", "HEBREW", "TIFINAGH", "LAO",
)
SPLIT_OF_SCRIPT = {
    **{s: "train" for s in ("LATIN", "ARABIC", "CYRILLIC", "NKO", "OLD ITALIC", "OGHAM", "LISU")},
    **{s: "validation" for s in ("GREEK", "GEORGIAN", "COPTIC")},
    **{s: "test" for s in ("CANADIAN SYLLABICS", "ARMENIAN", "HEBREW", "TIFINAGH", "LAO")},
}
FACES = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
)
NUM_CHARACTERS = 2359  # len(character_table()) for this version; checked when building
INSTANCES_PER_CHARACTER = 20
COLOR32_TRAIN_INSTANCES = 16
_HOMOGLYPH_PIXELS = 6
_RENDER_PT = 64          # font size used for every rendering, before rescaling
_OVERSAMPLE = 4          # draw at 4x and box-filter down: anti-aliased strokes


def _font_dir() -> str:
  import matplotlib  # pylint: disable=g-import-not-at-top
  return os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf")


@functools.lru_cache(maxsize=None)
def _font(face: int, size: int = _RENDER_PT):
  from PIL import ImageFont  # pylint: disable=g-import-not-at-top
  return ImageFont.truetype(os.path.join(_font_dir(), FACES[face]), size)


def _draw(ch: str, face: int, stroke: int = 0) -> np.ndarray:
  """Renders one character at _RENDER_PT on a roomy canvas; ink is 255."""
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  image = Image.new("L", (3 * _RENDER_PT, 3 * _RENDER_PT))
  ImageDraw.Draw(image).text((_RENDER_PT, _RENDER_PT // 2), ch, font=_font(face), fill=255,
                             stroke_width=stroke, stroke_fill=255)
  return np.asarray(image)


def _script_of(ch: str):
  name = unicodedata.name(ch, "")
  for script in SCRIPTS:
    if name.startswith(script + " "):
      return script
  return None


def _canonical(ch: str, face: int) -> np.ndarray:
  """16x16 binary silhouette, cropped to the ink and scaled to fill the box."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  ink = _draw(ch, face)
  ys, xs = np.nonzero(ink > 64)
  crop = ink[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
  h, w = crop.shape
  m = max(h, w)
  small = Image.fromarray(crop).resize((max(1, round(w * 16 / m)), max(1, round(h * 16 / m))),
                                       Image.BILINEAR)
  out = np.zeros((16, 16), np.uint8)
  sw, sh = small.size
  out[(16 - sh) // 2:(16 - sh) // 2 + sh, (16 - sw) // 2:(16 - sw) // 2 + sw] = np.asarray(small)
  return (out > 96).ravel()


@functools.lru_cache(maxsize=1)
def character_table() -> Tuple[Tuple[str, int, Tuple[int, ...]], ...]:
  """(script, code point, covering faces) for every character used, in label order."""
  from fontTools.ttLib import TTFont  # pylint: disable=g-import-not-at-top
  cmaps = [set(TTFont(os.path.join(_font_dir(), f)).getBestCmap()) for f in FACES]
  notdef = [_draw("\U000F0000", i) for i in range(len(FACES))]  # a private-use code point
  candidates: Dict[str, List[Tuple[int, Tuple[int, ...]]]] = {s: [] for s in SCRIPTS}
  for cp in sorted(set().union(*cmaps)):
    ch = chr(cp)
    if not unicodedata.category(ch).startswith("L"):
      continue
    script = _script_of(ch)
    if script is None:
      continue
    faces = []
    for i, cmap in enumerate(cmaps):
      if cp in cmap:
        ink = _draw(ch, i)
        if ink.max() >= 128 and not np.array_equal(ink, notdef[i]):
          faces.append(i)
    if faces:
      candidates[script].append((cp, tuple(faces)))
  table, silhouettes = [], []
  for script in SCRIPTS:
    for cp, faces in candidates[script]:
      silhouette = _canonical(chr(cp), faces[0])
      if silhouettes and (np.stack(silhouettes) != silhouette).sum(1).min() <= _HOMOGLYPH_PIXELS:
        continue
      table.append((script, cp, faces))
      silhouettes.append(silhouette)
  return tuple(table)


def render_instance(ch: str, faces: Sequence[int], rng: np.random.Generator, size: int,
                    color: bool) -> np.ndarray:
  """One random rendering of `ch`: face, stroke, scale, shift, rotation, noise (and colours)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  face = faces[rng.integers(len(faces))]
  stroke = int(rng.integers(0, 3))
  scale = rng.uniform(0.9, 1.1)
  shift = rng.uniform(-2.0, 2.0, size=2) * _OVERSAMPLE
  angle = rng.uniform(-10.0, 10.0)
  ink = Image.fromarray(_draw(ch, face, stroke))
  glyph = ink.crop(ink.getbbox())
  w, h = glyph.size
  extent = 0.68 * size * _OVERSAMPLE * scale  # longest side of the glyph box
  f = extent / max(w, h)
  glyph = glyph.resize((max(1, round(w * f)), max(1, round(h * f))), Image.LANCZOS)
  canvas = Image.new("L", (size * _OVERSAMPLE,) * 2)
  gw, gh = glyph.size
  canvas.paste(glyph, (round((size * _OVERSAMPLE - gw) / 2 + shift[0]),
                       round((size * _OVERSAMPLE - gh) / 2 + shift[1])))
  canvas = canvas.rotate(angle, resample=Image.BILINEAR)
  alpha = np.asarray(canvas.resize((size, size), Image.BOX), np.float32)[..., None] / 255.0
  if color:
    while True:  # colours with enough luminance contrast to read the glyph
      fg, bg = rng.uniform(0.0, 1.0, size=(2, 3))
      luma = np.array([0.299, 0.587, 0.114])
      if abs((fg - bg) @ luma) >= 0.35:
        break
    image = bg + (fg - bg) * alpha
  else:
    image = alpha
  image = image + rng.normal(0.0, 0.03, size=image.shape)
  return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)


def _render_character(args) -> np.ndarray:
  cp, faces, size, color, seed = args
  rng = np.random.default_rng([seed, cp])
  return np.stack([render_instance(chr(cp), faces, rng, size, color)
                   for _ in range(INSTANCES_PER_CHARACTER)])


def render_all(size: int, color: bool, seed: int, workers: int = 0) -> np.ndarray:
  """Images of every character, shape (characters, instances, size, size, channels)."""
  jobs = [(cp, faces, size, color, seed) for _, cp, faces in character_table()]
  workers = workers or min(4, os.cpu_count() or 1)
  if workers == 1:
    return np.stack([_render_character(j) for j in jobs])
  # 'spawn', not fork: the parent usually has JAX's threads running.
  context = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
    return np.stack(list(pool.map(_render_character, jobs, chunksize=64)))


class GlyphsConfig(tfds.core.BuilderConfig):

  def __init__(self, *, size: int, color: bool, seed: int, **kwargs):
    super().__init__(**kwargs)
    self.size, self.color, self.seed = size, color, seed


class Glyphs(tfds.core.GeneratorBasedBuilder):
  """Characters of 15 scripts rendered from matplotlib's fonts (offline Omniglot / CIFAR stand-in)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "2,359 characters, 15 scripts, 20 instances each."}
  BUILDER_CONFIGS = [
      GlyphsConfig(name="default", size=28, color=False, seed=0,
                   description="28x28x1, splits by alphabet (train/validation/test)."),
      GlyphsConfig(name="color32", size=32, color=True, seed=1,
                   description="32x32x3 random colours, split by instance (16 train / 4 test)."),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    channels = 3 if self.builder_config.color else 1
    size = self.builder_config.size
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(size, size, channels), dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=NUM_CHARACTERS),
            "alphabet": tfds.features.ClassLabel(names=[s.lower().replace(" ", "_") for s in SCRIPTS]),
            "codepoint": tfds.features.Tensor(shape=(), dtype=np.int32),
            "instance": tfds.features.Tensor(shape=(), dtype=np.int32),
        }),
        supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    cfg = self.builder_config
    table = character_table()
    if len(table) != NUM_CHARACTERS:
      raise RuntimeError(f"found {len(table)} characters, version {self.VERSION} has "
                         f"{NUM_CHARACTERS}: the installed fonts differ from the ones it was made with")
    images = render_all(cfg.size, cfg.color, cfg.seed)
    if cfg.color:
      train = range(COLOR32_TRAIN_INSTANCES)
      test = range(COLOR32_TRAIN_INSTANCES, INSTANCES_PER_CHARACTER)
      everything = range(len(table))
      return {"train": self._generate_examples(images, everything, train),
              "test": self._generate_examples(images, everything, test)}
    every_instance = range(INSTANCES_PER_CHARACTER)
    return {split: self._generate_examples(
        images, [i for i, (s, _, _) in enumerate(table) if SPLIT_OF_SCRIPT[s] == split], every_instance)
            for split in ("train", "validation", "test")}

  def _generate_examples(self, images, characters, instances):
    table = character_table()
    for c in characters:
      script, cp, _ = table[c]
      for i in instances:
        yield f"{c:05d}_{i:02d}", {
            "image": images[c, i], "label": c, "alphabet": SCRIPTS.index(script),
            "codepoint": cp, "instance": i}
