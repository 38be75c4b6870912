"""Permutation specs derived from the model's own computation, not written by hand.

`derive(model, variables, input_shape)` traces the model in eval mode to a jaxpr and follows
every array axis through it. Axes that must carry the same unit order are unified
(union-find): the operands of an elementwise op, the contracted axes of a matmul or a
convolution's input features and kernel input features, a kernel's output features and the
result's features, a BatchNorm's statistics and scale with the channels they act on, the two
branches of a residual sum. Axes that cannot be permuted are pinned: the input image, the
logits, spatial axes, and anything an op mixes with other axes (a flatten of spatial x
channels, a concatenation axis, an op the analysis does not know). What remains, grouped by
class, are the model's hidden-unit permutations: each a list of (variable path, axis) that one
permutation acts on together. Residual groups come out sharing one permutation because their
sum unifies them, which is what the hand-written ResNet specs of Git Re-Basin encode (and
where their published versions had typos).

`permute(variables, spec, perms)` applies permutations; a model permuted so computes the same
function (tested for every supported model in jaxlab.models with random permutations).
Convolutions are traced in their XLA form (`JAXLAB_CONV_IMPL=xla` while tracing): the CPU
im2col form concatenates channels with spatial taps, which would pin them.
"""

import contextlib
import dataclasses
import os
from typing import Dict, List, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

FIXED = -1
Path = Tuple[str, ...]

# elementwise ops: output axis k is input axis k of every (non-scalar) operand
_ELEMENTWISE = {
    "add", "sub", "mul", "div", "max", "min", "pow", "integer_pow", "neg", "exp", "exp2", "log",
    "log1p", "expm1", "tanh", "logistic", "sqrt", "rsqrt", "abs", "sign", "select_n",
    "convert_element_type", "stop_gradient", "copy", "copy_p", "erf", "square", "sin", "cos",
    "gt", "lt", "ge", "le", "eq", "ne", "and", "or", "not", "clamp", "nextafter", "floor",
    "ceil", "round", "is_finite", "reduce_precision", "erf_inv", "atan2", "rem", "cbrt",
    "add_any", "pjit_identity", "optimization_barrier"}
_REDUCTIONS = {"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "argmax", "argmin",
               "reduce_and", "reduce_or"}
_CALLS = ("jaxpr", "call_jaxpr", "fun_jaxpr")


class _Axes:
  """Union-find over array axes; FIXED is one shared class."""

  def __init__(self):
    self.parent = [0]  # node 0 stands for FIXED

  def new(self) -> int:
    self.parent.append(len(self.parent))
    return len(self.parent) - 1

  def find(self, a: int) -> int:
    while self.parent[a] != a:
      self.parent[a] = self.parent[self.parent[a]]
      a = self.parent[a]
    return a

  def union(self, a: int, b: int) -> None:
    ra, rb = self.find(a), self.find(b)
    if ra != rb:
      if rb == 0:
        ra, rb = rb, ra
      self.parent[rb] = ra  # the FIXED root (0) always wins

  def pin(self, a: int) -> None:
    self.union(0, a)


@dataclasses.dataclass
class Spec:
  """groups: {name: [(variable path, axis), ...]}; sizes: {name: units}."""
  groups: Dict[str, List[Tuple[Path, int]]]
  sizes: Dict[str, int]

  def within(self, collection: str) -> "Spec":
    """The groups restricted to the variables of one collection ("params"), to permute a
    tree that holds only it (a displacement, a gradient)."""
    groups = {g: [(p, a) for p, a in members if p[0] == collection]
              for g, members in self.groups.items()}
    return Spec(groups={g: m for g, m in groups.items() if m},
                sizes={g: self.sizes[g] for g, m in groups.items() if m})

  def axes_of(self, path: Path) -> Dict[int, str]:
    return {axis: g for g, members in self.groups.items() for p, axis in members if p == path}


def _inner_jaxpr(eqn):
  for key in _CALLS:
    inner = eqn.params.get(key)
    if inner is not None:
      return inner.jaxpr if hasattr(inner, "jaxpr") else inner
  return None


class _Tracer:
  def __init__(self):
    self.axes = _Axes()
    self.nodes: Dict[object, List[int]] = {}

  def of(self, var) -> List[int]:
    if not hasattr(var, "aval") or type(var).__name__ == "Literal":
      return [0] * len(getattr(var, "aval", np.zeros(())).shape)
    if var not in self.nodes:
      self.nodes[var] = [self.axes.new() for _ in var.aval.shape]
    return self.nodes[var]

  def pin_all(self, var) -> None:
    for n in self.of(var):
      self.axes.pin(n)

  def unify(self, a: List[int], b: List[int]) -> None:
    for x, y in zip(a, b):
      self.axes.union(x, y)

  def run(self, jaxpr, inputs: Sequence[List[int]]) -> List[List[int]]:
    # a sub-jaxpr (e.g. relu's) is one object shared by every call site: its variables get
    # fresh axes at each call, or two sites would be tied together
    for var in list(jaxpr.invars) + list(jaxpr.constvars) + [
        v for eqn in jaxpr.eqns for v in eqn.outvars]:
      self.nodes.pop(var, None)
    for var, nodes in zip(jaxpr.invars, inputs):
      self.unify(self.of(var), nodes)
    for var in jaxpr.constvars:
      self.pin_all(var)
    for eqn in jaxpr.eqns:
      self.equation(eqn)
    return [self.of(v) for v in jaxpr.outvars]

  def equation(self, eqn) -> None:
    name = eqn.primitive.name
    ins, outs = eqn.invars, eqn.outvars
    shape = lambda v: tuple(v.aval.shape)
    inner = _inner_jaxpr(eqn)
    if inner is not None and name not in ("while", "scan", "cond"):
      results = self.run(inner, [self.of(v) for v in ins[-len(inner.invars):]]
                         if len(ins) >= len(inner.invars) else [self.of(v) for v in ins])
      for var, nodes in zip(outs, results):
        self.unify(self.of(var), nodes)
      return
    if name in _ELEMENTWISE:
      out = outs[0]
      for var in ins:
        if not shape(var):  # a scalar
          continue
        if len(shape(var)) != len(shape(out)):
          self.pin_all(var)
          self.pin_all(out)
          continue
        for k, (a, b) in enumerate(zip(self.of(var), self.of(out))):
          if shape(var)[k] == shape(out)[k]:
            self.axes.union(a, b)
          else:  # a size-1 axis broadcast against the others
            self.axes.pin(a)
      return
    if name == "broadcast_in_dim":
      (operand,), out = ins[:1], outs[0]
      source = self.of(operand)
      for i, d in enumerate(eqn.params["broadcast_dimensions"]):
        if shape(operand)[i] == shape(out)[d]:
          self.axes.union(source[i], self.of(out)[d])
        else:
          self.axes.pin(source[i])
      return
    if name in _REDUCTIONS:
      axes = set(eqn.params.get("axes", ()))
      kept = [n for i, n in enumerate(self.of(ins[0])) if i not in axes]
      self.unify(kept, self.of(outs[0]))
      for i in axes:
        self.axes.pin(self.of(ins[0])[i])
      return
    if name == "transpose":
      source = self.of(ins[0])
      self.unify([source[p] for p in eqn.params["permutation"]], self.of(outs[0]))
      return
    if name in ("squeeze", "expand_dims", "reshape"):
      self.reshape(ins[0], outs[0])
      return
    if name == "dot_general":
      (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
      lhs, rhs, out = self.of(ins[0]), self.of(ins[1]), self.of(outs[0])
      for a, b in zip(lc, rc):
        self.axes.union(lhs[a], rhs[b])
      for a, b in zip(lb, rb):
        self.axes.union(lhs[a], rhs[b])
      free_l = [i for i in range(len(lhs)) if i not in lc and i not in lb]
      free_r = [i for i in range(len(rhs)) if i not in rc and i not in rb]
      self.unify([lhs[i] for i in lb] + [lhs[i] for i in free_l] + [rhs[i] for i in free_r],
                 out)
      return
    if name == "conv_general_dilated":
      numbers = eqn.params["dimension_numbers"]
      lhs, rhs, out = self.of(ins[0]), self.of(ins[1]), self.of(outs[0])
      ls, rs, os_ = numbers.lhs_spec, numbers.rhs_spec, numbers.out_spec
      self.axes.union(lhs[ls[0]], out[os_[0]])  # batch
      if eqn.params["feature_group_count"] == 1 and eqn.params["batch_group_count"] == 1:
        self.axes.union(lhs[ls[1]], rhs[rs[1]])  # input features
        self.axes.union(rhs[rs[0]], out[os_[1]])  # output features
      else:
        for n in (lhs[ls[1]], rhs[rs[1]], rhs[rs[0]], out[os_[1]]):
          self.axes.pin(n)
      for nodes, spec in ((lhs, ls), (rhs, rs), (out, os_)):
        for d in spec[2:]:
          self.axes.pin(nodes[d])
      return
    if name in ("reduce_window_max", "reduce_window_sum", "reduce_window_min", "pad",
                "slice", "rev", "dynamic_slice"):
      out = outs[0]
      for i, (a, b) in enumerate(zip(self.of(ins[0]), self.of(out))):
        if shape(ins[0])[i] == shape(out)[i] and _untouched(eqn, i):
          self.axes.union(a, b)
        else:
          self.axes.pin(a)
          self.axes.pin(b)
      for var in ins[1:]:
        self.pin_all(var)
      return
    if name == "concatenate":
      dim = eqn.params["dimension"]
      out = self.of(outs[0])
      for var in ins:
        for i, n in enumerate(self.of(var)):
          if i == dim:
            self.axes.pin(n)
          else:
            self.axes.union(n, out[i])
      self.axes.pin(out[dim])
      return
    for var in list(ins) + list(outs):  # anything else: nothing may move through it
      self.pin_all(var)

  def reshape(self, source, target) -> None:
    """Axes that keep their size and position in the factorisation stay one class; merged or
    split axes are pinned (a flatten of spatial x channels cannot be permuted per channel)."""
    a, b = self.of(source), self.of(target)
    sa, sb = tuple(source.aval.shape), tuple(target.aval.shape)
    i = j = 0
    while i < len(sa) or j < len(sb):
      if i < len(sa) and sa[i] == 1 and (j >= len(sb) or sb[j] != 1):
        self.axes.pin(a[i]); i += 1; continue
      if j < len(sb) and sb[j] == 1 and (i >= len(sa) or sa[i] != 1):
        self.axes.pin(b[j]); j += 1; continue
      if i < len(sa) and j < len(sb) and sa[i] == sb[j]:
        self.axes.union(a[i], b[j]); i += 1; j += 1; continue
      # a block of axes merged or split: walk until the products meet
      pa, pb, ia, jb = 1, 1, [], []
      while True:
        if pa <= pb and i < len(sa):
          pa *= sa[i]; ia.append(i); i += 1
        elif j < len(sb):
          pb *= sb[j]; jb.append(j); j += 1
        if pa == pb or (i >= len(sa) and j >= len(sb)):
          break
      for k in ia:
        self.axes.pin(a[k])
      for k in jb:
        self.axes.pin(b[k])


def _untouched(eqn, axis: int) -> bool:
  p = eqn.params
  if eqn.primitive.name == "pad":
    lo, hi, interior = p["padding_config"][axis]
    return lo == hi == interior == 0
  if eqn.primitive.name == "slice":
    strides = p.get("strides") or (1,) * len(p["start_indices"])
    return p["start_indices"][axis] == 0 and strides[axis] == 1
  if eqn.primitive.name.startswith("reduce_window"):
    return p["window_dimensions"][axis] == 1 and p["window_strides"][axis] == 1
  if eqn.primitive.name == "rev":
    return axis not in p["dimensions"]
  return False


@contextlib.contextmanager
def _xla_convolutions():
  previous = os.environ.get("JAXLAB_CONV_IMPL")
  os.environ["JAXLAB_CONV_IMPL"] = "xla"
  try:
    yield
  finally:
    if previous is None:
      os.environ.pop("JAXLAB_CONV_IMPL")
    else:
      os.environ["JAXLAB_CONV_IMPL"] = previous


def derive(model, variables, input_shape: Sequence[int]) -> Spec:
  """The hidden-unit permutation groups of `model` with `variables` (eval mode)."""
  flat = traverse_util.flatten_dict(variables)
  paths = list(flat)
  leaves = [flat[p] for p in paths]

  def forward(leaves, x):
    return model.apply(traverse_util.unflatten_dict(dict(zip(paths, leaves))), x, train=False)

  x = jax.ShapeDtypeStruct((2,) + tuple(input_shape), jnp.float32)
  with _xla_convolutions():
    closed = jax.make_jaxpr(forward)([jax.ShapeDtypeStruct(v.shape, v.dtype) for v in leaves], x)
  tracer = _Tracer()
  jaxpr = closed.jaxpr
  inputs = [tracer.of(v) for v in jaxpr.invars]
  outputs = tracer.run(jaxpr, inputs)
  for n in inputs[-1]:  # the image
    tracer.axes.pin(n)
  for nodes in outputs:  # the logits
    for n in nodes:
      tracer.axes.pin(n)
  groups: Dict[int, List[Tuple[Path, int]]] = {}
  sizes: Dict[int, int] = {}
  for path, nodes, leaf in zip(paths, inputs[:-1], leaves):
    for axis, n in enumerate(nodes):
      root = tracer.axes.find(n)
      if root == 0:
        continue
      groups.setdefault(root, []).append((path, axis))
      sizes[root] = leaf.shape[axis]
  named = {}  # each group named by its first member
  for root, members in sorted(groups.items(), key=lambda kv: kv[1][0]):
    name = f"P_{'/'.join(members[0][0])}_{members[0][1]}"
    named[name] = (members, sizes[root])
  return Spec(groups={k: m for k, (m, _) in named.items()},
              sizes={k: s for k, (_, s) in named.items()})


def permute(variables, spec: Spec, perms: Dict[str, jax.Array]):
  """`variables` with every axis of every group reordered by its permutation."""
  flat = dict(traverse_util.flatten_dict(variables))
  for name, members in spec.groups.items():
    for path, axis in members:
      flat[path] = jnp.take(flat[path], perms[name], axis=axis)
  return traverse_util.unflatten_dict(flat)


def random_permutations(spec: Spec, key: jax.Array) -> Dict[str, jax.Array]:
  return {name: jax.random.permutation(jax.random.fold_in(key, i), spec.sizes[name])
          for i, name in enumerate(sorted(spec.groups))}
