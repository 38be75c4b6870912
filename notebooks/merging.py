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
# # Merging models trained on different datasets
#
# Two MLPs are trained, A on digits and B on digits rotated by 90 degrees. B's hidden units
# are aligned to A's by weight matching (Git Re-Basin, arXiv 2209.04836), by hand with
# `jaxlab.merge`, and the loss / accuracy along the line between the two models is compared
# with the naive line. Then the straight-through permutation search of Yamada et al.
# (arXiv 2306.05641) runs through the loop (`merge_ste`), and the report's analyses of
# arXiv 2402.04051 (singular-vector alignment, rank-k truncation) are read from its results.
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
ENDPOINT = "tiny_endpoint" if TINY else "digits_endpoint"
MERGE = "tiny" if TINY else "digits"

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import jaxlab
from jaxlab import models
from jaxlab.merge import analysis, interpolate, matching, permutation
from jaxlab.train.checkpoint import load_pretrained
from IPython.display import Image, display
print(jax.devices())

# %% [markdown]
# ## Two endpoints: digits, and digits rotated by 90 degrees

# %%
for name, shift, seed in (("a", "", 0), ("b", "rotate:90", 1)):
  config = jaxlab.load_config(f"configs/merge.py:{ENDPOINT},shift={shift},seed={seed}")
  results = jaxlab.train_and_evaluate(config, f"{RUNS}/merge_endpoint_{name}")
  print(name, "test accuracy on its own data:", round(results["test/accuracy"], 3))

# %% [markdown]
# ## Weight matching by hand
#
# The permutation spec is derived from the model's own computation; weight matching is one
# jitted `lax.while_loop`. A permuted model computes the same function.

# %%
merge_config = jaxlab.load_config(f"configs/merge.py:{MERGE},method=merge_wm,b_shift=rotate:90",
                                  {"inputs.model_a": f"{RUNS}/merge_endpoint_a",
                                   "inputs.model_b": f"{RUNS}/merge_endpoint_b"})
task = jaxlab.get_method("merge_wm").make_task(merge_config)
model = models.build(merge_config.model, task.spec.num_classes)
x0 = jnp.zeros((2,) + tuple(task.spec.input_shape))
like = jax.eval_shape(lambda: {"params": model.init(jax.random.key(0), x0)["params"]})
a = load_pretrained(f"{RUNS}/merge_endpoint_a", like)
b = load_pretrained(f"{RUNS}/merge_endpoint_b", like)
spec = permutation.derive(model, like, task.spec.input_shape)
perms = jax.jit(lambda a, b: matching.weight_matching(spec, a, b, jax.random.key(0)))(a, b)
b_aligned = permutation.permute(b, spec, perms)

data = {s: task.eval_arrays(s) for s in ("test_a", "test_b")}
images = {s: jnp.asarray(d["image"][:int(d["mask"].sum())], jnp.float32) / 255.0
          for s, d in data.items()}
labels = {s: jnp.asarray(d["label"][:int(d["mask"].sum())]) for s, d in data.items()}
print("same function after the permutation:",
      bool(jnp.allclose(model.apply(b, images["test_b"]), model.apply(b_aligned, images["test_b"]),
                        atol=1e-4)))

def double_test_accuracy(variables):
  return sum(jnp.mean(jnp.argmax(model.apply(variables, images[s]), -1) == labels[s])
             for s in images) / 2

lams = interpolate.grid(25)
lines = {name: interpolate.curve(double_test_accuracy, a, other, lams)
         for name, other in (("naive", b), ("weight matching", b_aligned))}
for name, other in (("naive", b), ("weight matching", b_aligned)):
  aligned = analysis.alignment(a, other)
  print(f"{name}: accuracy at lam=0.5 {float(lines[name][12]):.3f}, "
        f"R {float(aligned['R']):.3f}, A_5 {float(aligned['A_k']):.3f}")
fig, ax = plt.subplots(figsize=(5, 3.2))
for name, values in lines.items():
  ax.plot(lams, values, label=name)
ax.set_xlabel("lambda (0 = A, 1 = B)")
ax.set_ylabel("double-test accuracy")
ax.legend()
fig.tight_layout()
fig.savefig(f"{RUNS}/merging_by_hand.png", dpi=110)
plt.show()

# %% [markdown]
# ## The STE permutation search through the loop
#
# `merge_ste` trains a free copy of A whose forward is the permuted B (straight-through),
# re-solving weight matching every step; its report holds the curves of the naive, merged
# and ensemble lines, barriers, the §6 analyses and the plots.

# %%
ste_config = jaxlab.load_config(f"configs/merge.py:{MERGE},method=merge_ste,b_shift=rotate:90",
                                {"inputs.model_a": f"{RUNS}/merge_endpoint_a",
                                 "inputs.model_b": f"{RUNS}/merge_endpoint_b"})
ste = jaxlab.train_and_evaluate(ste_config, f"{RUNS}/merge_ste")
for line in ("naive", "merged", "ensemble"):
  print(line, "double-test accuracy at lam=0.5:",
        round(ste[f"{line}/double_test/accuracy_mid"], 3))
ranks = sorted({int(k.split("/")[1][1:]) for k in ste if k.startswith("truncation/")})
print("rank-k truncation, merged midpoint:",
      {k: round(ste[f"truncation/k{k}/merged/double_test/accuracy_mid"], 3) for k in ranks})
display(Image(f"{RUNS}/merge_ste/merge_curves.png"))
