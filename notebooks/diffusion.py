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
# # Diffusion models and the reconstruction gap
#
# A class-conditional DDPM (Ho et al., arXiv 2006.11239) is trained on the embedded 8x8
# digits; its samples are drawn with the ancestral and the DDIM samplers, with and without
# classifier-free guidance; then real digits are *reconstructed*: noised to step t and taken
# back by the model (R_t, Yamaguchi & Fukuda, arXiv 2311.13090). As t grows the
# reconstructions keep less of the image they came from. `JAXLAB_NOTEBOOK_TINY=1` picks tiny
# settings.

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
PRESET = "configs/ddpm.py:tiny" if TINY else "configs/ddpm.py:digits,steps=8000"

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import jaxlab
from jaxlab.data import loading, reconstruction
from jaxlab.models import diffusion
from jaxlab.train import checkpoint, inputs
print(jax.devices())

# %% [markdown]
# ## Training the DDPM
#
# The noise predictor is an MLP with sinusoidal time and class embeddings; labels are
# dropped to a null class 10% of the time, so the same network is also the unconditional
# model that guidance needs. `samples.png` is written by the run (a row per class).

# %%
config = jaxlab.load_config(PRESET)
results = jaxlab.train_and_evaluate(config, f"{RUNS}/ddpm")
print("test denoising loss:", round(results["test/loss"], 4))

# %% [markdown]
# ## The model by hand: forward noising, sampling, guidance
#
# `diffusion.build` gives the model the run trained; its EMA weights are the run's
# `model_state["ema"]`, read back with the one loader for other runs.

# %%
test = loading.load_split("digits", "test")
images = jnp.asarray(test["image"][:8], jnp.float32) / 255.0
labels = jnp.asarray(test["label"][:8])
model = inputs.diffusion_model(f"{RUNS}/ddpm", "the ddpm run", 10, (8, 8, 1))
like = jax.eval_shape(lambda: diffusion.DiffusionGenerator(model).init(jax.random.key(0)))
variables = checkpoint.load_pretrained(f"{RUNS}/ddpm", like)
ema = {"params": variables["ema"]}
T = model.schedule.steps
steps = [0, T // 10, T // 4, T // 2, 3 * T // 4, T]

fig, axes = plt.subplots(1, len(steps), figsize=(1.4 * len(steps), 1.6))
eps = jax.random.normal(jax.random.key(0), images.shape)
for ax, t in zip(axes, steps):
  x_t = diffusion.q_sample(model.schedule, diffusion.to_model_space(images),
                           jnp.full((8,), t), eps)
  ax.imshow(np.asarray(x_t[0, ..., 0]), cmap="gray")
  ax.set_title(f"t={t}", fontsize=8)
  ax.axis("off")
fig.suptitle("q(x_t | x_0): one digit forward-noised", fontsize=9)
fig.tight_layout()
fig.savefig(f"{RUNS}/diffusion_forward.png", dpi=100)
plt.show()

# %%
classes = jnp.arange(10)
z = jax.random.normal(jax.random.key(1), (10, 8, 8, 1))
keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(2), i))(classes)
rows = {"ancestral, every step": dict(sampler="ddpm"),
        "DDIM, 20 steps": dict(sampler="ddim", steps=20),
        "DDIM, 20 steps, guidance 3": dict(sampler="ddim", steps=20, guidance=3.0),
        "guidance 0 (unconditional)": dict(sampler="ddim", steps=20, guidance=0.0)}
fig, axes = plt.subplots(len(rows), 10, figsize=(10, 1.2 * len(rows)))
for r, (name, kwargs) in enumerate(rows.items()):
  samples = model.sample(ema, z, jax.nn.one_hot(classes, 10), keys, **kwargs)
  for c in range(10):
    axes[r, c].imshow(np.asarray(samples[c, ..., 0]), cmap="gray", vmin=0, vmax=1)
    axes[r, c].axis("off")
  axes[r, 0].set_title(name, fontsize=8, loc="left")
fig.tight_layout()
fig.savefig(f"{RUNS}/diffusion_samplers.png", dpi=100)
plt.show()

# %% [markdown]
# ## Reconstructions R_t
#
# The same function builds the reconstructed training sets that classifiers train on
# (`data.reconstruct` in `configs/diffusion_gap.py`); example i's noise depends on its index
# and the dataset seed only.

# %%
rc = jaxlab.load_config("configs/diffusion_gap.py:digits").data.reconstruct
real = test["image"][:10]
fig, axes = plt.subplots(len(steps), 10, figsize=(10, 1.1 * len(steps)))
for r, t in enumerate(steps):
  recon = reconstruction.reconstruct_images(model, variables, real, test["label"][:10], t, rc)
  for c in range(10):
    axes[r, c].imshow(recon[c, ..., 0], cmap="gray", vmin=0, vmax=255)
    axes[r, c].axis("off")
  axes[r, 0].set_title(f"R_t, t/T = {t / T:.2f}", fontsize=8, loc="left")
fig.tight_layout()
fig.savefig(f"{RUNS}/diffusion_reconstructions.png", dpi=100)
plt.show()
