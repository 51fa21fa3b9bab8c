"""PRNG key handling shared by the public functions."""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np


def as_key(key) -> jax.Array:
    """An int seed or a JAX PRNG key (new-style or raw uint32) -> a JAX key."""
    if isinstance(key, (bool, np.bool_)):
        raise TypeError(f"key must be an int seed or a JAX PRNG key, got {key!r}.")
    if isinstance(key, numbers.Integral):
        if key < 0:
            raise ValueError(f"key must be a non-negative int seed, got {key}.")
        return _seed_key(int(key))
    if isinstance(key, (jax.Array, np.ndarray)):
        return key
    raise TypeError(
        f"key must be an int seed or a JAX PRNG key (jax.random.key(0)), got {type(key).__name__}."
    )


def keys_for_range(key, n: int) -> jax.Array:
    """``jax.random.fold_in(key, i)`` for i = 0, ..., n - 1: an (n,) key array.

    For an int seed and JAX's default threefry keys the keys are computed on the host
    (:func:`_threefry_2x32` in NumPy, bit for bit JAX's), so a new process compiles no
    small key program and a call dispatches none; other keys use ``jax.vmap(fold_in)``.

    Args:
        key: an int seed or a JAX PRNG key (as :func:`as_key` takes).
        n: number of keys.
    """
    seed_key = as_key(key)
    if not isinstance(key, numbers.Integral) or not _host_threefry(int(key)):
        return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(seed_key, jnp.arange(n))
    halves = _seed_halves(int(key))
    counts = np.arange(n, dtype=np.uint32)
    folded = _threefry_2x32(halves, np.zeros_like(counts), counts)
    return jax.random.wrap_key_data(np.stack(folded, axis=1), impl="threefry2x32")


# Threefry-2x32 with 20 rounds (Salmon et al., "Parallel random numbers: as easy as 1, 2,
# 3", SC 2011): rotation distances by round, in two alternating groups of four.
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_KEY_PARITY = np.uint32(0x1BD11BDA)


def _threefry_2x32(key: np.ndarray, x0: np.ndarray, x1: np.ndarray):
    """The Threefry-2x32 block cipher of the counter pairs (x0, x1) under a (2,) uint32 key."""
    schedule = (key[0], key[1], key[0] ^ key[1] ^ _KEY_PARITY)
    with np.errstate(over="ignore"):
        x0, x1 = x0 + schedule[0], x1 + schedule[1]
        for block in range(5):
            for r in _ROTATIONS[block % 2]:
                x0 = x0 + x1
                x1 = ((x1 << np.uint32(r)) | (x1 >> np.uint32(32 - r))) ^ x0
            x0 = x0 + schedule[(block + 1) % 3]
            x1 = x1 + schedule[(block + 2) % 3] + np.uint32(block + 1)
    return x0, x1


def _host_threefry(seed: int) -> bool:
    """Whether ``seed``'s key is JAX's default threefry key built from its two halves."""
    return jax.config.jax_default_prng_impl == "threefry2x32" and 0 <= seed < 2**64


def _seed_halves(seed: int) -> np.ndarray:
    """The threefry key data of a seed: its two 32-bit halves, high first; (2,) uint32."""
    return np.array([seed >> 32, seed & 0xFFFFFFFF], dtype=np.uint32)


def _seed_key(seed: int) -> jax.Array:
    """``jax.random.key(seed)``, built on the host for JAX's default threefry keys.

    ``jax.random.key`` runs two small compiled programs (a compile, or a trace and a
    cache lookup, in every new process); the threefry key of a seed is just its two
    32-bit halves, high first (seeds below 2**31 give exactly ``jax.random.key``'s key;
    larger ones, which ``jax.random.key`` refuses without 64-bit mode, give its 64-bit key).
    """
    if not _host_threefry(seed):
        return jax.random.key(seed)
    return jax.random.wrap_key_data(_seed_halves(seed), impl="threefry2x32")
