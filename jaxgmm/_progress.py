"""Progress bars for work driven from Python (K sweeps over many models).

Per-iteration progress of one compiled fit comes from the core
(``jaxgmm.fit(..., progress=True)``); this module decides when to ask for it.

Bars go to stderr through tqdm. ``enabled=None`` (the default everywhere) means "on
when stderr is an interactive terminal", so pipes, logs and CI stay quiet unless a
caller asks for a bar with ``enabled=True``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TypeVar

T = TypeVar("T")


def progress_enabled(enabled: bool | None) -> bool:
    """Resolve a progress setting: None means on exactly when stderr is a TTY."""
    if enabled is not None:
        return bool(enabled)
    stream = sys.stderr
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):
        return False


def progress_bar(
    iterable: Iterable[T] | None = None,
    *,
    total: int | None = None,
    desc: str | None = None,
    enabled: bool | None = None,
    unit: str = "it",
    leave: bool = False,
) -> Any:
    """A tqdm bar on stderr, or a silent stand-in with the same methods when disabled.

    Args:
        iterable: items to iterate over (or None for a manually updated bar).
        total: number of steps, if ``iterable`` has no length.
        desc: the label in front of the bar.
        enabled: True/False forces the bar on/off; None shows it only on a TTY.
        unit: the name of one step.
        leave: keep the finished bar on screen.

    Returns:
        A ``tqdm`` object (iterate over it, or call ``update``/``set_postfix_str``).
    """
    from tqdm import tqdm

    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        leave=leave,
        file=sys.stderr,
        disable=not progress_enabled(enabled),
        dynamic_ncols=True,
    )
