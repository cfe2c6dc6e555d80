"""Do sdtp-parallel's locally connected (LC) layers learn? Measurements on the MNIST-LC network of Bartunov
et al. 2018 (an exploration, not a registered recipe; write-up in lc_features.md beside this file).

Subcommands (run from the repository root; checkpoints are read from copies, never from a running row):

    verify  rebuild a row's initial model and inverses as `nowt reproduce` does, train --epochs N with the
            library's own loop (`nowt.train.fit`, out_dir under /tmp) and compare each epoch's numbers with
            the row's committed seed0/metrics.jsonl (equal numbers: the rebuilt W_0 is the run's).
    drift   per weight layer, ||W_t - W_0|| / ||W_0|| of each checkpoint against the rebuilt W_0 of its
            row's seed (and ||b_t||: biases start at 0).
    probe   a fresh softmax readout (multinomial logistic regression, L-BFGS, full batch, zero init, the
            same for every input) fitted on the 60k training images' features: the second LC layer's output
            (64 x 7 x 7, flattened, standardised by the training features' mean and std) of each checkpoint
            and of the rebuilt init of seeds 0, 1, 2; raw pixels as a reference. Test error after 25, 50,
            100, 200 L-BFGS iterations. --layer fc: the FC layer's output (1,024 units) instead.
    frozen  the registered bp row (`nowt reproduce bartunov2018-mnist-lc`, row bp, seed S) trained by
            `nowt.train.fit` for N epochs with the two LC layers' weights and biases frozen at their
            initialisation (requires_grad off, so the optimizer never moves them; checked after training).

The commands of lc_features.md (2026-12-04), from the repository root; P holds the JSON that was committed:

    CP=/tmp/lcf; P=results/bartunov2018/mnist-lc/probes; L="python $P/lc_features.py"; mkdir -p $CP/e20
    cp results/bartunov2018/mnist-lc/sdtp-parallel/seed0/checkpoint.pt $CP/sdtp-parallel.pt      # epoch 186
    cp results/bartunov2018/mnist-lc/ao-sdtp-parallel/seed0/checkpoint.pt $CP/ao-sdtp-parallel.pt  # 117
    export OMP_NUM_THREADS=1
    $L verify bp --epochs 10 --run-dir $CP/verify-bp --out $P/lc_verify_bp.json
    cp $CP/verify-bp/checkpoint.pt $CP/bp-epoch10.pt   # bp/seed0 keeps no checkpoint: this rerun's
    $L verify sdtp-parallel --epochs 1 --run-dir $CP/verify-sdtp --out $P/lc_verify_sdtp_parallel.json
    for S in 0 1 2; do $L frozen --seed $S --epochs 20 --run-dir $CP/frozen/seed$S --out $CP/f$S.json; done
    for S in 0 1 2; do cp $CP/frozen/seed$S/checkpoint.pt $CP/e20/frozen_seed$S.pt; done
    for S in 0 1 2; do $L frozen --seed $S --epochs 40 --resume --run-dir $CP/frozen/seed$S \
        --out $P/frozen_lc_bp_seed$S.json; done   # (the three seeds ran side by side)
    T="sdtp-parallel=$CP/sdtp-parallel.pt ao-sdtp-parallel=$CP/ao-sdtp-parallel.pt"
    F="bp-frozen-lc/seed0=$CP/e20/frozen_seed0.pt bp-frozen-lc/seed1=$CP/e20/frozen_seed1.pt \
       bp-frozen-lc/seed2=$CP/e20/frozen_seed2.pt"
    $L drift $T bp-epoch10=$CP/bp-epoch10.pt $F --out $P/lc_drift.json
    $L probe $T --out $P/lc_probe.json
    $L probe --no-references bp-epoch10=$CP/bp-epoch10.pt --out $P/lc_probe_bp_epoch10.json
    $L probe --layer fc --no-references $T bp-epoch10=$CP/bp-epoch10.pt --out $P/lc_probe_fc.json
    $L probe --layer fc --no-references $F --out $P/lc_probe_fc_frozen.json
    $L summary --out $P/lc_summary.json   # the tables of lc_features.md
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import nowt.train.learners as learners
import nowt.train.loop as loop
from nowt.checkpoint import load_checkpoint
from nowt.reproduce import get
from nowt.reproduce.entry import run_config
from nowt.train import TrainConfig, fit
from nowt.train.factories import build_model, load_data

REPRO = "bartunov2018-mnist-lc"
ROWS = Path("results/bartunov2018/mnist-lc")
SHAPE = (1, 28, 28)
LC_BLOCKS = (0, 1)  # model[0], model[1]: Sequential(LocallyConnected2d, Tanh)
PROBE_STEPS = (25, 50, 100, 200)


def row_config(row: str, seed: int = 0) -> TrainConfig:
    """The registered row's TrainConfig, as `nowt reproduce` builds it (full run, not --quick)."""
    return run_config(get(REPRO), row, False, "/tmp/lcf/unused", seed)


def initial_model(row: str, seed: int) -> nn.Module:
    """W_0: the row's model built as the training loop builds it (`build_model`, seeded by cfg.seed)."""
    return build_model(row_config(row, seed), SHAPE, 10)


def checkpoint_model(row: str, path: str) -> tuple[nn.Module, int, int]:
    """(model with the checkpoint's weights, epoch, seed); the checkpoint's config must be the row's."""
    state = load_checkpoint(path, ("config", "epoch", "model"))
    seed = int(state["config"]["seed"])
    cfg = row_config(row, seed)
    for key in ("rule", "model", "init", "schedule", "lr"):
        if key in state["config"] and state["config"][key] != getattr(cfg, key):
            raise ValueError(f"{path}: {key} {state['config'][key]!r} is not row {row}'s "
                             f"{getattr(cfg, key)!r}")
    model = build_model(cfg, SHAPE, 10)
    model.load_state_dict(state["model"])
    return model, int(state["epoch"]), seed


def labelled(pairs: list[str]) -> list[tuple[str, str]]:
    """LABEL=PATH arguments; the row is LABEL up to a '/' (e.g. bp-frozen-lc/seed1 -> row bp)."""
    return [tuple(p.split("=", 1)) for p in pairs]  # type: ignore[misc]


def row_of(label: str) -> str:
    base = label.split("/")[0]
    return "bp" if base.startswith("bp") else base


def verify(args: argparse.Namespace) -> dict:
    cfg = row_config(args.row, 0)
    cfg.epochs, cfg.patience, cfg.out_dir = args.epochs, None, args.run_dir
    t0 = time.perf_counter()
    ours = fit(cfg, overwrite=True, progress=False)
    lines = (ROWS / args.row / "seed0" / "metrics.jsonl").read_text().splitlines()[:args.epochs]
    keys = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")
    compared = [{"epoch": r["epoch"], **{k: {"rerun": r[k], "committed": c[k], "difference": r[k] - c[k]}
                                         for k in keys}}
                for r, c in zip(ours, map(json.loads, lines), strict=True)]
    return {"row": args.row, "seconds": time.perf_counter() - t0, "run_dir": args.run_dir, "epochs": compared}


def drift(args: argparse.Namespace) -> dict:
    result: dict = {"reference": {}, "checkpoints": {}}
    w0 = {s: initial_model("bp", s).state_dict() for s in (0, 1)}
    result["reference"] = {  # an independent redraw (seed 1 against seed 0): what 'moved completely' reads
        name: round(float((w0[1][name] - t).norm() / t.norm()), 4)
        for name, t in w0[0].items() if name.endswith("weight")}
    for label, path in labelled(args.checkpoints):
        model, epoch, seed = checkpoint_model(row_of(label), path)
        init = initial_model(row_of(label), seed).state_dict()
        layers = {}
        for name, t in model.state_dict().items():
            if name.endswith("weight"):
                layers[name] = {"relative_change": float((t - init[name]).norm() / init[name].norm()),
                                "norm_ratio": float(t.norm() / init[name].norm()),
                                "cosine_to_init": float(F.cosine_similarity(t.flatten(), init[name].flatten(),
                                                                            0))}
            else:
                layers[name] = {"bias_norm": float(t.norm()), "bias_norm_at_init": float(init[name].norm())}
        result["checkpoints"][label] = {"path": path, "epoch": epoch, "seed": seed, "layers": layers}
    return result


@torch.no_grad()
def lc_features(model: nn.Module, x: Tensor, batch: int = 1000, layer: str = "lc2") -> Tensor:
    """The second LC layer's output h_2 (after tanh), flattened; layer "fc": the FC layer's h_3 (2.1)."""
    blocks = nn.Sequential(*(model[i] for i in (*LC_BLOCKS, 2)[:3 if layer == "fc" else 2])).eval()
    return torch.cat([blocks(x[i:i + batch]).flatten(1) for i in range(0, len(x), batch)])


def fit_readout(train: Tensor, ytr: Tensor, test: Tensor, yte: Tensor, l2: float) -> list[dict]:
    """Multinomial logistic regression on standardised features, L-BFGS (strong Wolfe line search) from
    zero, loss = mean cross-entropy + l2/2 ||W||^2, gradient written out (two plain matmuls a step: autograd's
    transposed product ran 5x slower here); errors (%) after PROBE_STEPS iterations."""
    mean, std = train.mean(0), train.std(0).clamp_min(1e-6)
    train, test = (train - mean) / std, (test - mean) / std
    train_t = train.t().contiguous()  # (features, examples): logits as W @ train_t
    onehot = F.one_hot(ytr, 10).to(train.dtype)
    w = torch.zeros(10, train.shape[1], requires_grad=True)
    b = torch.zeros(10, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=1, history_size=20, line_search_fn="strong_wolfe")

    @torch.no_grad()
    def closure() -> Tensor:
        logits = (w @ train_t).t() + b
        loss = F.cross_entropy(logits, ytr) + 0.5 * l2 * w.pow(2).sum()
        g = (logits.softmax(1) - onehot) / len(ytr)
        w.grad, b.grad = g.t() @ train + l2 * w, g.sum(0)
        return loss

    curve, done = [], 0
    for steps in PROBE_STEPS:
        opt.param_groups[0]["max_iter"] = steps - done
        opt.param_groups[0]["max_eval"] = 2 * (steps - done)
        opt.step(closure)
        done = steps
        with torch.no_grad():
            logits = (w @ train_t).t() + b
            curve.append({"iterations": steps, "loss": float(F.cross_entropy(logits, ytr)),
                          "evaluations": opt.state[w]["func_evals"],
                          "train_error": 100 * float((logits.argmax(1) != ytr).float().mean()),
                          "test_error": 100 * float(((test @ w.t() + b).argmax(1) != yte).float().mean())})
    return curve


def probe(args: argparse.Namespace) -> dict:
    data = load_data(row_config("bp", 0))
    (xtr, ytr), (xte, yte) = data.train, data.test
    inputs: list[tuple[str, nn.Module | None, dict]] = [] if args.no_references else [("pixels", None, {})]
    inputs += [] if args.no_references else [(f"init/seed{s}", initial_model("bp", s), {"seed": s})
                                             for s in (0, 1, 2)]
    for label, path in labelled(args.checkpoints):
        model, epoch, seed = checkpoint_model(row_of(label), path)
        inputs.append((label, model, {"epoch": epoch, "seed": seed, "path": path}))
    result: dict = {"layer": args.layer, "l2": args.l2, "steps": PROBE_STEPS, "features": {}}
    for label, model, info in inputs:
        t0 = time.perf_counter()
        ftr, fte = ((xtr.flatten(1), xte.flatten(1)) if model is None else
                    (lc_features(model, xtr, layer=args.layer), lc_features(model, xte, layer=args.layer)))
        saturated = float((ftr.abs() > 0.99).float().mean()) if model is not None else math.nan
        curve = fit_readout(ftr, ytr, fte, yte, args.l2)
        result["features"][label] = {**info, "dim": ftr.shape[1], "saturated": saturated, "curve": curve,
                                     "seconds": time.perf_counter() - t0}
        print(label, json.dumps(curve[-1]), flush=True)
    return result


def frozen(args: argparse.Namespace) -> dict:
    cfg = row_config("bp", args.seed)
    cfg.epochs, cfg.patience, cfg.out_dir = args.epochs, None, args.run_dir
    build = loop.build_model

    def build_frozen(*a, **k) -> nn.Module:
        model = build(*a, **k)
        for i in LC_BLOCKS:
            model[i].requires_grad_(False)
        return model

    # fit's own loop, its model with the LC layers frozen; the loop's per-epoch diagnostics (bp's update
    # angles against itself, 0 by construction) need a gradient of every weight and are left out
    loop.build_model = build_frozen
    measure = learners.RuleLearner.measure
    learners.RuleLearner.measure = lambda self, x, y: {}  # type: ignore[method-assign]
    try:
        history = fit(cfg, resume=args.resume, progress=False)
    finally:
        loop.build_model, learners.RuleLearner.measure = build, measure  # type: ignore[method-assign]
    trained = load_checkpoint(Path(args.run_dir) / "checkpoint.pt", ("model",))["model"]
    init = initial_model("bp", args.seed).state_dict()
    moved = {name: float((trained[name] - t).abs().max()) for name, t in init.items()}
    lc_names = [n for n in init if n.split(".")[0] in {str(i) for i in LC_BLOCKS}]
    if any(moved[n] != 0 for n in lc_names):
        raise AssertionError(f"a frozen LC parameter moved: {moved}")
    keep = ("epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds")
    return {"row": "bp", "seed": args.seed, "frozen": lc_names, "epochs": args.epochs,
            "config": {k: getattr(cfg, k) for k in ("lr", "adam_betas", "adam_eps", "batch_size", "init")},
            "max_abs_change": moved, "history": [{k: r[k] for k in keep} for r in history],
            "best_test_error": min(100 - r["test_accuracy"] for r in history)}


def _curve(history: list[dict], epochs: list[int]) -> list[float]:
    return [100 - history[e - 1]["test_accuracy"] if e <= len(history) else math.nan for e in epochs]


def summary(args: argparse.Namespace) -> dict:
    """Markdown tables of the JSON files in --dir (printed; the returned dict is written to --out)."""
    d = Path(args.dir)
    lines, out = [], {}
    if (d / "lc_drift.json").exists():
        drift = json.loads((d / "lc_drift.json").read_text())
        names = list(drift["reference"])
        lines += ["| weights of | epoch | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names),
                  "| seed 1's init against seed 0's | 0 | " + " | ".join(
                      f"{drift['reference'][n]:.2f}" for n in names) + " |"]
        for label, c in drift["checkpoints"].items():
            lines.append(f"| {label} | {c['epoch']} | " + " | ".join(
                f"{c['layers'][n]['relative_change']:.2f} (cos {c['layers'][n]['cosine_to_init']:.2f})"
                for n in names) + " |")
        lines.append("")
    for f in sorted(d.glob("lc_probe*.json")):
        probe = json.loads(f.read_text())
        steps = probe["steps"]
        lines += [f"{f.name}: | features | dim | saturated | " + " | ".join(f"test err @{n}" for n in steps)
                  + f" | train err @{steps[-1]} |", "|---|---|---|" + "---|" * (len(steps) + 1)]
        for label, r in probe["features"].items():
            lines.append(f"| {label} | {r['dim']} | {r['saturated']:.3f} | " + " | ".join(
                f"{c['test_error']:.2f}" for c in r["curve"]) + f" | {r['curve'][-1]['train_error']:.2f} |")
        lines.append("")
    runs = [json.loads(f.read_text()) for f in sorted(d.glob("frozen_lc_bp_seed*.json"))]
    if runs:
        n = min(len(r["history"]) for r in runs)
        epochs = sorted({e for e in (1, 2, 5, 10, 15, 20, 25, 30, 35, 40, 50) if e <= n} | {n})
        frozen = torch.tensor([_curve(r["history"], epochs) for r in runs])
        rows = {f"bp, LC frozen at init (seeds {', '.join(str(r['seed']) for r in runs)}), mean ± std":
                [f"{m:.2f} ± {s:.2f}" for m, s in zip(frozen.mean(0).tolist(), frozen.std(0).tolist(),
                                                       strict=True)]}
        best = torch.tensor([min(_curve(r["history"], list(range(1, n + 1)))) for r in runs])
        out["frozen_best_within"] = {"epochs": n, "per_seed": best.tolist(), "mean": float(best.mean()),
                                     "std": float(best.std())}
        for row in ("sdtp-parallel", "ao-sdtp-parallel", "bp"):
            h = [json.loads(x) for x in (ROWS / row / "seed0" / "metrics.jsonl").read_text().splitlines()]
            rows[f"{row} seed 0 (committed)"] = [f"{v:.2f}" for v in _curve(h, epochs)]
            out[f"{row}_best_within"] = min(_curve(h, list(range(1, n + 1))))
        lines += ["| test error (%) at epoch | " + " | ".join(map(str, epochs)) + f" | best in 1-{n} |",
                  "|---|" + "---|" * (len(epochs) + 1)]
        bests = {k: out[f"{k.split(' ')[0]}_best_within"] for k in rows if "committed" in k}
        for label, values in rows.items():
            b = (f"{out['frozen_best_within']['mean']:.2f} ± {out['frozen_best_within']['std']:.2f}"
                 if label not in bests else f"{bests[label]:.2f}")
            lines.append(f"| {label} | " + " | ".join(values) + f" | {b} |")
    print("\n".join(lines))
    return {**out, "markdown": lines}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("verify")
    p.add_argument("row")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--run-dir", required=True)
    for name in ("drift", "probe"):
        p = sub.add_parser(name)
        p.add_argument("checkpoints", nargs="*", help="LABEL=PATH (LABEL: a row, or bp-... for bp rows)")
        if name == "probe":
            p.add_argument("--l2", type=float, default=1e-4)
            p.add_argument("--layer", choices=("lc2", "fc"), default="lc2")
            p.add_argument("--no-references", action="store_true", help="leave out pixels and the inits")
    p = sub.add_parser("summary")
    p.add_argument("--dir", default=str(ROWS / "probes"))
    p = sub.add_parser("frozen")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--run-dir", required=True)
    p.add_argument("--resume", action="store_true")
    for p in sub.choices.values():
        p.add_argument("--out", required=True)
    args = parser.parse_args()
    result = {"verify": verify, "drift": drift, "probe": probe, "frozen": frozen,
              "summary": summary}[args.command](args)
    result = {"command": args.command, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), **result}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
