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
# # Generated data: a conditional GAN, MGR and meta-generated unlabeled data
#
# A class-conditional GAN is trained on digits and frozen; MGR (meta generative
# regularisation) trains a classifier with its samples, finding latents by a one-step
# look-ahead meta-gradient (arXiv 2307.13899); meta-gen-SSL (arXiv 2309.16143) optimises the
# latents of generated unlabeled data for a semi-supervised learner. Every run reads the others by workdir (`config.inputs.*`).
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
STEPS = 10 if TINY else 2000
GAN_STEPS = 20 if TINY else 3000

# %%
import jax
import jaxlab
from jaxlab import plots
from IPython.display import Image, display
print(jax.devices())
# in the tiny setting every network is narrow; the readers of the generator must build it
# as it was trained, so they get the same `generator` overrides
GENERATOR = {"generator.width": 8, "generator.discriminator_width": 8} if TINY else {}

# %% [markdown]
# ## A classifier, then a conditional GAN scored with it

# %%
classifier = f"{RUNS}/classifier"
jaxlab.train_and_evaluate(jaxlab.load_config("configs/erm.py:digits",
                                             {"train.steps": 10 * STEPS}), classifier)
generator = f"{RUNS}/cgan"
gan = jaxlab.train_and_evaluate(jaxlab.load_config(
    f"configs/cgan.py:digits,steps={GAN_STEPS}",
    {**GENERATOR, "inputs.score_classifier": classifier}), generator)
print({k: round(v, 3) for k, v in gan.items() if k.startswith("quality/")})
display(Image(f"{generator}/samples.png"))

# %% [markdown]
# ## MGR: a classifier regularised by the generator's samples

# %%
mgr = jaxlab.train_and_evaluate(jaxlab.load_config(
    "configs/mgr.py:digits,method=mgr,fraction=0.1",
    {**GENERATOR, "inputs.generator": generator, "train.steps": STEPS,
     "train.eval_every": max(1, STEPS // 5), "train.log_every": max(1, STEPS // 5),
     **({"model.channels": (8, 8)} if TINY else {})}), f"{RUNS}/mgr")
print("MGR selected test accuracy", round(mgr["selected/test/accuracy"], 4))

# %% [markdown]
# ## meta-gen-SSL: generated unlabeled data whose latents are meta-optimised

# %%
ssl = jaxlab.train_and_evaluate(jaxlab.load_config(
    "configs/ssl.py:digits,method=meta_gen_ssl,labels=4",
    {**GENERATOR, "inputs.generator": generator, "inputs.source_classifier": classifier,
     "train.steps": STEPS, "train.log_every": max(1, STEPS // 5),
     **({"model.channels": (4, 6), "train.batch_size": 8, "meta_gen_ssl.synthetic_batch": 8,
         "meta_gen_ssl.pool_size": 16} if TINY else {})}), f"{RUNS}/meta_gen_ssl")
print("meta-gen-SSL test accuracy", round(ssl["test/accuracy"], 4))

# %%
plots.plot([f"{RUNS}/mgr", f"{RUNS}/meta_gen_ssl"], f"{RUNS}/generative_curves.png",
           ("train/loss", "test/accuracy"))
display(Image(f"{RUNS}/generative_curves.png"))
