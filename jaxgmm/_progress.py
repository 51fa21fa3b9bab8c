"""Progress bars for work driven from Python (K sweeps, model lists, long fits).

Bars go to stderr through tqdm. ``enabled=None`` (the default everywhere) means "on
when stderr is an interactive terminal", so pipes, logs and CI stay quiet unless a
caller asks for a bar with ``enabled=True``.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterable, Iterator
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


@contextlib.contextmanager
def activity(desc: str, *, enabled: bool | None = None, interval: float = 0.25) -> Iterator[None]:
    """Show a ticking "desc: elapsed" line on stderr while a blocking call runs.

    A compiled fit runs as one XLA call that reports nothing until it ends; this keeps
    a person informed that it is alive (XLA releases the GIL, so the ticker runs).

    Args:
        desc: what is running, e.g. ``"fitting K=4"``.
        enabled: True/False forces the line on/off; None shows it only on a TTY.
        interval: seconds between refreshes.
    """
    if not progress_enabled(enabled):
        yield
        return
    from tqdm import tqdm

    bar = tqdm(
        total=None,
        desc=desc,
        bar_format="{desc}: {elapsed}",
        file=sys.stderr,
        leave=False,
        dynamic_ncols=True,
    )
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(interval):
            bar.refresh()

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        bar.close()
