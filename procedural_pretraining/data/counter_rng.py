"""Stateless, counter-based random numbers for index-addressable data.

Every sample of every generated dataset is a pure function of a 64-bit *sample key*, itself a hash of
``(seed, stream, index)``. A generator asks for the ``j``-th random word of a sample with
``bits(keys_B, n)``; the words depend only on the key and the counter, never on which block of samples
is being generated, so sample ``i`` is the same whether it is produced alone, in a batch of 1,000, in a
worker process or on another host.

Why not ``np.random.Generator`` per sample: a Generator per sample costs a Python call per sample and
cannot be vectorised across the batch axis. Why not the reference's ``seed + index`` seeding: streams
of different splits overlap (validation = shifted training). Here splits are different ``stream``
values hashed into the key, so their samples come from unrelated key sequences.

The mixer is SplitMix64's finaliser (Steele et al., 2014), which passes BigCrush when applied to a
counter; NumPy's uint64 arithmetic wraps modulo 2**64, which is exactly what it needs.
"""

from __future__ import annotations

import hashlib

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


def mix64(x: np.ndarray) -> np.ndarray:
  """SplitMix64 finaliser: a bijective avalanche hash of uint64 words (vectorised)."""
  x = np.asarray(x, dtype=np.uint64)
  with np.errstate(over="ignore"):
    x = (x ^ (x >> _S30)) * _M1
    x = (x ^ (x >> _S27)) * _M2
  return x ^ (x >> _S31)


def stream_id(name: str) -> int:
  """A stable 64-bit id for a stream name (Python's ``hash`` is salted per process)."""
  return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")


def sample_keys(seed: int, stream: str, indices) -> np.ndarray:
  """Keys of samples ``indices`` in ``(seed, stream)``; ``stream`` names the split and dataset."""
  indices = np.asarray(indices, dtype=np.int64).astype(np.uint64)
  base = mix64(np.uint64(stream_id(stream)) ^ mix64(np.uint64(seed & 0xFFFFFFFFFFFFFFFF)))
  with np.errstate(over="ignore"):
    return mix64(base + (indices + np.uint64(1)) * _GOLDEN)


def fold_in(keys: np.ndarray, tag: str | int) -> np.ndarray:
  """Derive independent sub-keys (e.g. one per purpose: ``'shuffle'``, ``'family'``)."""
  tag_word = np.uint64(stream_id(tag) if isinstance(tag, str) else tag & 0xFFFFFFFFFFFFFFFF)
  return mix64(np.asarray(keys, dtype=np.uint64) ^ mix64(tag_word))


def bits(keys: np.ndarray, n: int, offset: int = 0) -> np.ndarray:
  """``[B, n]`` uint64 random words: word ``j`` of sample ``b`` is ``H(keys[b], offset + j)``."""
  keys = np.asarray(keys, dtype=np.uint64)
  counters = np.arange(offset + 1, offset + n + 1, dtype=np.uint64)
  with np.errstate(over="ignore"):
    return mix64(mix64(keys[..., None] ^ (counters * _GOLDEN)) + keys[..., None])


def uniform(keys: np.ndarray, n: int, offset: int = 0) -> np.ndarray:
  """``[B, n]`` float64 uniform on ``[0, 1)`` with 53 random bits."""
  return (bits(keys, n, offset) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def integers(keys: np.ndarray, n: int, low, high, offset: int = 0) -> np.ndarray:
  """``[B, n]`` int64 uniform on ``[low, high)``; ``low``/``high`` broadcast against ``[B, n]``.

  Uses the top 32 bits times the range (Lemire's multiply-shift without rejection): the bias is
  below range / 2**32, i.e. < 1e-6 for every range used here.
  """
  low = np.asarray(low, dtype=np.int64)
  span = np.asarray(high, dtype=np.int64) - low
  if np.any(span <= 0) or np.any(span >= 1 << 31):
    raise ValueError(f"integers: range [{low}, {high}) must be non-empty and shorter than 2**31")
  top32 = (bits(keys, n, offset) >> np.uint64(32)).astype(np.int64)
  return low + ((top32 * span) >> 32)


def permutations(keys: np.ndarray, n: int, offset: int = 0) -> np.ndarray:
  """``[B, n]`` int64: an independent uniform random permutation of ``range(n)`` per sample."""
  return np.argsort(bits(keys, n, offset), axis=-1, kind="stable")
