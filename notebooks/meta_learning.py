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
# # Meta-learning with jaxlab: MAML and Meta-ticket on glyphs
#
# MAML (arXiv 1703.03400) and Meta-ticket (supermasks found by meta-learning) on the
# embedded `glyphs` set (an Omniglot stand-in, built offline), then MAML's meta-step written
# by hand: the inner loop is `jaxlab.meta.inner.adapt`, differentiated through, and `vmap`
# runs the tasks of a meta-batch in parallel. `JAXLAB_NOTEBOOK_TINY=1` picks tiny settings.

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
STEPS = 20 if TINY else 3000

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import optax
import jaxlab
from jaxlab import models, plots, streams
from jaxlab.meta import inner
print(jax.devices())

# %% [markdown]
# ## MAML and Meta-ticket through the loop
# The same Conv-4 5-way 1-shot setting for MAML; Meta-ticket learns a mask over a fixed
# random MLP instead of its weights.

# %%
small = {"train.steps": STEPS, "train.log_every": max(1, STEPS // 4), "train.eval_every": 0,
         **({"episodes.eval_episodes": 20, "episodes.eval_meta_batch": 10,
             "episodes.meta_batch": 4, "data.eval_splits": "test"} if TINY else {})}
MAML_PRESET = "configs/maml.py:tiny" if TINY else "configs/maml.py:glyphs_5w1s"
maml = jaxlab.train_and_evaluate(jaxlab.load_config(MAML_PRESET, small), f"{RUNS}/maml_glyphs")
ticket = jaxlab.train_and_evaluate(
    jaxlab.load_config("configs/meta_ticket.py:glyphs_5w1s", small), f"{RUNS}/meta_ticket_glyphs")
for name, r in (("MAML", maml), ("Meta-ticket", ticket)):
  print(f"{name:12s} test accuracy {r['test/accuracy']:.3f} +- {r['test/accuracy_ci95']:.3f}")

# %% [markdown]
# ## The meta-step by hand
# One task's loss after `inner_steps` of gradient descent on its support set; `vmap` over
# the meta-batch; `jax.grad` through the inner loop (second order); an optax update.

# %%
config = jaxlab.load_config(MAML_PRESET)
task = jaxlab.get_method("maml").make_task(config)
model = models.build(config.model, task.spec.num_classes)
params = model.init(streams.run_stream(0, "init"), jnp.zeros((1,) + task.spec.input_shape),
                    train=False)["params"]
data = jax.device_put(task.train_arrays())

def query_loss(params, episode):
  forward = lambda p, x: model.apply({"params": p}, x, train=True)
  support_loss = lambda p, s: optax.softmax_cross_entropy_with_integer_labels(
      forward(p, s["x"]), s["y"]).mean()
  adapted = inner.adapt(support_loss, params, episode["support"], steps=1,
                        inner_lr=config.meta.inner_lr)
  logits = forward(adapted, episode["query"]["x"])
  return optax.softmax_cross_entropy_with_integer_labels(logits, episode["query"]["y"]).mean()

optimizer = optax.adam(config.optimizer.learning_rate)
opt_state = optimizer.init(params)

@jax.jit
def meta_step(params, opt_state, step):
  episodes = task.train_batch(data, streams.run_stream(0, "data"), step)  # [meta_batch, ...]
  loss, grads = jax.value_and_grad(
      lambda p: jax.vmap(lambda e: query_loss(p, e))(episodes).mean())(params)
  updates, opt_state = optimizer.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss

meta_losses = []
for step in range(STEPS):
  params, opt_state, loss = meta_step(params, opt_state, step)
  meta_losses.append(float(loss))
print("meta-loss", meta_losses[0], "->", meta_losses[-1])

# %%
plots.plot([f"{RUNS}/maml_glyphs", f"{RUNS}/meta_ticket_glyphs"], f"{RUNS}/meta_curves.png",
           ("train/loss",))
fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(meta_losses)
ax.set(xlabel="meta-step", ylabel="query loss after adaptation (by hand)")
fig.savefig(f"{RUNS}/meta_by_hand.png", dpi=100, bbox_inches="tight")
plt.close(fig)  # shown once, from the file below
from IPython.display import Image, display
display(Image(f"{RUNS}/meta_curves.png"))
