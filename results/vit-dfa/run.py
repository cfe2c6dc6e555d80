"""`nowt compare` with DFA rule options and a vit pooling that nowt's CLI does not expose (yet).

    python results/vit-dfa/run.py [--dfa KEY=JSON ...] [--pool cls|mean] -- <nowt compare arguments>

`--dfa error_at='"head"'` passes `error_at="head"` to `nowt.convert(model, "dfa", ...)` for every dfa run
(nowt's TrainConfig has fields for `blocks` and `position_feedback`, none yet for `storage`, `scale` or
`error_at`); `--pool mean` builds `vit(pool="mean")`. Both are written into every run's config.json under
`extra` (`dfa_options`, `vit_pool`), so a run says what it was. Everything else is `nowt compare` unchanged:
the same data, learning-rate grid on held-out examples, seeds and reports.
"""

from __future__ import annotations

import functools
import json
import sys

import nowt.cli
import nowt.train.factories as factories
from nowt.models import MODELS, vit


def main(argv: list[str]) -> int:
    split = argv.index("--") if "--" in argv else len(argv)
    own, rest = argv[:split], argv[split + 1:]
    dfa: dict = {}
    pool = "cls"
    it = iter(own)
    for flag in it:
        value = next(it)
        if flag == "--dfa":
            key, _, raw = value.partition("=")
            dfa[key] = json.loads(raw)
        elif flag == "--pool":
            pool = value
        else:
            raise SystemExit(f"run.py: unknown flag {flag!r} (before --: --dfa KEY=JSON, --pool cls|mean)")
    rule_options = factories.rule_options

    def with_dfa(cfg):
        options = rule_options(cfg)
        return {**options, **dfa} if cfg.rule == "dfa" else options

    factories.rule_options = with_dfa
    MODELS["vit"] = functools.partial(vit, pool=pool)
    config_from_args = nowt.cli.config_from_args

    def noted(args, **overrides):
        cfg = config_from_args(args, **overrides)
        cfg.extra = {**cfg.extra, "vit_pool": pool, **({"dfa_options": dfa} if cfg.rule == "dfa" else {})}
        return cfg

    nowt.cli.config_from_args = noted
    return nowt.cli.main(["compare", *rest])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
