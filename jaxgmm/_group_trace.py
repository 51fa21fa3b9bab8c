"""Whether the code being traced runs once per member of a vmapped group of fits.

A few operations have one form that is fast for a single fit and another that is
fast under ``jax.vmap`` over many small fits: XLA's CPU backend runs a batched matrix
product as one small product per member, so there an unrolled elementwise form wins,
while for a single fit the product wins (it also saves the two-pass tree reduction
that XLA makes of every long sum). :func:`jaxgmm._batching.map_groups` traces its
members inside :func:`tracing_group_members`; kernels ask :func:`in_group_members`
while they are traced.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

_IN_GROUP = contextvars.ContextVar("jaxgmm_tracing_group_members", default=False)


@contextlib.contextmanager
def tracing_group_members() -> Iterator[None]:
    """Mark everything traced inside as one member of a vmapped group."""
    token = _IN_GROUP.set(True)
    try:
        yield
    finally:
        _IN_GROUP.reset(token)


def in_group_members() -> bool:
    """Whether the code now being traced runs per member of a vmapped group."""
    return _IN_GROUP.get()
