# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Test-time adaptation on a corrupted stream
#
# A CNN with BatchNorm is trained on clean digits, then adapted online, without labels, to
# the test digits under the digits-scale corruptions of the CAFe spec: no adaptation
# (`source`), BN-adapt, Tent (Wang et al., arXiv 2006.10726) and CAFe (Adachi et al., arXiv
# 2204.13263). Adaptation is one ordered pass of the training loop over the stream, so every
# batch's online error (predicted before the update, Tent's convention) is in `metrics.jsonl`.
# `JAXLAB_NOTEBOOK_TINY=1` picks tiny settings.

# %%
# Install: from a jaxlab checkout (this notebook's parent folder, or /content/jaxlab on
# Colab after `!git clone <your jaxlab repository> /content/jaxlab`); an installed jaxlab
# is used as it is. Colab's preinstalled JAX (TPU or GPU) satisfies jaxlab's requirement.
import importlib.util, os, subprocess, sys
if importlib.util.find_spec("jaxlab") is None:
  root = next(p for p in ("..", ".", "/content/jaxlab") if os.path.exists(f"{p}/setup.py"))
  subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "-e", root])

# %% tags=["parameters"]
TINY = os.environ.get("JAXLAB_NOTEBOOK_TINY") == "1"  # CI: a few steps
RUNS = os.path.abspath(os.environ.get("JAXLAB_RUNS", "runs"))  # beside the notebook
os.makedirs(RUNS, exist_ok=True)
SOURCE = "tiny_source" if TINY else "digits_source"
ADAPT = "tiny" if TINY else "digits"
METHODS = ("source", "bn_adapt", "tent", "cafe")

# %%
import jax
import matplotlib.pyplot as plt
import numpy as np
import jaxlab
from jaxlab import plots
from jaxlab.data import corruptions, loading
print(jax.devices())

# %% [markdown]
# ## The corruptions
#
# Each corruption is a jnp function of the image and a key, deterministic per key, with a
# table of five severities (`jaxlab.data.corruptions`; the CIFAR-10-C set is there too).

# %%
digit = loading.load_split("digits", "test")["image"][0]
names = corruptions.names("digits")
fig, axes = plt.subplots(len(names), 6, figsize=(6, len(names)))
for row, name in enumerate(names):
  for col, severity in enumerate(range(6)):
    image = corruptions.corrupt(digit, jax.random.key(0), "digits",
                                name if severity else "clean", severity)
    axes[row, col].imshow(np.asarray(image)[..., 0], cmap="gray", vmin=0, vmax=1)
    axes[row, col].set_xticks([]), axes[row, col].set_yticks([])
  axes[row, 0].set_ylabel(name, rotation=0, ha="right", fontsize=8)
for col in range(6):
  axes[0, col].set_title(f"severity {col}" if col else "clean", fontsize=8)
fig.tight_layout()
fig.savefig(f"{RUNS}/tta_corruptions.png", dpi=100)
plt.show()

# %% [markdown]
# ## The source model, then four adaptations of it on one mixed stream

# %%
source = jaxlab.train_and_evaluate(jaxlab.load_config(f"configs/tta.py:{SOURCE}"),
                                   f"{RUNS}/tta_source_model")
print("source, clean test accuracy:", round(source["test/accuracy"], 3))
results = {}
for method in METHODS:
  config = jaxlab.load_config(f"configs/tta.py:{ADAPT},method={method},protocol=mixed",
                              {"init_from": f"{RUNS}/tta_source_model"})
  results[method] = jaxlab.train_and_evaluate(config, f"{RUNS}/tta_{method}")
  print(f"{method:9s} online error {results[method]['online/error']:.3f}   "
        f"clean test accuracy after the stream {results[method]['test/accuracy']:.3f}")

# %% [markdown]
# ## Online error along the stream
#
# The running mean of the per-batch online error; the stream's order is the same for every
# method (it follows from the seed, and is saved as `stream.npz`).

# %%
fig, ax = plt.subplots(figsize=(5, 3.2))
for method in METHODS:
  errors = plots.read_metrics(f"{RUNS}/tta_{method}")["train/error"]
  steps = np.array(sorted(errors))
  values = np.array([errors[s] for s in steps])
  ax.plot(steps, np.cumsum(values) / np.arange(1, len(values) + 1), label=method)
ax.set_xlabel("batch of the stream")
ax.set_ylabel("online error (running mean)")
ax.legend()
fig.tight_layout()
fig.savefig(f"{RUNS}/tta_online_error.png", dpi=110)
plt.show()
