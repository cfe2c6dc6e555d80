"""RESULTS.md and figures of `nowt reproduce cheon2024`, computed from the saved runs alone (results.json
is not needed: `runs/noise.json` and one JSON per data run)."""

from __future__ import annotations

import statistics
from pathlib import Path

from nowt.figures import figure, save, style
from nowt.noise_measures import OOD_KINDS
from nowt.report import format_mean_std, markdown_table, mean_std
from nowt.reproduce.cheon2024_conditions import falls
from nowt.reproduce.entry import provenance

COLOURS = {"bp": "black", "fa": "tab:blue", "fa+noise": "tab:red", "fa+pool": "tab:green"}
SETUP = (
    "Registered recipe (fixed 2026-12-03 before it was run; `src/nowt/reproduce/cheon2024_noise.py` and "
    "`cheon2024.py` say what comes from the paper, what from the lab's code, what nowt chose). **Noise phase "
    "(the paper's protocol):** every batch fresh x ~ N(0, I) and fresh labels uniform on 0..9, FA, softmax "
    "cross-entropy, He init (W and B ~ N(0, 2/fan_in), biases 0), SGD lr 0.01 momentum 0.9 weight decay "
    "0.01, "
    "batch 256, 975 steps (5 x 50,000 images), no BatchNorm. **Data phase** (BP, FA, FA+noise alike): SGD lr "
    "0.01 momentum 0.9 weight decay 0.01, batch 256, constant lr, images standardised; BP, FA and FA+noise "
    "of one seed share their initial W, FA and FA+noise their B. Angles: the paper's per-neuron angle "
    "between row i of W^T and row i of B, averaged over the layer's input units (degrees)."
)


def _readout(record: dict, kind: str = "neuron") -> list[float]:
    return [list(r[kind].values())[-1] for r in record["history"]]


def _noise_rows(noise: dict, hidden: str, kind: str) -> list[list]:
    records = [r for k, r in noise.items() if k.startswith(f"{hidden}/{kind}/")]
    if not records:
        return []
    start, end = [_readout(r)[0] for r in records], [_readout(r)[-1] for r in records]
    lowest = [min(_readout(r)) for r in records]
    ranks = [(r["rank_before"]["1"], r["rank_after"]["1"]) for r in records]
    rows = [
        [
            f"784-{hidden}-10",
            len(records),
            format_mean_std(start, 1),
            format_mean_std(end, 1),
            format_mean_std(lowest, 1),
            format_mean_std([_readout(r, "matrix")[-1] for r in records], 1),
            f"{format_mean_std([a for a, _ in ranks])} -> {format_mean_std([b for _, b in ranks])}",
            falls(start, end),
        ]
    ]
    if "-" in hidden:  # the layer below the readout too
        below = [
            [list(h["neuron"].values())[-2] for h in (r["history"][0], r["history"][-1])] for r in records
        ]
        rows.append(
            [
                f"784-{hidden}-10, middle layer",
                len(records),
                format_mean_std([a for a, _ in below], 1),
                format_mean_std([b for _, b in below], 1),
                "",
                "",
                "",
                falls([a for a, _ in below], [b for _, b in below]),
            ]
        )
    return rows


NOISE_HEADER = [
    "network (readout unless said)",
    "seeds",
    "per-neuron angle: start",
    "end",
    "lowest on the way",
    "whole-matrix: end",
    "effective rank W1",
    "start -> end",
]


def _claim(claim: str, ours: list[float], other: list[float], better) -> list:
    """A paired claim: holds in how many seeds, and whether the mean difference exceeds the seed spread."""
    holds = sum(better(a, b) for a, b in zip(ours, other, strict=True))
    (m1, s1), (m2, s2) = mean_std(ours), mean_std(other)
    beyond = abs(m1 - m2) > max(s1, s2)
    word = (
        "borne out"
        if holds == len(ours) and beyond
        else "**reversed**"
        if holds == 0 and beyond
        else "no difference beyond the seed spread"
    )
    return [claim, f"{holds}/{len(ours)}", f"{m1:.2f} vs {m2:.2f} (std {s1:.2f}, {s2:.2f})", word]


def _get(per_cond: dict, cond: str, f) -> list[float]:
    return [f(r) for _, r in sorted(per_cond.get(cond, {}).items())]


def _converged(run: dict, epochs: int) -> float:
    """Change of test accuracy over the last fifth of training (a convergence check)."""
    acc, steps = run["curve"]["test_accuracy"], run["curve"]["step"]
    cut = steps[-1] * 0.8
    return acc[-1] - next(a for a, s in zip(acc, steps, strict=True) if s >= cut)


def _rule_holds(changes: list[float], finals: list[float]) -> str:
    """Whether the mean change over the last fifth is smaller than the seeds' spread of the final accuracy
    (the reading of "to convergence" the module states)."""
    if len(finals) < 2:
        return "–"
    return "yes" if abs(statistics.fmean(changes)) < statistics.stdev(finals) else "no"


def _data_table(per_cond: dict, conditions, epochs: int) -> str:
    rows = []
    for cond in conditions:
        if cond not in per_cond:
            continue
        get = lambda f, c=cond: _get(per_cond, c, f)  # noqa: E731
        rows.append(
            [
                cond,
                len(per_cond[cond]),
                format_mean_std(get(lambda r: r["final_test_accuracy"])),
                "not readable in our copy",
                format_mean_std(get(lambda r: r["auc"])),
                format_mean_std(get(lambda r: r["curve"]["test_accuracy"][1])),
                format_mean_std(get(lambda r: _converged(r, epochs))),
                _rule_holds(get(lambda r: _converged(r, epochs)), get(lambda r: r["final_test_accuracy"])),
                format_mean_std(get(lambda r: r["gap"]["accuracy"])),
                "–"
                if cond == "bp"
                else format_mean_std(get(lambda r: list(r["curve"]["neuron"][-1].values())[-1]), 1),
            ]
        )
    return markdown_table(
        [
            "condition",
            "seeds",
            "final test acc (%)",
            "published",
            "AUC (%)",
            "acc after the first eval interval",
            "change over the last fifth",
            "change < seed spread",
            "gap: train - test acc (pts)",
            "readout angle at end",
        ],
        rows,
    )


def _claims(name: str, setting: str, per_cond: dict) -> list[list]:
    acc, auc, gap = (
        {c: _get(per_cond, c, f) for c in per_cond}
        for f in (lambda r: r["final_test_accuracy"], lambda r: r["auc"], lambda r: r["gap"]["accuracy"])
    )
    if not {"bp", "fa", "fa+noise"} <= set(acc) or len({len(v) for v in acc.values()}) != 1:
        return []
    rows = [
        _claim(
            f"{name} ({setting}): FA+noise has a smaller generalisation gap than FA",
            gap["fa+noise"],
            gap["fa"],
            float.__lt__,
        )
    ]
    if setting == "table1":
        dist = {c: [abs(a - b) for a, b in zip(acc[c], acc["bp"], strict=True)] for c in ("fa", "fa+noise")}
        rows = [
            _claim(f"{name}: FA+noise learns faster than FA (AUC)", auc["fa+noise"], auc["fa"], float.__gt__),
            _claim(
                f"{name}: FA+noise closer to BP than FA (final accuracy; distance to BP)",
                dist["fa+noise"],
                dist["fa"],
                float.__lt__,
            ),
            *rows,
        ]
        if "ood" in next(iter(per_cond["fa"].values())):
            for kind in OOD_KINDS:
                ood = {
                    c: _get(per_cond, c, lambda r, k=kind: statistics.fmean(r["ood"][k].values()))
                    for c in ("fa", "fa+noise")
                }
                rows.append(
                    _claim(
                        f"OOD {kind}d MNIST: FA+noise more accurate than FA",
                        ood["fa+noise"],
                        ood["fa"],
                        float.__gt__,
                    )
                )
    return rows


def write_report(summary: dict, out: Path, command: str) -> None:
    noise, runs, cfg = summary["noise"], summary["runs"], summary["config"]
    hiddens = sorted({k.split("/")[0] for k in noise}, key=len)
    lines = [
        "# Cheon, Lee & Paik (2024): random-noise pretraining for feedback alignment",
        "",
        provenance(command),
        SETUP,
        "",
    ]
    if summary["quick"]:
        lines += ["**Quick mode: a smoke run; its numbers judge nothing.**", ""]
    lines += [
        "## Registered: the noise phase (the paper's protocol, fresh noise every batch)",
        "",
        markdown_table(NOISE_HEADER, [row for h in hiddens for row in _noise_rows(noise, h, "fresh")]),
        "Why fresh noise does not align here, one change at a time with 3 seeds: "
        "[conditions/RESULTS.md](conditions/RESULTS.md).",
        "![noise](noise_pretraining.png)",
        "",
    ]
    claims: list[list] = []
    titles = {
        "table1": "Table 1 rows (784-100-10, full training set, {e} epochs)",
        "gap": "Generalisation gap at the paper's setting (1,600 training images, 784-100-100-10, "
        "{e} epochs)",
    }
    for setting, per_data in runs.items():
        epochs = cfg["settings"][setting]["epochs"]
        for name, per_cond in per_data.items():
            lines += [
                f"## Registered: {titles[setting].format(e=epochs)}: {name}",
                "",
                _data_table(per_cond, ("bp", "fa", "fa+noise"), epochs),
                f"![{setting} {name}](learning_{setting}_{name}.png)",
                "",
            ]
            claims += _claims(name, setting, per_cond)
            _plot_curves(per_cond, out / f"learning_{setting}_{name}.png", f"{setting}: {name}")
    lines += [
        "## Registered: the paper's claims against our numbers",
        "",
        "Paired by seed. **borne out**: holds in every seed and the means differ by more than the larger "
        "std; **reversed**: the opposite holds in every seed, beyond the spread; otherwise no difference "
        "beyond the seed spread.",
        "",
        markdown_table(["claim", "seeds where it holds", "ours vs other (means)", "verdict"], claims),
        "",
    ]
    lines += [
        "## Exploration: nowt's pool variant (not the paper's protocol)",
        "",
        f"The registered noise phase on a fixed set of {cfg['pool']:,} noise examples trained on pass "
        "after pass (`nowt.pretrain_noise`'s default). nowt's own method, not a verdict on the paper.",
        "",
        markdown_table(NOISE_HEADER, [row for h in hiddens for row in _noise_rows(noise, h, "pool")]),
        "",
    ]
    for setting, per_data in runs.items():
        for name, per_cond in per_data.items():
            if "fa+pool" in per_cond:
                lines += [
                    f"{setting}, {name}:",
                    "",
                    _data_table(per_cond, ("fa", "fa+noise", "fa+pool"), cfg["settings"][setting]["epochs"]),
                    "",
                ]
    lines += [
        "## History",
        "",
        "Earlier runs, each labelled, none a verdict: "
        "[history/](history/) (nowt's pool variant as the noise phase, 2026-12-03 and the pool-based "
        "conditions study of 2026-11-25; the first fresh-noise run with Adam, 2026-11-23).",
        "",
    ]
    _plot_noise(noise, hiddens, out / "noise_pretraining.png")
    at = 5 + 2 * bool(summary["quick"])
    lines[at:at] = _verdict(noise, runs, claims)
    (out / "RESULTS.md").write_text("\n".join(lines))


def _verdict(noise: dict, runs: dict, claims: list[list]) -> list[str]:
    """The registered verdict in a few computed lines, placed above the tables."""
    records = [r for k, r in noise.items() if k.startswith("100/fresh/")]
    if not records:
        return []
    start, end = [_readout(r)[0] for r in records], [_readout(r)[-1] for r in records]
    lines = ["## Verdict (registered rows, the paper's protocol)", "",
             f"- Alignment: the readout's per-neuron angle {format_mean_std(start, 1)} -> "
             f"{format_mean_std(end, 1)} degrees after the noise phase ({falls(start, end)}; lowest on the "
             f"way {format_mean_std([min(_readout(r)) for r in records], 1)}): the paper's alignment "
             f"{'falls here' if falls(start, end).startswith('falls') else 'is not reproduced'}."]
    for setting, per_data in runs.items():
        for name, per_cond in per_data.items():
            cells = ", ".join(f"{c} {format_mean_std(_get(per_cond, c, lambda r: r['final_test_accuracy']))}"
                              for c in ("bp", "fa", "fa+noise") if c in per_cond)
            gaps = ", ".join(f"{c} {format_mean_std(_get(per_cond, c, lambda r: r['gap']['accuracy']))}"
                             for c in ("bp", "fa", "fa+noise") if c in per_cond)
            lines.append(f"- {setting}, {name}: test accuracy {cells}; gap (pts) {gaps}.")
    counts = {word: sum(c[-1] == word for c in claims) for word in
              ("borne out", "**reversed**", "no difference beyond the seed spread")}
    lines += [f"- The paper's claims: {counts['borne out']} borne out, {counts['**reversed**']} reversed, "
              f"{counts['no difference beyond the seed spread']} without a difference beyond the seed spread "
              f"(of {len(claims)}; table below).", ""]
    return lines


def _plot_noise(noise: dict, hiddens: list[str], path: Path) -> None:
    fig, axes = figure(len(hiddens), width=5, height=3.6)
    for ax, hidden in zip(axes[0], hiddens, strict=True):
        for key, record in noise.items():
            h, kind, seed = key.split("/")
            if h == hidden:
                ax.plot(
                    [r["step"] for r in record["history"]],
                    _readout(record),
                    color="tab:red" if kind == "fresh" else "tab:green",
                    label=f"{kind} noise" if seed == "seed0" else None,
                )
        style(ax, xlabel="noise step", ylabel="degrees", title=f"784-{hidden}-10: readout per-neuron angle")
    save(fig, path)


def _plot_curves(per_cond: dict, path: Path, title: str) -> None:
    fig, ((ax,),) = figure(1)
    for cond, per_seed in per_cond.items():
        for seed, run in per_seed.items():
            ax.plot(
                run["curve"]["step"],
                run["curve"]["test_accuracy"],
                color=COLOURS[cond],
                lw=1,
                label=cond if seed == min(per_seed) else None,
            )
    lo = min(min(r["curve"]["test_accuracy"][1:] or [0]) for p in per_cond.values() for r in p.values())
    style(ax, xlabel="training step", ylabel="test accuracy (%)", title=title, ylim=(max(0, lo - 2), 100))
    save(fig, path)
