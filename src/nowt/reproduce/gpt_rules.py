"""nowt's own experiment, not a paper's: learning rules on a small byte-level language model (issue 28).

The `gpt` model (2 pre-norm causal blocks, dim 128, context 128) on the Debian `fortunes` corpus (about 2.7
MB of English; `apt-get install fortunes`), next-byte prediction, bits per character on the test text. Every
row's AdamW rate is chosen from one grid on the corpus's validation part (its first seed, final bits per
character), then three seeds train at that rate. DFA takes one error per token (position t's error
e_t = dL/dy_t) fed back to position t through one B shared by all positions (Launay et al. 2020's form);
dfa-blocks gives each block's output that feedback, with backprop inside the block. Registered 2026-12-03,
before any run.
"""

from __future__ import annotations

import math
from typing import Any

from nowt.reproduce.entry import Reproduction

#: row -> its rule and rule options
VARIANTS: dict[str, dict[str, Any]] = {**{r: {"rule": r} for r in ("bp", "fa", "usf", "kp", "wm")},
            "dfa": {"rule": "dfa", "position_feedback": "shared"},
            "dfa-blocks": {"rule": "dfa", "blocks": ("blocks.*",), "position_feedback": "shared"}}
#: One budget for every row, sized for a 2-core CPU: 2 epochs of the first 3,200 training windows (409,600
#: bytes), batch 32, AdamW (weight decay 0.01) under a cosine schedule; the rate from GRID.
CONFIG = dict(model="gpt", dataset="fortunes", context=128, train_size=3200, epochs=2, batch_size=32,
              optimizer="adamw", weight_decay=0.01, lr_schedule="cosine", lr=1e-3)
GRID = (3e-4, 1e-3, 3e-3)
NO_NUMBER = {"final_test_bpc": math.nan}

ENTRIES = [
    Reproduction(
        name="gpt-rules", paper="nowt's own experiment (no paper): learning rules on a byte-level GPT",
        table="gpt on the fortunes corpus, 7 rows x 3 seeds, lr per row from one grid, bits per character",
        config=CONFIG, runs=VARIANTS, published=dict.fromkeys(VARIANTS, NO_NUMBER),
        quick=dict(epochs=1, train_size=64, context=32), lr_grid=GRID,
        notes=("Every row trains with the same budget and optimizer; its rate is chosen on the corpus's "
               "validation part (never the test text). The corpus needs `apt-get install fortunes`; "
               "without it the rows are reported as skipped.")),
]
