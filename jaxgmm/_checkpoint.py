"""Checkpoints of a streamed fit: every restart's loop state, written atomically.

:func:`save_checkpoint` writes an ``.npz`` (the :class:`~jaxgmm._iterate.LoopState`
leaves, the data's centre, and a JSON fingerprint of the fit) to a temporary file in
the same folder and renames it over the old one, so a kill at any moment leaves the
previous checkpoint or the new one, never half of one. :func:`load_checkpoint`
refuses a checkpoint whose fingerprint (options, data size, key) differs.
"""

from __future__ import annotations

import json
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from jaxgmm._iterate import LoopState
from jaxgmm._params import GaussianMixtureParams

CHECKPOINT_VERSION = 1


def fingerprint(options: dict, n_rows, n_features: int, key_words: np.ndarray) -> dict:
    """What must match for a checkpoint to belong to this fit (a JSON-able dict).

    Args:
        options: the fit's options (JSON-able values); n_rows: N, or None when not
            known before the first pass (callable sources); n_features: D;
        key_words: the PRNG key's uint32 words.
    """
    return {
        "version": CHECKPOINT_VERSION,
        "options": {k: v for k, v in options.items() if k != "on_interrupt"},
        "n_rows": n_rows,
        "n_features": n_features,
        "key": key_words.tolist(),
    }


def save_checkpoint(path: str, fingerprint: dict, states, center, offset, first) -> None:
    """Write the loop states atomically: a temporary file, then ``os.replace``.

    Args:
        path: the checkpoint file; fingerprint: from :func:`fingerprint`.
        states: the (R,)-batched :class:`~jaxgmm._iterate.LoopState` of every restart.
        center: (D,) the centre subtracted on the device; offset: None or (D,) float64
            subtracted on the host; first: (rows per pass, first block's checksum) of
            the first pass, or None.
    """
    leaves = [np.asarray(a) for a in jax.tree_util.tree_leaves(states)]
    meta = dict(fingerprint, first=list(first) if first is not None else None)
    arrays = {f"leaf{i}": a for i, a in enumerate(leaves)}
    arrays["center"] = np.asarray(center)
    if offset is not None:
        arrays["offset"] = np.asarray(offset)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    folder = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=".jaxgmm-checkpoint-", suffix=".npz", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def load_checkpoint(path: str, fingerprint: dict, covariance_type: str):
    """(states, center, offset, first) from a checkpoint of this fit, or None if absent.

    Args:
        path: the checkpoint file; fingerprint: this fit's :func:`fingerprint`;
        covariance_type: the states' covariance type (static in the pytree).

    Raises:
        ValueError: unreadable, or written by a different fit.
    """
    if not os.path.exists(path):
        return None
    try:
        with np.load(path) as data:
            meta = json.loads(bytes(data["meta"]).decode())
            leaves = [data[f"leaf{i}"] for i in range(sum(k.startswith("leaf") for k in data))]
            center = data["center"]
            offset = data["offset"] if "offset" in data else None
    except Exception as err:
        raise ValueError(
            f"checkpoint {path!r} cannot be read ({err}); delete it to start afresh."
        ) from None
    first = meta.pop("first")
    if json.loads(json.dumps(fingerprint)) != meta:
        raise ValueError(
            f"checkpoint {path!r} was written by a different fit (other data size, options "
            "or key); delete it or pass another checkpoint path."
        )
    params = GaussianMixtureParams(0, 0, 0, 0, covariance_type=covariance_type)
    treedef = jax.tree_util.tree_structure(LoopState(params, 0, 0, 0, 0, 0))
    states = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(a) for a in leaves])
    return states, jnp.asarray(center), offset, None if first is None else tuple(first)
