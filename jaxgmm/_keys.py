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
        return jax.random.key(int(key))
    if isinstance(key, (jax.Array, np.ndarray)):
        return key
    raise TypeError(
        f"key must be an int seed or a JAX PRNG key (jax.random.key(0)), got {type(key).__name__}."
    )
