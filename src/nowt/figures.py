"""The one figure style of nowt: `figure` + `style` + `save` (matplotlib's object API on the Agg canvas, so
nothing here needs or touches a display). `nowt.report` and every reproduction draw with them."""

from __future__ import annotations

import os
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

DPI = 110


def figure(ncols: int = 1, nrows: int = 1, *, width: float = 5.5, height: float = 3.8, **subplots):
    """A figure of `nrows` x `ncols` axes of `width` x `height` inches each (the figure, the axes array)."""
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False, **subplots)


def style(ax, *, title: str | None = None, legend: bool = True, integer_x: bool = False, **settings) -> None:
    """The one axes style: light grid, small legend, titles at 10 pt; `settings` go to `ax.set`."""
    ax.set(**settings)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if integer_x:
        low, high = ax.get_xlim()
        if high - low < 1:  # one epoch: matplotlib would tick fractions of it
            mid = round((low + high) / 2)
            ax.set_xlim(mid - 1, mid + 1)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")


def save(fig: Figure, path: str | os.PathLike) -> Path:
    fig.savefig(path, dpi=DPI)
    return Path(path)
