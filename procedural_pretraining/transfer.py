"""Selective transfer of pretrained weights by parameter path (method-spec §5 and §8).

A *component* is a predicate on a parameter path (``h/0/attn/c_attn/kernel``): ``attn``, ``mlp``
(alias ``ffn``), ``ln``, ``heads``, ``attn+ln``, ``embed`` (= ``words`` + ``positions``, alias
``wpe``) and ``everything``. ``merge`` builds the target parameters leaf by leaf — copied from a
source, filled by an embedding strategy, or left at the fresh init — and returns a report that
accounts for every target parameter. Anything that cannot be honoured exactly (a shape mismatch, a
tensor the source lacks, a vocabulary the strategy cannot map) is an error that names the parameter,
never a silent partial load.

Composition (§8.4) is ``merge`` with components taken from different sources; the perturbation
controls (§8.1–8.2) act on the leaves a report marks as transferred; ``noparity`` removes the
position-parity part of the transferred position rows.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from procedural_pretraining import model

EMBEDDING_STRATEGIES = ("average", "retain", "partial_matching", "random")
EMBEDDING_PATHS = ("wte", "wpe", "lm_head")


class TransferError(ValueError):
  """A transfer that cannot be done as requested; the message names the parameter."""


def path_str(path) -> str:
  return "/".join(model.path_names(path))


def _parts(path: str) -> list[str]:
  return path.split("/")


def _is_embedding(path: str) -> bool:
  return _parts(path)[0] in EMBEDDING_PATHS


# Component predicates on path strings (the Flax counterparts of the reference's substring rules).
COMPONENTS: dict[str, Callable[[str], bool]] = {
    "attn": lambda p: "attn" in _parts(p),
    "mlp": lambda p: "mlp" in _parts(p),
    "ln": lambda p: any(part in ("ln_1", "ln_2", "ln_f") for part in _parts(p)),
    "heads": lambda p: "c_attn" in _parts(p),
    "attn+ln": lambda p: "attn" in _parts(p) or "ln_1" in _parts(p),
    "embed": _is_embedding,
    # The two halves of ``embed``: the Dyck → Haystack lift depends on which run the position
    # table comes from (README, "The Dyck → Haystack result"), so arms can move it on its own.
    "positions": lambda p: _parts(p)[0] == "wpe",
    "words": lambda p: _parts(p)[0] in ("wte", "lm_head"),
    "everything": lambda p: True,
}
ALIASES = {"ffn": "mlp", "wpe": "positions"}


def canonical(component: str) -> str:
  name = ALIASES.get(component, component)
  if name not in COMPONENTS:
    raise TransferError(f"unknown transfer component {component!r}; use one of "
                        f"{sorted(COMPONENTS) + sorted(ALIASES)}")
  return name


def parse_components(spec: str | Sequence[str]) -> list[str]:
  """``'attn+mlp'``-style or list → canonical names (``attn+ln`` is one component)."""
  if isinstance(spec, str):
    spec = [spec] if spec in COMPONENTS else [s for s in spec.replace(",", "+").split("+") if s]
  return [canonical(s) for s in spec]


def flatten(params) -> dict[str, np.ndarray]:
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  return {path_str(path): leaf for path, leaf in leaves}


def unflatten_like(reference, flat: Mapping[str, np.ndarray]):
  return jax.tree_util.tree_map_with_path(lambda path, _: flat[path_str(path)], reference)


def matches(components: Sequence[str], path: str) -> bool:
  return any(COMPONENTS[c](path) for c in components)


@dataclasses.dataclass
class TransferReport:
  """For every target parameter: ``copied:<src>``, ``average:<src>``, ``partial:<src>``,
  ``rows:<src>`` (leading position rows) or ``fresh``; plus which leaves are trainable."""

  status: dict[str, str]
  trainable: dict[str, bool]
  unused_source: dict[str, list[str]]

  def counts(self) -> dict[str, int]:
    out: dict[str, int] = {}
    for status in self.status.values():
      kind = status.split(":")[0]
      out[kind] = out.get(kind, 0) + 1
    out["frozen"] = sum(not t for t in self.trainable.values())
    return out

  def transferred(self) -> list[str]:
    return [p for p, s in self.status.items() if s != "fresh"]

  def table(self) -> str:
    width = max(len(p) for p in self.status)
    rows = [f"{p:<{width}}  {s:<14} {'train' if self.trainable[p] else 'FROZEN'}"
            for p, s in self.status.items()]
    return "\n".join(rows)


def _embedding_mean(source: Mapping[str, np.ndarray], name: str) -> np.ndarray:
  if "wte/embedding" not in source:
    raise TransferError(f"cannot fill {name}: the source has no wte/embedding")
  return np.asarray(source["wte/embedding"]).mean(axis=0)


def _word_embeddings(strategy: str, path: str, fresh: np.ndarray, source: Mapping[str, np.ndarray],
                     source_name: str) -> tuple[np.ndarray, str]:
  """Target ``wte/embedding`` ``[V, d]`` or untied ``lm_head/kernel`` ``[d, V]`` per strategy (§5.4)."""
  if strategy == "random":
    return fresh, "fresh"
  is_head = path.startswith("lm_head")
  rows_fresh = fresh.T if is_head else fresh  # work in [V, d]
  src = np.asarray(source["wte/embedding"]) if "wte/embedding" in source else None
  if src is None:
    raise TransferError(f"cannot fill {path}: the source has no wte/embedding")
  if src.shape[1] != rows_fresh.shape[1]:
    raise TransferError(f"{path}: source width {src.shape[1]} != target width {rows_fresh.shape[1]}")
  mean = src.mean(axis=0)
  if strategy == "average":
    rows, status = np.broadcast_to(mean, rows_fresh.shape), f"average:{source_name}"
  elif strategy == "retain":
    if src.shape != rows_fresh.shape:
      raise TransferError(f"{path}: embedding strategy 'retain' needs the same vocabulary, source "
                          f"has {src.shape[0]} tokens and target {rows_fresh.shape[0]}; use "
                          "'average' or 'partial_matching'")
    rows, status = src, f"copied:{source_name}"
  elif strategy == "partial_matching":
    if src.shape[0] > rows_fresh.shape[0]:
      raise TransferError(f"{path}: 'partial_matching' needs target vocabulary ≥ source ({src.shape[0]}"
                          f" > {rows_fresh.shape[0]})")
    rows = np.concatenate([src, np.broadcast_to(mean, (rows_fresh.shape[0] - src.shape[0],
                                                       src.shape[1]))])
    status = f"partial:{source_name}"
  else:
    raise TransferError(f"unknown embedding strategy {strategy!r}; use one of {EMBEDDING_STRATEGIES}")
  rows = np.asarray(rows, dtype=fresh.dtype)
  return (rows.T.copy() if is_head else rows.copy()), status


def merge(target, assignments: Sequence[tuple[str | Sequence[str], Mapping | object, str]], *,
          embedding: str = "average", train: str | Sequence[str] = "everything"):
  """Builds transferred parameters.

  Args:
    target: freshly initialised target params (pure dict).
    assignments: ``(components, source_params, source_name)`` triples, applied in order (a later
      assignment wins where components overlap), e.g. ``[('attn', run_a, 'A'), ('mlp', run_b, 'B')]``.
      ``embed``/``everything`` fill ``wte``/``lm_head`` with ``embedding`` and copy ``wpe`` rows
      (§5.5); ``words`` does only the first, ``positions`` only the second; other components never
      touch embedding tensors (§5.2 step 4).
    embedding: word-embedding strategy (``average``, ``retain``, ``partial_matching``, ``random``).
    train: components left trainable (``everything`` = all); the rest are frozen (§5.8).

  Returns:
    ``(params, report)``; ``report.trainable`` is the freezing mask as a flat dict.
  """
  if embedding not in EMBEDDING_STRATEGIES:
    raise TransferError(f"unknown embedding strategy {embedding!r}; use one of {EMBEDDING_STRATEGIES}")
  fresh = {p: np.asarray(v) for p, v in flatten(target).items()}
  out = dict(fresh)
  status = {p: "fresh" for p in fresh}
  unused: dict[str, list[str]] = {}
  for components, source_params, source_name in assignments:
    components = parse_components(components)
    source = {p: np.asarray(v) for p, v in flatten(source_params).items()}
    used = set()
    for path, fresh_leaf in fresh.items():
      if not matches(components, path):
        continue
      if _is_embedding(path):
        if path.startswith("wpe"):
          src = source.get(path)
          if src is None:
            raise TransferError(f"source {source_name} has no {path}")
          used.add(path)
          if src.shape[1] != fresh_leaf.shape[1]:
            raise TransferError(f"{path}: source width {src.shape[1]} != target {fresh_leaf.shape[1]}")
          if src.shape[0] >= fresh_leaf.shape[0]:  # §5.5: copy leading rows or keep random
            out[path], status[path] = src[:fresh_leaf.shape[0]].copy(), f"rows:{source_name}"
        else:
          used.add("wte/embedding")
          out[path], status[path] = _word_embeddings(embedding, path, fresh_leaf, source, source_name)
        continue
      if path not in source:
        raise TransferError(f"source {source_name} has no {path} (needed by "
                            f"{'+'.join(components)}); source and target shapes differ")
      if source[path].shape != fresh_leaf.shape:
        raise TransferError(f"{path}: source {source_name} shape {source[path].shape} != target "
                            f"{fresh_leaf.shape}")
      out[path], status[path] = source[path].astype(fresh_leaf.dtype).copy(), f"copied:{source_name}"
      used.add(path)
    unused[source_name] = sorted(set(source) - used - {"lm_head/kernel"})
  train_components = parse_components(train)
  trainable = {p: "everything" in train_components or matches(train_components, p) for p in fresh}
  report = TransferReport(status=status, trainable=trainable, unused_source=unused)
  if set(report.status) != set(fresh):  # every target parameter must be accounted for
    missing = sorted(set(fresh) - set(report.status))
    raise TransferError(f"parameters not accounted for by the transfer: {missing}")
  return unflatten_like(target, out), report


def trainable_tree(params, report: TransferReport):
  """The report's freezing mask as a bool pytree shaped like ``params`` (for ``make_optimizer``)."""
  return jax.tree_util.tree_map_with_path(lambda path, _: report.trainable[path_str(path)], params)


def _leaf_key(key: jax.Array, path: str) -> jax.Array:
  tag = int.from_bytes(hashlib.blake2b(path.encode(), digest_size=4).digest(), "little")
  return jax.random.fold_in(key, tag)


def add_noise(params, paths: Sequence[str], key: jax.Array, *, sigma: float, relative: bool = False):
  """Adds N(0, σ²) to the leaves at ``paths`` (σ × each tensor's std when ``relative``) (§8.1)."""
  selected = set(paths)

  def perturb(path, leaf):
    name = path_str(path)
    if name not in selected:
      return leaf
    scale = sigma * (jnp.std(leaf) if relative else 1.0)
    return leaf + scale * jax.random.normal(_leaf_key(key, name), leaf.shape, leaf.dtype)

  return jax.tree_util.tree_map_with_path(perturb, params)


def shuffle_entries(params, paths: Sequence[str], key: jax.Array):
  """Permutes the entries of each tensor at ``paths`` independently (flatten → permute → reshape)."""
  selected = set(paths)

  def shuffle(path, leaf):
    name = path_str(path)
    if name not in selected:
      return leaf
    flat = jnp.ravel(leaf)
    return jax.random.permutation(_leaf_key(key, name), flat).reshape(leaf.shape)

  return jax.tree_util.tree_map_with_path(shuffle, params)


def position_parity_part(table_PxD: np.ndarray) -> np.ndarray:
  """The part of a position table explained by position parity: the least-squares fit of every
  column on the centred parity indicator (``+1`` at even positions, ``-1`` at odd ones).

  k-Dyck makes parity worth encoding (depth ≡ position + 1 mod 2), and the Haystack lift from a
  Dyck checkpoint goes with it: removing this rank-1 part from a checkpoint that lifts stops the
  lift, adding it to one that does not starts it (README, "The Dyck → Haystack result").
  """
  table = np.asarray(table_PxD, np.float64)
  sign = np.where(np.arange(table.shape[0]) % 2 == 0, 1.0, -1.0)
  sign -= sign.mean()
  if not sign.any():  # a single row has no parity
    return np.zeros_like(table)
  return np.outer(sign, sign @ table / (sign @ sign))


def remove_position_parity(params, report: TransferReport):
  """The ``noparity`` control: the transferred position rows minus their parity part."""
  if not report.status.get("wpe/embedding", "fresh").startswith("rows:"):
    raise TransferError("the noparity control needs transferred position embeddings (wpe); "
                        "use it on an arm that transfers embed, positions or everything")

  def edit(path, leaf):
    if path_str(path) != "wpe/embedding":
      return leaf
    return (np.asarray(leaf) - position_parity_part(leaf)).astype(np.asarray(leaf).dtype)

  return jax.tree_util.tree_map_with_path(edit, params)


PERTURBATIONS = ("noise", "relnoise", "shuffle", "noparity")
PERTURBATION_KEY = 0x5EED  # folded into the run seed's key: perturbations never reuse an init key


def perturb_transferred(params, report: TransferReport, kind: str, amount: float, seed: int):
  """Applies a §8 control to every transferred tensor of ``report``, keyed by the run ``seed``:
  ``noise`` (σ = ``amount``), ``relnoise`` (σ = ``amount`` × each tensor's std), ``shuffle``,
  or ``noparity`` (deterministic: the position rows lose their parity part)."""
  if kind not in PERTURBATIONS:
    raise TransferError(f"unknown perturbation {kind!r}; use one of {', '.join(PERTURBATIONS)}")
  if kind == "noparity":
    return remove_position_parity(params, report)
  key = jax.random.fold_in(jax.random.key(seed), PERTURBATION_KEY)
  paths = select(report)
  if kind == "shuffle":
    return shuffle_entries(params, paths, key)
  return add_noise(params, paths, key, sigma=amount, relative=kind == "relnoise")


def select(report: TransferReport, components: str | Sequence[str] = "everything") -> list[str]:
  """Transferred paths within ``components`` (what a perturbation should act on)."""
  components = parse_components(components)
  return [p for p in report.transferred() if "everything" in components or matches(components, p)]
