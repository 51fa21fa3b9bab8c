"""PRNG key handling shared by the public functions."""

from __future__ import annotations

import numbers

import jax
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


def _seed_key(seed: int) -> jax.Array:
    """``jax.random.key(seed)``, built on the host for JAX's default threefry keys.

    ``jax.random.key`` runs two small compiled programs (a compile, or a trace and a
    cache lookup, in every new process); the threefry key of a seed is just its two
    32-bit halves, high first (seeds below 2**31 give exactly ``jax.random.key``'s key;
    larger ones, which ``jax.random.key`` refuses without 64-bit mode, give its 64-bit key).
    """
    if jax.config.jax_default_prng_impl != "threefry2x32" or seed >= 2**64:
        return jax.random.key(seed)
    halves = np.array([seed >> 32, seed & 0xFFFFFFFF], dtype=np.uint32)
    return jax.random.wrap_key_data(halves, impl="threefry2x32")
