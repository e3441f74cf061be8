"""GPT-2 in Flax NNX, numerically the Hugging Face ``GPT2LMHeadModel`` (method-spec §1).

Parameter paths keep the Hugging Face names (``wte``, ``wpe``, ``h/<i>/ln_1``,
``h/<i>/attn/c_attn``, ``h/<i>/attn/c_proj``, ``h/<i>/ln_2``, ``h/<i>/mlp/c_fc``,
``h/<i>/mlp/c_proj``, ``ln_f``, ``lm_head``) so that
selective transfer is a predicate on paths. Every weight carries logical sharding axis names
(``vocab``, ``embed``, ``heads``, ``mlp``, ``position``) that ``sharding.py`` maps onto a mesh.

The forward pass is explicit about randomness: dropout draws from a ``dropout_key`` argument rather
than from module-held RNG state, so the train step stays a pure function of
``(params, batch, key)`` that can be ``jit``-ed, ``vmap``-ed over seeds and replayed exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

# Logical axis names of every weight; sharding.py maps them to mesh axes.
AXES = {
    "wte": ("vocab", "embed"),
    "wpe": ("position", "embed"),
    "ln": ("embed",),
    "c_attn_kernel": ("embed", "heads"),
    "c_attn_bias": ("heads",),
    "attn_proj_kernel": ("heads", "embed"),
    "c_fc_kernel": ("embed", "mlp"),
    "c_fc_bias": ("mlp",),
    "mlp_proj_kernel": ("mlp", "embed"),
    "proj_bias": ("embed",),
    "lm_head": ("embed", "vocab"),
}

_SIZE_RE = re.compile(r"^(\d+)_(\d+)_(\d+)$")


def path_names(path) -> tuple[str, ...]:
  """A pytree key path as names (``('h', '0', 'attn', 'c_attn', 'kernel')``): dict keys, sequence
  indices and attribute names alike, so parameter and optimizer-state paths read the same way."""
  return tuple(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def parse_size(size: str) -> tuple[int, int, int]:
  """``'layers_heads_width'`` (e.g. ``'12_12_768'``) → ``(n_layer, n_head, n_embd)``."""
  match = _SIZE_RE.match(size)
  if not match:
    raise ValueError(f"model size {size!r} is not of the form layers_heads_width, e.g. '2_4_16'")
  n_layer, n_head, n_embd = map(int, match.groups())
  if min(n_layer, n_head, n_embd) < 1 or n_embd % n_head:
    raise ValueError(f"model size {size!r}: width {n_embd} must be a positive multiple of the "
                     f"{n_head} heads and there must be at least one layer")
  return n_layer, n_head, n_embd


@dataclasses.dataclass(frozen=True)
class GPT2Config:
  """Architecture of one GPT-2; field names follow Hugging Face's ``GPT2Config``."""

  vocab_size: int
  n_positions: int
  n_layer: int = 2
  n_head: int = 4
  n_embd: int = 16
  tie_word_embeddings: bool = True
  embd_pdrop: float = 0.1
  attn_pdrop: float = 0.1
  resid_pdrop: float = 0.1
  layer_norm_epsilon: float = 1e-5
  initializer_range: float = 0.02
  # 'float32' or 'bfloat16': dtype of matmuls; parameters, LayerNorm, softmax and logits stay fp32.
  compute_dtype: str = "float32"
  # > 0: attention runs over blocks of the batch whose fp32 scores take at most this many bytes, one
  # block after another (``_attention_blocks``); 0: the whole batch at once; -1 (auto): on CPU,
  # AUTO_ATTENTION_BLOCK_BYTES blocks once the batch's scores exceed AUTO_ATTENTION_MIN_BYTES, else
  # the whole batch. A speed knob (blocks that stay in a CPU's cache are faster); same results.
  attention_block_bytes: int = -1

  def __post_init__(self):
    if self.vocab_size < 1 or self.n_positions < 1:
      raise ValueError(f"vocab_size ({self.vocab_size}) and n_positions ({self.n_positions}) "
                       "must be positive")
    if self.n_embd % self.n_head:
      raise ValueError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
    if self.compute_dtype not in ("float32", "bfloat16"):
      raise ValueError(f"compute_dtype must be 'float32' or 'bfloat16', got {self.compute_dtype!r}")
    if not isinstance(self.attention_block_bytes, int) or self.attention_block_bytes < -1:
      raise ValueError(f"attention_block_bytes must be an int >= -1 (-1: auto, 0: no blocks), got "
                       f"{self.attention_block_bytes!r}")

  @classmethod
  def from_size(cls, size: str, **kwargs: Any) -> GPT2Config:
    n_layer, n_head, n_embd = parse_size(size)
    return cls(n_layer=n_layer, n_head=n_head, n_embd=n_embd, **kwargs)

  @property
  def size(self) -> str:
    return f"{self.n_layer}_{self.n_head}_{self.n_embd}"

  @property
  def dtype(self):
    return jnp.dtype(self.compute_dtype)


def num_params(config: GPT2Config) -> int:
  """Closed-form parameter count (method-spec §1.5)."""
  d, n = config.n_embd, config.n_layer
  per_block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)
  embeddings = config.vocab_size * d + config.n_positions * d
  head = 0 if config.tie_word_embeddings else config.vocab_size * d
  return embeddings + n * per_block + 2 * d + head


def _normal(std: float, axes: tuple[str, ...]):
  return nnx.with_partitioning(nnx.initializers.normal(std), axes)


def _zeros(axes):
  return nnx.with_partitioning(nnx.initializers.zeros_init(), axes)


def _ones(axes):
  return nnx.with_partitioning(nnx.initializers.ones_init(), axes)


# Dropout decides each unit with a 16-bit uniform: one 32-bit random word decides two adjacent units.
# ``jax.random.bernoulli`` spends a whole threefry word per unit, and with dropout on, generating
# them dominates a small model's step (the [B, H, T, T] attention-dropout mask above all): half the
# words is ~1.7x less RNG time (``benchmarks/train_step.py --dropout``). The rate is quantised to
# 1/65536 (0.1 → 0.1000061), and the kept units are rescaled by the exact keep probability, so the
# expectation is unchanged as in torch's inverted dropout.
_DROPOUT_LEVELS = 1 << 16


def dropout_keep_probability(rate: float) -> float:
  """The keep probability ``_dropout`` realises for ``rate`` (``1 - rate`` to within 2**-17)."""
  return 1.0 - round(rate * _DROPOUT_LEVELS) / _DROPOUT_LEVELS


def _dropout_keep(shape: tuple[int, ...], rate: float, key: jax.Array | None) -> jax.Array | None:
  """bool ``shape``: the units ``_dropout`` keeps (``None``: dropout is off, keep everything)."""
  if key is None or rate == 0.0:
    return None
  threshold = round(rate * _DROPOUT_LEVELS)
  if threshold >= _DROPOUT_LEVELS:
    return jnp.zeros(shape, bool)
  # Words over the last axis only, so the leading (batch) axes keep their sharding.
  *lead, last = shape
  words = jax.random.bits(key, (*lead, (last + 1) // 2), jnp.uint32)
  halves = jax.lax.bitcast_convert_type(words, jnp.uint16)  # [..., ceil(last / 2), 2]
  return halves.reshape(*lead, -1)[..., :last] >= threshold


def _apply_dropout(x: jax.Array, keep: jax.Array | None, rate: float) -> jax.Array:
  if keep is None:
    return x
  if round(rate * _DROPOUT_LEVELS) >= _DROPOUT_LEVELS:
    return jnp.zeros_like(x)
  return jnp.where(keep, x / dropout_keep_probability(rate), 0).astype(x.dtype)


def _dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
  return _apply_dropout(x, _dropout_keep(x.shape, rate, key), rate)


def _layer_norm(config: GPT2Config, width: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
  # LayerNorm runs in fp32 even under bf16 compute (as HF autocast does).
  return nnx.LayerNorm(width, epsilon=config.layer_norm_epsilon, dtype=jnp.float32,
                       scale_init=_ones(AXES["ln"]), bias_init=_zeros(AXES["ln"]), rngs=rngs)


def _dense(config, n_in, n_out, kernel_axes, bias_axes, std, rngs) -> nnx.Linear:
  return nnx.Linear(n_in, n_out, dtype=config.dtype, param_dtype=jnp.float32,
                    kernel_init=_normal(std, kernel_axes), bias_init=_zeros(bias_axes), rngs=rngs)


# The auto setting, measured with benchmarks/train_step.py --attention_block_bytes on this project's
# CPU (AMD EPYC, 2 cores, 1 MiB L2 each, 32 MiB L3), 2_4_16 at 64-1000 × 63-129 and 4_4_256: 2 MiB
# blocks were the fastest of 0.25-8 MiB (1.1-1.4× over the whole batch once its scores take ≥ 16 MiB),
# while batches of ≤ 8 MiB (e.g. 32 × 129, 12_12_768 at 8 × 128) ran 3-8 % slower in blocks.
AUTO_ATTENTION_BLOCK_BYTES = 2 << 20
AUTO_ATTENTION_MIN_BYTES = 12 << 20


def attention_block_bytes_for(setting: int, batch_score_bytes: int) -> int:
  """The block budget ``setting`` (``GPT2Config.attention_block_bytes``) gives a batch whose fp32
  scores take ``batch_score_bytes``: -1 (auto) blocks on CPU only, and only large batches."""
  if setting != -1:
    return setting
  if jax.default_backend() != "cpu" or batch_score_bytes <= AUTO_ATTENTION_MIN_BYTES:
    return 0
  return AUTO_ATTENTION_BLOCK_BYTES


def _batch_blocks(batch: int, example_bytes: int, block_bytes: int, shards: int = 1) -> int:
  """How many blocks ``_attention_blocks`` splits a batch into: the fewest whose size divides
  ``batch``, is a multiple of ``shards`` and whose scores fit in ``block_bytes``; if no size is such a
  multiple, the fewest that fit; 1 = no blocks (``block_bytes`` 0, or the whole batch fits).

  ``shards`` is how many devices the batch may be split over: a block whose size they do not divide
  is resharded at every block (measured: Haystack 2_4_16 × 1000 data-parallel on 2 CPU devices runs
  0.14 s/step in blocks of 20, 0.24 in blocks of 25, 0.18 whole)."""
  if block_bytes <= 0 or batch * example_bytes <= block_bytes:
    return 1

  def fewest(multiple):
    return next((blocks for blocks in range(2, batch + 1) if batch % blocks == 0
                 and (batch // blocks) % multiple == 0
                 and (batch // blocks) * example_bytes <= block_bytes), None)

  return fewest(shards) or fewest(1) or batch


def _attention_blocks(attend, args: tuple, blocks: int):
  """``attend(*args)`` over ``blocks`` blocks of the batch, one after another (``lax.map``).

  XLA:CPU runs the score → softmax → weighted-sum chain as separate passes over [B, H, Q, K]
  arrays; for a small model these passes are the step, and they go ~1.5× faster when each block's
  arrays stay in the core's cache (``benchmarks/train_step.py --attention_block_bytes``). Example
  ``b`` goes to block ``b % blocks``: the leading axis splits as ``[B / blocks, blocks]`` and the
  map runs over the minor part, so a batch sharded over devices keeps every block sharded the
  same way. Arguments whose leading axis is 1 (a mask shared by the batch) or ``None`` are passed
  to every block whole. Each example is computed as it would be unblocked.
  """
  if blocks == 1:
    return attend(*args)
  batch = next(a.shape[0] for a in args if a is not None and a.shape[0] != 1)
  per_example = [a is not None and a.shape[0] == batch for a in args]
  split = lambda a: a.reshape(batch // blocks, blocks, *a.shape[1:]).swapaxes(0, 1)  # noqa: E731
  blocked = tuple(split(a) for a, b in zip(args, per_example, strict=True) if b)

  def one_block(xs):
    parts = iter(xs)
    return attend(*(next(parts) if b else a for a, b in zip(args, per_example, strict=True)))

  outs = jax.lax.map(one_block, blocked)
  return jax.tree.map(lambda o: o.swapaxes(0, 1).reshape(batch, *o.shape[2:]), outs)


class Attention(nnx.Module):
  """Causal multi-head self-attention with a fused ``c_attn`` (q | k | v) projection."""

  def __init__(self, config: GPT2Config, rngs: nnx.Rngs):
    d, std = config.n_embd, config.initializer_range
    residual_std = std / math.sqrt(2 * config.n_layer)
    self.n_head = config.n_head
    self.attn_pdrop = config.attn_pdrop
    self.resid_pdrop = config.resid_pdrop
    self.attention_block_bytes = config.attention_block_bytes
    self.c_attn = _dense(config, d, 3 * d, AXES["c_attn_kernel"], AXES["c_attn_bias"], std, rngs)
    self.c_proj = _dense(config, d, d, AXES["attn_proj_kernel"], AXES["proj_bias"],
                         residual_std, rngs)

  def __call__(self, x_BxTxD, *, key_mask_BxT=None, query_positions_BxP=None, dropout_key=None,
               return_attention=False):
    batch, length, width = x_BxTxD.shape
    head_dim = width // self.n_head
    qkv = self.c_attn(x_BxTxD)
    q, k, v = jnp.split(qkv, 3, axis=-1)
    query_index = jnp.arange(length)[None, :]
    if query_positions_BxP is not None:
      # Only these query rows are needed (e.g. the loss-bearing positions of the last block).
      q = jnp.take_along_axis(q, query_positions_BxP[..., None], axis=1)
      query_index = query_positions_BxP
    heads = lambda t: t.reshape(batch, t.shape[1], self.n_head, head_dim)
    q, k, v = heads(q), heads(k), heads(v)
    allowed = jnp.arange(length)[None, None, :] <= query_index[..., None]  # [B|1, Q, K]
    if key_mask_BxT is not None:
      allowed = allowed & key_mask_BxT[:, None, :].astype(bool)
    attn_key, resid_key = (None, None) if dropout_key is None else jax.random.split(dropout_key)
    # The mask is drawn for the whole batch, so blocking (below) leaves the random stream as it is.
    keep = _dropout_keep((batch, self.n_head, q.shape[1], length), self.attn_pdrop, attn_key)
    rate = self.attn_pdrop

    def attend(q, k, v, allowed, keep):
      scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
      scores = scores / jnp.sqrt(jnp.float32(head_dim))
      scores = jnp.where(allowed[:, None], scores, jnp.finfo(jnp.float32).min)
      probs = jax.nn.softmax(scores, axis=-1)
      dropped = _apply_dropout(probs, keep, rate)
      out = jnp.einsum("bhqk,bkhd->bqhd", dropped.astype(v.dtype), v)
      return out, (probs if return_attention else None)

    score_bytes = 4 * self.n_head * q.shape[1] * length  # one example's fp32 scores
    budget = attention_block_bytes_for(self.attention_block_bytes, batch * score_bytes)
    # The batch may be split over every device (data parallel); blocks stay whole multiples of that.
    blocks = _batch_blocks(batch, score_bytes, budget, math.gcd(batch, jax.device_count()))
    out, probs = _attention_blocks(attend, (q, k, v, allowed, keep), blocks)
    out = self.c_proj(out.reshape(batch, out.shape[1], width))
    out = _dropout(out, self.resid_pdrop, resid_key)
    return out, probs


class MLP(nnx.Module):
  def __init__(self, config: GPT2Config, rngs: nnx.Rngs):
    d, std = config.n_embd, config.initializer_range
    residual_std = std / math.sqrt(2 * config.n_layer)
    self.resid_pdrop = config.resid_pdrop
    self.c_fc = _dense(config, d, 4 * d, AXES["c_fc_kernel"], AXES["c_fc_bias"], std, rngs)
    self.c_proj = _dense(config, 4 * d, d, AXES["mlp_proj_kernel"], AXES["proj_bias"],
                         residual_std, rngs)

  def __call__(self, x, dropout_key=None):
    hidden = jax.nn.gelu(self.c_fc(x), approximate=True)  # HF "gelu_new"
    return _dropout(self.c_proj(hidden), self.resid_pdrop, dropout_key)


class Block(nnx.Module):
  """Pre-LayerNorm transformer block."""

  def __init__(self, config: GPT2Config, rngs: nnx.Rngs):
    self.ln_1 = _layer_norm(config, config.n_embd, rngs)
    self.attn = Attention(config, rngs)
    self.ln_2 = _layer_norm(config, config.n_embd, rngs)
    self.mlp = MLP(config, rngs)

  def __call__(self, h, *, key_mask_BxT=None, query_positions_BxP=None, dropout_key=None,
               return_attention=False):
    attn_key, mlp_key = (None, None) if dropout_key is None else jax.random.split(dropout_key)
    normed = self.ln_1(h).astype(h.dtype)
    attn_out, probs = self.attn(normed, key_mask_BxT=key_mask_BxT,
                                query_positions_BxP=query_positions_BxP, dropout_key=attn_key,
                                return_attention=return_attention)
    if query_positions_BxP is not None:
      h = jnp.take_along_axis(h, query_positions_BxP[..., None], axis=1)
    h = h + attn_out.astype(h.dtype)
    h = h + self.mlp(self.ln_2(h).astype(h.dtype), mlp_key).astype(h.dtype)
    return h, probs


class GPT2(nnx.Module):
  """GPT-2 language model: ``tokens [B, T] → logits [B, T, V]`` (fp32)."""

  def __init__(self, config: GPT2Config, *, rngs: nnx.Rngs):
    self.config = config
    std = config.initializer_range
    self.wte = nnx.Embed(config.vocab_size, config.n_embd, embedding_init=_normal(std, AXES["wte"]),
                         rngs=rngs)
    self.wpe = nnx.Embed(config.n_positions, config.n_embd,
                         embedding_init=_normal(std, AXES["wpe"]), rngs=rngs)
    self.h = nnx.List([Block(config, rngs) for _ in range(config.n_layer)])
    self.ln_f = _layer_norm(config, config.n_embd, rngs)
    if not config.tie_word_embeddings:
      self.lm_head = nnx.Linear(config.n_embd, config.vocab_size, use_bias=False,
                                dtype=config.dtype, param_dtype=jnp.float32,
                                kernel_init=_normal(std, AXES["lm_head"]), rngs=rngs)

  def __call__(self, tokens_BxT: jax.Array, *, attention_mask_BxT: jax.Array | None = None,
               query_positions_BxP: jax.Array | None = None, dropout_key: jax.Array | None = None,
               return_attention: bool = False, return_hidden: bool = False):
    """Logits ``[B, T, V]`` (or ``[B, P, V]`` at ``query_positions_BxP``).

    Args:
      attention_mask_BxT: optional key-padding mask (1 = attend), as HF's ``attention_mask``.
      query_positions_BxP: if given, the last block, ``ln_f`` and the head run only at these
        positions (keys/values still come from every position). Identical results there, much less
        work when the loss is sparse (one answer position in Haystack).
      dropout_key: enables dropout (training); ``None`` = deterministic.
      return_attention: also return the per-layer attention probabilities ``[B, H, Q, T]``.
      return_hidden: return ``(hidden [B, T, D] after ln_f, head [D, V])`` instead of the logits,
        so a loss can apply the head a chunk at a time and never hold ``[B, T, V]``.
    """
    config = self.config
    length = tokens_BxT.shape[1]
    if length > config.n_positions:
      raise ValueError(f"sequence length {length} exceeds n_positions {config.n_positions}")
    keys = [None] * (config.n_layer + 1)
    if dropout_key is not None:
      keys = list(jax.random.split(dropout_key, config.n_layer + 1))
    h = self.wte(tokens_BxT) + self.wpe.embedding[:length][None]
    h = _dropout(h.astype(config.dtype), config.embd_pdrop, keys[-1])
    attentions = []
    for i, block in enumerate(self.h):
      last = i == config.n_layer - 1
      h, probs = block(h, key_mask_BxT=attention_mask_BxT,
                       query_positions_BxP=query_positions_BxP if last else None,
                       dropout_key=keys[i], return_attention=return_attention)
      attentions.append(probs)
    if query_positions_BxP is not None and config.n_layer == 0:
      h = jnp.take_along_axis(h, query_positions_BxP[..., None], axis=1)
    h = self.ln_f(h).astype(config.dtype)
    head_DxV = self.head_matrix()
    if return_hidden:  # the caller applies the head itself (chunked cross-entropy)
      outputs = (h, head_DxV)
    else:
      outputs = logits_from_hidden(h, head_DxV)
    return (outputs, attentions) if return_attention else outputs

  def head_matrix(self) -> jax.Array:
    """The LM head ``[D, V]`` in the compute dtype: ``wte`` transposed when tied."""
    if self.config.tie_word_embeddings:
      return self.wte.embedding[...].T.astype(self.config.dtype)
    return self.lm_head.kernel[...].astype(self.config.dtype)


def logits_from_hidden(hidden_BxTxD: jax.Array, head_DxV: jax.Array) -> jax.Array:
  """fp32 logits of the final hidden states (products in the compute dtype, fp32 accumulation)."""
  return jnp.einsum("btd,dv->btv", hidden_BxTxD, head_DxV, preferred_element_type=jnp.float32)


def init_model(config: GPT2Config, seed_or_key: int | jax.Array) -> GPT2:
  """A freshly initialised model; sharding annotations are metadata only (no mesh needed)."""
  key = jax.random.key(seed_or_key) if isinstance(seed_or_key, int) else seed_or_key
  with nnx.use_eager_sharding(False):
    return GPT2(config, rngs=nnx.Rngs(params=key))


def split_params(model: GPT2) -> tuple[nnx.GraphDef, nnx.State]:
  """``(graphdef, params)``: the static structure and the ``nnx.Param`` state."""
  return nnx.split(model, nnx.Param)


def init_params(config: GPT2Config, key: jax.Array) -> dict:
  """Pure dict of parameters (``jit``/``vmap``-able: e.g. ``jax.vmap(init_params)`` over seeds)."""
  _, params = split_params(init_model(config, key))
  return nnx.to_pure_dict(params)


def apply(config: GPT2Config, params: dict, tokens_BxT: jax.Array, **kwargs):
  """Runs the model from a pure parameter dict (the form the train step and checkpoints use)."""
  return nnx.merge(graphdef(config), params)(tokens_BxT, **kwargs)


@functools.lru_cache(maxsize=64)
def graphdef(config: GPT2Config) -> nnx.GraphDef:
  """The model's static structure, built once per config from a shape-only model."""
  return split_params(_abstract_model(config))[0]


def _abstract_model(config: GPT2Config) -> GPT2:
  # Shape-only model: building the graph costs no FLOPs and allocates nothing.
  return nnx.eval_shape(lambda: init_model(config, 0))


def logical_axes(config: GPT2Config) -> dict:
  """Pure dict (same structure as the params) of each weight's logical axis names."""
  _, state = split_params(_abstract_model(config))
  return nnx.to_pure_dict(nnx.get_partition_spec(state))
