"""Frozen inputs: the weights a run reads from other runs, named in one config block.

A method variant declares what it reads as `Input`s (a generator, a source classifier, a
teacher; later: two endpoints to merge, a source trajectory, a model to adapt at test time).
A run names where each comes from in `config.inputs.<name>`: another run's workdir (its newest
checkpoint) or an `.npz` of "/"-joined variable paths. Before the training loop writes
anything, `load` reads every input and checks it against the shapes the method expects
(`load_pretrained`: a missing, extra or misshapen variable is one line naming the field); the
loop then puts them in `state.frozen[<name>]`, the one place frozen inputs live. They are
never differentiated or updated.

`config.init_from` / `init_skip` stay the common case: the trained weights' own starting point
(read by the same `load_pretrained`). An input may fall back to it (`fallback="init_from"`:
ARREST's frozen teacher is, by default, the model the run starts from).

The kinds of input: `generator` (a `cgan` run, its architecture `config.generator`, or a
`ddpm` run, its architecture read from the run, as `generator.kind` says; its classes given by
the method), `diffusion_run` (a `ddpm` run on the task's classes) and `classifier` (any jaxlab
classifier run: its architecture is read from the run's own config.json, so it may differ
from the trained model's). `own_model` is a run of the trained model's architecture;
`trajectory` the weights such a run kept along the way (`train.keep_schedule`), stacked on a
leading axis.
"""

import dataclasses
import json
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections
from etils import epath

from jaxlab import models
from jaxlab.data import tasks
from jaxlab.errors import UserError
from jaxlab.models import diffusion, gan
from jaxlab.train.checkpoint import load_pretrained, load_trajectory, trajectory_steps

# (config, spec) -> the variables an input must provide (called under jax.eval_shape)
VariablesFn = Callable[[Any, tasks.Spec], Any]


@dataclasses.dataclass(frozen=True)
class Input:
  """One frozen input of a method: `config.inputs.<name>` -> `state.frozen[<name>]`."""
  name: str
  provides: str                 # what the run must be, for error lines
  variables: VariablesFn        # its variables' shapes, for the check and the placeholders
  required: bool = True
  fallback: str = ""            # a top-level config field read when inputs.<name> is ""
  # (config, path, like, field) -> host arrays; None: `load_pretrained` (the newest checkpoint)
  loader: Optional[Callable[..., Any]] = None

  @property
  def field(self) -> str:
    return f"inputs.{self.name}"


def path(config, item: Input) -> str:
  """Where `item` comes from in this run ("" = not given)."""
  given = config.get("inputs", {}).get(item.name, "")
  return given or (config.get(item.fallback, "") if item.fallback else "")


def check(items: Sequence[Input], config, method: str) -> None:
  """One line for a required input that is not given."""
  for item in items:
    if item.required and not path(config, item):
      if item.name not in config.get("inputs", {}):
        raise UserError(f"{method} reads {item.field} ({item.provides}), which this config "
                        f"has no field for: start from a preset that runs {method}")
      also = f" (or {item.fallback})" if item.fallback else ""
      raise UserError(f"{method} needs --config.{item.field}{also}: the workdir of "
                      f"{item.provides}")


def present(items: Sequence[Input], config) -> Tuple[Input, ...]:
  """The inputs this run's state holds: the required ones and the optional ones given."""
  return tuple(item for item in items if item.required or path(config, item))


def abstract(items: Sequence[Input], config, spec: tasks.Spec) -> Dict[str, Any]:
  """{name: ShapeDtypeStruct tree} of the inputs present."""
  return {item.name: jax.eval_shape(lambda i=item: i.variables(config, spec))
          for item in present(items, config)}


def placeholders(items: Sequence[Input], config, spec: tasks.Spec) -> Dict[str, Any]:
  """Freshly initialised variables of the present inputs' shapes (a fixed key): the state's
  `frozen` until `load`'s arrays replace them when a run starts."""
  return {item.name: item.variables(config, spec) for item in present(items, config)}


def load(items: Sequence[Input], config, spec: tasks.Spec) -> Dict[str, Any]:
  """{name: host arrays} of every input present, each checked against its expected shapes
  (call `check` first: a required input must be given)."""
  def read(item: Input, like):
    if item.loader is not None:
      return item.loader(config, path(config, item), like, item.field)
    return load_pretrained(path(config, item), like, field=item.field)
  return {item.name: read(item, like)
          for item, like in zip(present(items, config),
                                abstract(items, config, spec).values())}


def load_method_inputs(method, config, spec: tasks.Spec) -> Dict[str, Any]:
  """`check` then `load` for a registered method (`jaxlab.get_method`): the `frozen` of its
  state, as the training loop reads it."""
  check(method.inputs, config, method.name)
  return load(method.inputs, config, spec)


# -- the kinds of input ---------------------------------------------------------------------

def run_config_path(workdir: str, field: str, kind: str = "classifier") -> epath.Path:
  """`workdir`'s config.json, or a UserError naming `field` when it is not a jaxlab run."""
  if not workdir:
    raise UserError(f"{field} is not set: give the workdir of a finished {kind} run")
  config_path = epath.Path(workdir) / "config.json"
  if not config_path.exists():
    raise UserError(f"{field}={workdir!r} is not a jaxlab run (no config.json); give the "
                    f"workdir of a finished {kind} run")
  return config_path


def classifier_model(config, name: str, num_classes: int):
  """The model of the classifier run named by `config.inputs.<name>`, from its config.json."""
  workdir = config.get("inputs", {}).get(name, "")
  if not workdir:
    raise UserError(f"inputs.{name} is not set: give the workdir of a classifier run")
  saved = json.loads(run_config_path(workdir, f"inputs.{name}").read_text())
  return models.build(ml_collections.ConfigDict(saved["model"]), num_classes)


def classifier(name: str, provides: str, classes: Callable[[Any, tasks.Spec], int],
               required: bool = True) -> Input:
  """A jaxlab classifier run with `classes(config, spec)` outputs, any architecture."""
  def variables(config, spec):
    model = classifier_model(config, name, classes(config, spec))
    return dict(model.init(jax.random.key(0), jnp.zeros((1,) + tuple(spec.input_shape))))
  return Input(name, provides, variables, required)


GENERATOR_KINDS = ("cgan", "ddpm")


def diffusion_model(workdir: str, field: str, num_classes: int,
                    image_shape) -> diffusion.Diffusion:
  """The diffusion model of the `ddpm` run in `workdir` (its network and schedule from the
  run's config.json) for `num_classes` classes and images of `image_shape`."""
  saved = json.loads(run_config_path(workdir, field, "ddpm").read_text())
  if saved.get("method") != "ddpm":
    raise UserError(f"{field}={workdir!r} is a {saved.get('method')!r} run, not a ddpm run "
                    "(configs/ddpm.py)")
  return diffusion.build(ml_collections.ConfigDict(saved["model"]),
                         ml_collections.ConfigDict(saved["diffusion"]), num_classes, image_shape)


def generator_model(config, spec: tasks.Spec, num_classes: int):
  """The frozen generator G(z, c) that `inputs.generator` holds, as `config.generator.kind`
  says: `cgan` (its architecture `config.generator`) or `ddpm` (a trained diffusion model,
  its architecture read from the run, sampled by deterministic DDIM in
  `generator.sample_steps` steps with guidance `generator.guidance`; z is x_T, so
  `latent_dim` is the image size). Both have `.latent_dim` and `.apply(variables, z, c)`."""
  g = config.generator
  kind = g.get("kind", "cgan")
  if kind not in GENERATOR_KINDS:
    raise UserError(f"config.generator.kind={kind!r} is not valid; valid: "
                    + ", ".join(GENERATOR_KINDS))
  workdir = config.get("inputs", {}).get("generator", "")
  if kind == "ddpm":
    return diffusion.DiffusionGenerator(
        diffusion_model(workdir, "inputs.generator", num_classes, spec.input_shape),
        steps=g.sample_steps, guidance=g.guidance, ema=g.ema)
  saved = epath.Path(workdir) / "config.json" if workdir else None
  if saved is not None and saved.exists() and json.loads(saved.read_text()).get(
      "method") == "ddpm":
    raise UserError(f"inputs.generator={workdir!r} is a ddpm run: set "
                    "--config.generator.kind=ddpm")
  return gan.build_generator(g, num_classes, spec.input_shape)


def generator(name: str, provides: str, classes: Callable[[Any, tasks.Spec], int]) -> Input:
  """A generator run conditioned on `classes` classes: a `cgan` run of the architecture
  `config.generator`, or a `ddpm` run (`generator.kind`; see `generator_model`)."""
  def variables(config, spec):
    model = generator_model(config, spec, classes(config, spec))
    if isinstance(model, diffusion.DiffusionGenerator):
      return model.init(jax.random.key(0))
    return gan.init_generator(model, jax.random.key(0))
  return Input(name, provides, variables)


def diffusion_run(name: str, provides: str) -> Input:
  """A `ddpm` run on the task's classes and image shape: its {"params", "ema"}."""
  def variables(config, spec):
    model = diffusion_model(config.inputs[name], f"inputs.{name}", spec.num_classes,
                            spec.input_shape)
    return diffusion.DiffusionGenerator(model).init(jax.random.key(0))
  return Input(name, provides, variables)


def _own_variables(config, spec):
  model = models.build(config.model, spec.num_classes)
  return dict(model.init(jax.random.key(0), jnp.zeros((2,) + tuple(spec.input_shape)),
                         train=False))


def own_model(name: str, provides: str, fallback: str = "", required: bool = True) -> Input:
  """A run of the trained model's own architecture (`config.model`, the task's classes)."""
  return Input(name, provides, _own_variables, required=required, fallback=fallback)


# (config, the steps the run kept) -> the steps read
StepsFn = Callable[[Any, List[int]], List[int]]


def trajectory(name: str, provides: str, choose: StepsFn) -> Input:
  """The weights a run of the trained model's architecture kept (`train.keep_schedule`) at the
  steps `choose` picks, stacked on a leading axis in step order."""
  field = f"inputs.{name}"

  def steps(config) -> List[int]:
    return choose(config, trajectory_steps(config.inputs[name], field))

  def variables(config, spec):
    one = _own_variables(config, spec)
    return jax.tree.map(lambda x: jnp.zeros((len(steps(config)),) + x.shape, x.dtype), one)

  def loader(config, workdir: str, like, field: str):
    one = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), like)
    return load_trajectory(workdir, one, steps(config), field)

  return Input(name, provides, variables, loader=loader)
