"""Progress bars for long work, drawn where someone watches: in a notebook (a widget) or on a terminal. A run
logging to a file (a job in the background, a cluster's batch system) keeps its per-epoch lines without
thousands of carriage-return frames of a bar."""

from __future__ import annotations

import sys
from collections.abc import Iterable

from tqdm.auto import tqdm


def progress_bar(iterable: Iterable, desc: str, enabled: bool, total: int | None = None) -> tqdm:
    """A transient bar over `iterable` (of `total` items; by default its len): off when not `enabled`, and
    when stderr is neither a terminal nor a notebook's output."""
    notebook = any(c.__name__ == "tqdm_notebook" for c in tqdm.__mro__)  # what tqdm.auto chose
    drawn = enabled and (notebook or sys.stderr.isatty())
    return tqdm(iterable, desc=desc, disable=not drawn, leave=False, total=total)
