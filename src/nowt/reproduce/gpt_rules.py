"""nowt's own experiment, not a paper's: learning rules on a small byte-level language model (issue 28).

The `gpt` model (2 pre-norm causal blocks, dim 128, context 128) on the Debian `fortunes` corpus (about 2.7
MB of English; `apt-get install fortunes`), next-byte prediction, bits per character on the test text. Every
row's AdamW rate is chosen from one grid on the corpus's validation part (its first seed, final bits per
character), then three seeds train at that rate. DFA takes one error per token (position t's error
e_t = dL/dy_t) fed back to position t through one B shared by all positions (Launay et al. 2020's form);
dfa-blocks gives each block's output that feedback, with backprop inside the block. Registered 2026-12-03,
before any run.

`gpt-rules-wide` (registered 2026-12-04, after gpt-rules had run, before any of its own runs): every
gpt-rules row had chosen 3e-3, the top of its grid, with the held-out bits per character still falling, so
no row's best rate was bracketed. The same rows and budget with the grid moved up, 3e-3, 1e-2, 3e-2; the
weight mirror's warm-up sized per layer (`mirror_warmup_batch=0`: 0.6 s where the fixed one took minutes,
`benchmarks/RESULTS.md`). gpt-rules stays as it ran.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from nowt.figures import figure, save, style
from nowt.report import format_mean_std, load_run, markdown_table
from nowt.reproduce.entry import Reproduction, seed_histories

#: row -> its rule and rule options
VARIANTS: dict[str, dict[str, Any]] = {**{r: {"rule": r} for r in ("bp", "fa", "usf", "kp", "wm")},
            "dfa": {"rule": "dfa", "position_feedback": "shared"},
            "dfa-blocks": {"rule": "dfa", "blocks": ("blocks.*",), "position_feedback": "shared"}}
#: One budget for every row, sized for a 2-core CPU: 2 epochs of the first 3,200 training windows (409,600
#: bytes), batch 32, AdamW (weight decay 0.01) under a cosine schedule; the rate from GRID.
CONFIG = dict(model="gpt", dataset="fortunes", context=128, train_size=3200, epochs=2, batch_size=32,
              optimizer="adamw", weight_decay=0.01, lr_schedule="cosine", lr=1e-3)
GRID = (3e-4, 1e-3, 3e-3)
WIDE_GRID = (3e-3, 1e-2, 3e-2)
NO_NUMBER = {"final_test_bpc": math.nan}


def _grid(out_dir: Path, row: str) -> dict[float, float]:
    """{lr: held-out bits per character after the last epoch} of row's grid runs (OUT/ROW/lr-grid/lrX)."""
    found = {}
    for d in sorted((out_dir / row / "lr-grid").glob("lr*")):
        if (d / "metrics.jsonl").is_file():
            found[float(d.name[2:])] = load_run(d).history[-1]["test_bpc"]
    return dict(sorted(found.items()))


def summarize(out_dir: Path) -> list[str]:
    """The `compare` hook: each row's final test bpc over seeds and its per-layer update angle to backprop's
    gradient after the last epoch (mean over seeds), and one figure of the curves, the grid and the angles
    (a panel per run would be 21 panels)."""
    out_dir = Path(out_dir)
    runs = {row: h for row in VARIANTS if (h := seed_histories(out_dir, row))}
    grids = {row: _grid(out_dir, row) for row in runs}
    finals = {row: {layer: statistics.mean(h[-1]["update_angles"][layer] for h in hs)
                    for layer in hs[0][-1].get("update_angles", {})} for row, hs in runs.items()}
    layers = next((list(a) for a in finals.values() if a), [])
    parts = ["## Over seeds",
             "Each row's update angle to backprop's gradient (degrees) per layer after the last epoch, mean "
             "over seeds (under every rule the head's update is the true gradient: 0):",
             markdown_table(["row", "test bpc", *layers],
                            [[row, format_mean_std(h[-1]["test_bpc"] for h in runs[row]),
                              *(finals[row].get(n, math.nan) for n in layers)] for row in runs], digits=1)]
    fig, axes = figure(3, 1, width=4.6, height=3.6)
    for row, hs in runs.items():
        epochs = range(1, min(map(len, hs)) + 1)
        axes[0][0].plot(epochs, [statistics.mean(h[e - 1]["test_bpc"] for h in hs) for e in epochs],
                        marker=".", label=row)
        if grids[row]:
            axes[0][1].plot(list(grids[row]), list(grids[row].values()), marker="o", label=row)
        axes[0][2].plot(range(len(layers)), [finals[row].get(n, math.nan) for n in layers], marker=".",
                        label=row)
    style(axes[0][0], title="test bpc, mean over seeds", xlabel="epoch", ylabel="bits per character",
          integer_x=True)
    style(axes[0][1], title="held-out bpc of each grid rate (seed 0)", xlabel="learning rate", xscale="log",
          legend=False)
    style(axes[0][2], title="update vs backprop, last epoch", ylabel="degrees", legend=False)
    rates = sorted({lr for grid in grids.values() for lr in grid})
    axes[0][1].set_xticks(rates, [f"{lr:g}" for lr in rates], minor=False)
    axes[0][1].minorticks_off()
    axes[0][2].set_xticks(range(len(layers)), [n.replace("blocks.", "b").replace("self_attn.", "")
                                               for n in layers], rotation=60, fontsize=7)
    save(fig, out_dir / "gpt_rules.png")
    return [*parts, "![test bpc over epochs, the lr grid, per-layer update angles](gpt_rules.png)"]

ENTRIES = [
    Reproduction(
        name="gpt-rules", paper="nowt's own experiment (no paper): learning rules on a byte-level GPT",
        table="gpt on the fortunes corpus, 7 rows x 3 seeds, lr per row from one grid, bits per character",
        config=CONFIG, runs=VARIANTS, published=dict.fromkeys(VARIANTS, NO_NUMBER),
        quick=dict(epochs=1, train_size=64, context=32), lr_grid=GRID, compare=summarize, run_figures=False,
        notes=("Every row trains with the same budget and optimizer; its rate is chosen on the corpus's "
               "validation part (never the test text). The rule trains every weight matrix (attention "
               "projections, MLPs, the untied head); the token and position embeddings (lookups) and the "
               "LayerNorms are no rule's layers (nowt's design, docs/python.md): they learn from the error "
               "the rule brings them, and the error passes a LayerNorm as in backprop, through its gain. "
               "The corpus needs `apt-get install fortunes`; without it the rows are reported as skipped.")),
    Reproduction(
        name="gpt-rules-wide", paper="nowt's own experiment (no paper): learning rules on a byte-level GPT, "
        "the learning-rate grid moved up",
        table="gpt-rules' rows and budget, lr per row from 3e-3, 1e-2, 3e-2, bits per character",
        config=CONFIG, runs={**VARIANTS, "wm": {"rule": "wm", "mirror_warmup_batch": 0}},
        published=dict.fromkeys(VARIANTS, NO_NUMBER), quick=dict(epochs=1, train_size=64, context=32),
        lr_grid=WIDE_GRID, compare=summarize, run_figures=False,
        notes=("Registered 2026-12-04 after gpt-rules had run (every row chose the top of that grid, 3e-3), "
               "before any run of its own: the same rows and budget, the grid 3e-3, 1e-2, 3e-2, and the "
               "weight mirror's warm-up sized per layer. Rates are chosen on the validation text, never the "
               "test text.")),
]
