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
# # Robustness: attacks on a trained model, and adversarial training
#
# A standardly trained MLP on digits is attacked with PGD (Madry et al., arXiv 1706.06083)
# from `jaxlab.eval.attacks`, by hand, at several radii; PGD adversarial training on the
# same network is then run through the loop, evaluated under PGD-10/100, APGD-CE and an
# AutoAttack-lite ensemble. `JAXLAB_NOTEBOOK_TINY=1` picks tiny settings.

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
STEPS = 100 if TINY else 2000

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import jaxlab
from jaxlab import models
from jaxlab.eval import attacks
from jaxlab.train.checkpoint import load_pretrained
from IPython.display import Image, display
print(jax.devices())
EVAL = {"adv.eval_attacks": "pgd10,apgd_ce" if TINY else "pgd10,pgd100,apgd_ce,aa_lite",
        "train.steps": STEPS, "train.log_every": max(1, STEPS // 4)}

# %% [markdown]
# ## Standard training and PGD adversarial training, through the loop

# %%
runs = {}
for method in ("erm", "pgd_at"):
  config = jaxlab.load_config(f"configs/robust.py:digits,method={method}", EVAL)
  runs[method] = jaxlab.train_and_evaluate(config, f"{RUNS}/robust_{method}")
  print(method, {k: round(v, 3) for k, v in runs[method].items()
                 if k.startswith("test/") and not k.endswith("_ci95") and "margin" not in k})

# %% [markdown]
# ## PGD by hand on the trained models, across radii

# %%
task = jaxlab.get_method("erm").make_task(config)
test = task.eval_arrays("test")
n = int(test["mask"].sum())
x = jnp.asarray(test["image"][:n], jnp.float32) / 255.0
y = jnp.asarray(test["label"][:n])
model = models.build(config.model, task.spec.num_classes)
like = jax.eval_shape(lambda: {"params": model.init(jax.random.key(0), x[:1])["params"]})
radii = [0.0, 0.025, 0.05, 0.1, 0.15, 0.2]
curves = {}
for method in runs:
  variables = load_pretrained(f"{RUNS}/robust_{method}", like)
  logits_fn = lambda images: model.apply(variables, images, train=False)
  curves[method] = []
  for eps in radii:
    adv = attacks.pgd(logits_fn, x, y, jax.random.key(0), eps=eps, step_size=eps / 4,
                      steps=10) if eps else x
    curves[method].append(float((logits_fn(adv).argmax(-1) == y).mean()))
print(curves)

# %%
fig, ax = plt.subplots(figsize=(5, 3.2))
for method, accuracies in curves.items():
  ax.plot(radii, accuracies, marker="o", label=method)
ax.axvline(0.1, color="grey", linestyle=":", label="training radius")
ax.set(xlabel="l-inf radius (pixels in [0, 1])", ylabel="PGD-10 accuracy", ylim=(0, 1))
ax.legend()
fig.savefig(f"{RUNS}/robustness_radii.png", dpi=100, bbox_inches="tight")
plt.close(fig)  # shown once, from the file below
display(Image(f"{RUNS}/robustness_radii.png"))
