"""A progress bar of EM iterations (``fit(..., progress=True)``).

On concrete input the host loop (:mod:`jaxgmm._host_loop`) calls
:func:`report_iteration` after every block of iterations, so the bar stops where the
fit stopped (also on Ctrl-C). The single compiled program (used on traced input:
the user's ``jit``, ``vmap``, ``grad``) calls it through ``jax.debug.callback`` after
every iteration instead; inside the user's ``jit`` no bar is open and it does
nothing. The bar shows the furthest iteration reached and the best lower bound so far.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import numpy as np
from tqdm.auto import tqdm

_open_bars: list[tqdm] = []


def report_iteration(n_iter: np.ndarray, lower_bound: np.ndarray) -> None:
    """Advance the open bar to iteration ``n_iter`` and show ``lower_bound``."""
    if not _open_bars:
        return
    bar = _open_bars[-1]
    n_iter = int(n_iter)
    if n_iter > bar.n:
        bar.update(n_iter - bar.n)
    value = float(lower_bound)
    best = getattr(bar, "best_lower_bound", -math.inf)
    if math.isfinite(value) and value > best:
        bar.best_lower_bound = value
        bar.set_postfix(lower_bound=f"{value:.6g}", refresh=False)


@contextlib.contextmanager
def fit_progress(max_iter: int, description: str) -> Iterator[None]:
    """Open a bar of ``max_iter`` EM iterations, unless one is already open (nested fit)."""
    if _open_bars:
        yield
        return
    bar = tqdm(total=max_iter, desc=description, unit="iter", leave=False)
    _open_bars.append(bar)
    try:
        yield
    finally:
        _open_bars.pop()
        bar.close()
