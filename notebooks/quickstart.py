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
# # jaxlab quickstart
#
# A run through the same loop as the command line, the pure step functions driven by hand,
# and curves from the run's `metrics.jsonl`. Runs on a Colab TPU, GPU or CPU runtime and
# headless in CI (`JAXLAB_NOTEBOOK_TINY=1` picks tiny settings).

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
STEPS = 60 if TINY else 2000

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import jaxlab
from jaxlab import plots, streams
print(jax.devices())

# %% [markdown]
# ## One call: the command line's loop
# Batches are sharded over every device on the `data` mesh axis. Running the cell again
# resumes from the checkpoint in the workdir (or reports the finished run).

# %%
config = jaxlab.load_config("configs/erm.py:digits",
                            {"train.steps": STEPS, "train.eval_every": STEPS // 4,
                             "train.log_every": STEPS // 4})
results = jaxlab.train_and_evaluate(config, f"{RUNS}/quickstart_digits")
print({k: round(v, 4) for k, v in results.items() if k.startswith("test/")})

# %% [markdown]
# ## The pure pieces, driven by hand
# `get_method` gives the method's pure functions; every random stream is a named fold of the
# run's key (`jaxlab.streams`), as in the loop.

# %%
method = jaxlab.get_method(config.method)
task = method.make_task(config, jax.device_count())
state = method.init(config, streams.run_stream(config.seed, "init"), task.spec)
data = jax.device_put(task.train_arrays())
data_key, step_key = (streams.run_stream(config.seed, name) for name in ("data", "step"))

@jax.jit
def train_step(state, data):
  batch = task.train_batch(data, data_key, state.step)  # drawn on the device
  return method.train_step(state, batch, jax.random.fold_in(step_key, state.step),
                           config=config, spec=task.spec)

losses = []
for _ in range(STEPS):
  state, metrics = train_step(state, data)
  losses.append(float(metrics["loss"]))
test = jax.device_put(task.eval_arrays("test"))
per_example = method.eval_step(state, task.eval_batch(test, jnp.int32(0)),
                               streams.eval_batch_key(config.seed, "test", 0),
                               config=config, spec=task.spec)
mask = task.eval_batch(test, jnp.int32(0))["mask"]  # the padding of the last batch is masked
print("by hand: final loss", losses[-1], "| first test batch accuracy",
      float((per_example["accuracy"] * mask).sum() / mask.sum()))

# %% [markdown]
# ## Curves
# `jaxlab plot WORKDIR...` draws these from `metrics.jsonl` (several runs overlaid, the seeds
# of one config as a band); here with the function behind it.

# %%
plots.plot([f"{RUNS}/quickstart_digits"], f"{RUNS}/quickstart_curves.png",
           ("train/loss", "test/accuracy"))
fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(range(1, STEPS + 1), losses)
ax.set(xlabel="step", ylabel="train loss (by hand)", yscale="log")
fig.savefig(f"{RUNS}/quickstart_by_hand.png", dpi=100, bbox_inches="tight")
plt.close(fig)  # shown once, from the file below
from IPython.display import Image, display
display(Image(f"{RUNS}/quickstart_curves.png"))
