"""Input pipeline throughput and memory: jaxlab's stream beside torchvision's ImageFolder.

Writes a folder of JPEGs of varying sizes (ImageNet-like, `--min_side`..`--max_side`), then
in one run measures, each side in its own process so that memory is its own:
  jaxlab   jaxlab.data.stream's training feed (FolderSource -> Pillow decode ->
           random_resized_crop(224)|flip_lr -> uint8 batches) with `--workers` processes;
  torch    torchvision.datasets.ImageFolder + DataLoader(num_workers=--workers, shuffle) with
           RandomResizedCrop(224) + RandomHorizontalFlip + PILToTensor (uint8, as jaxlab's);
images/s after the first batch (worker start-up excluded, reported apart) and the peak
resident memory of the process and its workers together (sampled every 50 ms). torch comes
from the `bench` extra, or from another interpreter: `--torch_python=/path/to/python`.

With `--multiprocess`, it also trains `configs/erm.py:folder` for a few steps as two
processes (launch/multihost.sh's way) with data.pipeline=device and =stream, and reports each
process's peak memory: the device path holds the whole decoded split in every process.

  python benchmarks/input_pipeline.py --images 2000 --workers 2 --multiprocess
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_folder(root: str, images: int, classes: int, min_side: int, max_side: int) -> None:
  from PIL import Image  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  for i in range(images):
    folder = os.path.join(root, "train", f"class{i % classes:03d}")
    os.makedirs(folder, exist_ok=True)
    h, w = (int(v) for v in rng.integers(min_side, max_side + 1, 2))
    # smooth content plus noise: JPEG sizes like photographs', not like pure noise
    base = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    pixels = np.asarray(Image.fromarray(base).resize((w, h), Image.BILINEAR)).astype(np.int16)
    pixels = np.clip(pixels + rng.integers(-20, 21, pixels.shape), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(os.path.join(folder, f"{i}.jpg"), quality=90)


class PeakMemory:
  """Peak summed RSS of a process and all its descendants, sampled in a thread."""

  def __init__(self, pid: int):
    import psutil  # pylint: disable=import-outside-toplevel
    self.process, self.peak, self._stop = psutil.Process(pid), 0, False
    self._thread = threading.Thread(target=self._run, daemon=True)

  def _run(self):
    import psutil  # pylint: disable=import-outside-toplevel
    while not self._stop:
      try:
        tree = [self.process] + self.process.children(recursive=True)
        self.peak = max(self.peak, sum(p.memory_info().rss for p in tree if p.is_running()))
      except psutil.Error:  # a worker ended between the listing and the reading: sample again
        continue
      finally:
        time.sleep(0.05)

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop = True
    self._thread.join()


def _measure(batches, count: int):
  """(seconds to the first batch, images/s over the next `count` batches)."""
  start = time.perf_counter()
  first = next(batches)
  ready = time.perf_counter()
  images = 0
  del first
  for _ in range(count):
    batch = next(batches)
    images += len(batch["label"] if isinstance(batch, dict) else batch[1])
  return ready - start, images / (time.perf_counter() - ready)


def side_jaxlab(args) -> dict:
  from jaxlab.data import sources, stream  # pylint: disable=import-outside-toplevel
  import grain  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  source = sources.FolderSource(f"folder:{args.dir}", "train")
  table = {"row": np.arange(len(source))}
  loader = stream.TrainBatches(
      source, table, "random_resized_crop(224)|flip_lr", "data.train_pp", (0, args.batch), 0,
      key_data=np.asarray(jax.random.key_data(jax.random.key(0))), batch_size=args.batch,
      seed=0)
  with PeakMemory(os.getpid()) as memory:
    feed = stream._iterate(  # pylint: disable=protected-access
        grain.MapDataset.range(0, args.batches + 1).map(loader), args.workers)
    startup, rate = _measure(feed, args.batches)
    feed.close()
  return {"startup_s": startup, "images_per_s": rate, "peak_rss_mb": memory.peak / 2**20}


def side_torch(args) -> dict:
  import torch  # pylint: disable=import-outside-toplevel
  from torchvision import datasets, transforms  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(1)
  dataset = datasets.ImageFolder(os.path.join(args.dir, "train"), transforms.Compose([
      transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
      transforms.PILToTensor()]))
  loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch, shuffle=True,
                                       num_workers=args.workers, drop_last=True,
                                       persistent_workers=False)
  with PeakMemory(os.getpid()) as memory:
    startup, rate = _measure(iter(loader), args.batches)
  return {"startup_s": startup, "images_per_s": rate, "peak_rss_mb": memory.peak / 2**20,
          "torch": torch.__version__}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def two_processes(args, pipeline: str, workdir: str) -> dict:
  """Peak RSS of each of two jaxlab.main processes training on the folder."""
  port = _free_port()
  common = [f"--config=configs/erm.py:folder,path={args.dir},steps=6", f"--workdir={workdir}",
            "--config.model.width=8", "--config.train.batch_size=16",
            "--config.data.eval_splits=", f"--config.data.pipeline={pipeline}",
            f"--config.data.workers={args.workers}", "--config.train.log_every=1",
            "--config.distributed.enabled=True",
            f"--config.distributed.coordinator_address=127.0.0.1:{port}",
            "--config.distributed.num_processes=2"]
  procs = [subprocess.Popen([sys.executable, "-m", "jaxlab.main", *common,
                             f"--config.distributed.process_id={i}"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  monitors = [PeakMemory(p.pid).__enter__() for p in procs]
  errors = [p.communicate()[1] for p in procs]
  for m in monitors:
    m.__exit__()
  if any(p.returncode for p in procs):
    raise SystemExit(f"the {pipeline} run failed:\n" + errors[0][-2000:] + errors[1][-2000:])
  return {"peak_rss_mb_per_process": [m.peak / 2**20 for m in monitors]}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--images", type=int, default=1000)
  parser.add_argument("--classes", type=int, default=10)
  parser.add_argument("--min_side", type=int, default=250)
  parser.add_argument("--max_side", type=int, default=500)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--batches", type=int, default=20, help="timed batches per side")
  parser.add_argument("--workers", type=int, default=2)
  parser.add_argument("--dir", default="", help="an existing folder (else one is written)")
  parser.add_argument("--torch_python", default=sys.executable)
  parser.add_argument("--multiprocess", action="store_true")
  parser.add_argument("--side", choices=["jaxlab", "torch"], help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.side:  # one side, in its own process
    print(json.dumps((side_jaxlab if args.side == "jaxlab" else side_torch)(args)))
    return
  with tempfile.TemporaryDirectory() as scratch:
    if not args.dir:
      args.dir = os.path.join(scratch, "images")
      write_folder(args.dir, args.images, args.classes, args.min_side, args.max_side)
    print(f"{args.images} JPEGs {args.min_side}-{args.max_side} px in {args.dir}; batch "
          f"{args.batch}, {args.workers} workers, {args.batches} timed batches, "
          f"{os.cpu_count()} CPU cores")
    common = ["--dir", args.dir, "--batch", str(args.batch), "--batches", str(args.batches),
              "--workers", str(args.workers)]
    results = {}
    for side, python in (("jaxlab", sys.executable), ("torch", args.torch_python)):
      out = subprocess.run([python, os.path.abspath(__file__), "--side", side, *common],
                           capture_output=True, text=True, cwd=REPO, check=False)
      if out.returncode:
        raise SystemExit(f"{side} side failed:\n{out.stderr[-3000:]}")
      results[side] = json.loads(out.stdout.strip().splitlines()[-1])
      r = results[side]
      print(f"{side:7s} {r['images_per_s']:8.1f} images/s | first batch after "
            f"{r['startup_s']:.1f} s | peak RSS {r['peak_rss_mb']:.0f} MB")
    ratio = results["jaxlab"]["images_per_s"] / results["torch"]["images_per_s"]
    print(f"ratio jaxlab / torch: {ratio:.2f}x images/s, "
          f"{results['jaxlab']['peak_rss_mb'] / results['torch']['peak_rss_mb']:.2f}x memory")
    if args.multiprocess:
      decoded = args.images * 224 * 224 * 3 / 2**20
      print(f"two processes training configs/erm.py:folder ({args.images} images, "
            f"{decoded:.0f} MB decoded at 224x224):")
      for pipeline in ("device", "stream"):
        r = two_processes(args, pipeline, os.path.join(scratch, f"run_{pipeline}"))
        print(f"  data.pipeline={pipeline:6s} peak RSS per process: "
              + ", ".join(f"{m:.0f} MB" for m in r["peak_rss_mb_per_process"]))


if __name__ == "__main__":
  main()
