"""The `nowt` command line.

    nowt train --rule fa                      # MLP on the embedded MNIST; ends "test accuracy: NN.NN%"
    nowt train --config run.toml --lr 0.05    # TOML keys are TrainConfig fields; flags override them
    nowt compare --rules bp,fa,kp --epochs 3  # same model, data and budget per rule; table and plots
    nowt reproduce --list | nowt reproduce akrout2019 --quick
    nowt report runs/compare-mnist/bp runs/compare-mnist/fa --out report/
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

import nowt
from nowt import distributed
from nowt.train import TrainConfig, model_factories


def _hidden(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(h) for h in text.split(",") if h.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--hidden takes comma-separated widths like 1000 or 500,500, "
                                         f"got {text!r}") from None
    if any(h <= 0 for h in sizes):
        raise argparse.ArgumentTypeError(f"hidden widths must be positive, got {text!r}")
    return sizes


def _all_rules() -> list[str]:
    return nowt.rules()


def add_training_args(p: argparse.ArgumentParser) -> None:
    """Flags for the TrainConfig fields; every dest is a field name, so a TOML file can set any of them."""
    from nowt.data import DATASETS

    p.add_argument("--config", help="TOML file of TrainConfig fields (flags given here override it)")
    p.add_argument("--dataset", default="mnist", choices=DATASETS)
    p.add_argument("--data-dir", default=None, help="where the dataset files are (default: embedded/cache)")
    p.add_argument("--download", action="store_true", help="download MNIST/Fashion-MNIST/CIFAR-10 first")
    p.add_argument("--augment", action="store_true", help="CIFAR crop+flip, ImageNet resized crop+flip")
    p.add_argument("--train-size", type=int, default=None, help="use only the first N training examples")
    p.add_argument("--model", default="mlp", choices=list(model_factories()))
    p.add_argument("--hidden", type=_hidden, default=(1000,), help="MLP hidden widths, e.g. 1000 or 500,500")
    p.add_argument("--activation", default="relu", choices=sorted(nowt.models.ACTIVATIONS))
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--init", default="default", choices=["default", "normal_fan_avg"])
    p.add_argument("--loss", default="ce", choices=["ce", "bce"])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adam", "adamw", "rmsprop"])
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--lr-schedule", default="cosine", choices=["cosine", "constant", "step"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deterministic", action="store_true", help="torch deterministic algorithms only")
    p.add_argument("--amp", default="off", choices=["off", "bf16"], help="mixed precision (autocast)")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format for conv models")
    p.add_argument("--schedule", default="parallel", choices=["parallel", "alternating"],
                   help="target propagation: train inverses with the forward weights, or alternate by epoch")
    p.add_argument("--noise-pretrain", type=int, default=0, metavar="STEPS",
                   help="steps of random-noise pretraining before training (Cheon et al. 2024)")
    p.add_argument("--mirror-steps", type=int, default=1, help="wm: mirror steps after every 2nd step")
    p.add_argument("--mirror-warmup", type=int, default=300, help="wm: mirror steps before training")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", dest="num_workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--resume", action="store_true", help="continue the run(s) in --out from the checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser(config_defaults: dict | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nowt", description="Deep learning without weight transport.")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a model with a learning rule")
    t.add_argument("--rule", default="fa", help=f"learning rule: {', '.join(_all_rules())} (default fa)")
    t.add_argument("--out", dest="out_dir", default=None, help="run directory (metrics, checkpoint)")
    add_training_args(t)
    c = sub.add_parser("compare", help="train several rules on the same model, data and budget")
    c.add_argument("--rules", default="bp,fa,kp,wm", help="comma-separated rules (default bp,fa,kp,wm)")
    c.add_argument("--out", dest="out_dir", default=None, help="directory for the runs and the report "
                   "(default runs/compare-DATASET)")
    add_training_args(c)
    for p in (t, c):
        p.set_defaults(**(config_defaults or {}))
    r = sub.add_parser("reproduce", help="run a paper's table (nowt reproduce --list)")
    r.add_argument("name", nargs="?", help="reproduction name")
    r.add_argument("--list", action="store_true", help="list reproductions with their published numbers")
    r.add_argument("--quick", action="store_true", help="the scaled-down version (minutes on 2 CPU cores)")
    r.add_argument("--runs", default=None, help="comma-separated subset of the reproduction's runs")
    r.add_argument("--out", default=None, help="directory (default runs/reproduce/NAME[-quick])")
    r.add_argument("--data-dir", default=None)
    r.add_argument("--download", action="store_true")
    r.add_argument("--device", default=None)
    r.add_argument("--no-progress", action="store_true")
    rep = sub.add_parser("report", help="markdown report with learning-curve and alignment plots")
    rep.add_argument("runs", nargs="+", help="run directories (made by --out)")
    rep.add_argument("--out", default=None, help="report directory (default: RUN_DIR/report for one run, "
                     "else the first run's parent/report)")
    rep.add_argument("--title", default="nowt report")
    return parser


def read_toml(path: str) -> dict:
    """TrainConfig fields (and `rules` for compare) from a TOML file, checked by name."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        raise SystemExit("nowt: --config needs Python 3.11+ (tomllib)") from None
    try:
        with open(path, "rb") as f:
            values = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise SystemExit(f"nowt: cannot read config {path}: {e}") from None
    values = {k.replace("-", "_"): v for k, v in values.items()}
    allowed = {f.name for f in fields(TrainConfig)} - {"extra"} | {"rules"}
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise SystemExit(f"nowt: config {path}: unknown key(s) {unknown}; "
                         f"known: {', '.join(sorted(allowed))}")
    if "hidden" in values:
        h = values["hidden"]
        values["hidden"] = _hidden(h) if isinstance(h, str) else tuple(int(x) for x in h)
    if isinstance(values.get("rules"), list):
        values["rules"] = ",".join(values["rules"])
    return values


def config_from_args(args: argparse.Namespace, **overrides) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    cfg = TrainConfig(**{**values, **overrides})
    if cfg.rule not in _all_rules():
        raise SystemExit(f"nowt {args.command}: unknown rule {cfg.rule!r}; "
                         f"known rules: {', '.join(_all_rules())}")
    if cfg.epochs < 1 or cfg.batch_size < 1 or not cfg.lr > 0:
        raise SystemExit(f"nowt {args.command}: --epochs and --batch-size must be >= 1 and --lr > 0")
    return cfg


def train_command(args: argparse.Namespace) -> int:
    from nowt.train import fit

    cfg = config_from_args(args, rule=args.rule.lower())
    if args.resume and not cfg.out_dir:
        raise SystemExit("nowt train: --resume needs --out, the run directory to resume")
    history = fit(cfg, resume=args.resume, progress=not args.no_progress)
    if distributed.world()[0] == 0:
        print(f"test accuracy: {history[-1]['test_accuracy']:.2f}%")
    return 0


def compare_command(args: argparse.Namespace) -> int:
    from nowt.data import load_dataset
    from nowt.report import load_run, summary_table, write_report
    from nowt.train import fit

    rules = [r.strip().lower() for r in args.rules.split(",") if r.strip()]
    if not rules:
        raise SystemExit("nowt compare: --rules is empty")
    out = Path(args.out_dir or f"runs/compare-{args.dataset}")
    configs = [config_from_args(args, rule=rule, out_dir=str(out / rule)) for rule in rules]
    data = load_dataset(args.dataset, root=args.data_dir, download=args.download, augment=args.augment,
                        train_size=args.train_size)
    for cfg in configs:  # the very same tensors, model recipe, seed and budget for every rule
        fit(cfg, data.train, data.test, resume=args.resume, progress=not args.no_progress)
    dirs = [cfg.out_dir for cfg in configs]
    print(summary_table([load_run(d) for d in dirs]), end="")
    report = write_report(dirs, out, title=f"nowt compare on {args.dataset}: {', '.join(rules)}")
    print(f"report: {report}")
    return 0


def reproduce_command(args: argparse.Namespace) -> int:
    from nowt import reproduce
    from nowt.report import write_report

    if args.list:
        print("\n\n".join(reproduce.describe(r) for r in reproduce.REPRODUCTIONS.values()))
        for name, (_, _, what) in reproduce.ANALYSES.items():
            print(f"\n{name}: {what}")
        return 0
    if not args.name:
        raise SystemExit("nowt reproduce: give a reproduction name or --list")
    if args.name in reproduce.ANALYSES:
        out = Path(args.out or f"runs/reproduce/{args.name}{'-quick' if args.quick else ''}")
        reproduce.run_analysis(args.name, out, quick=args.quick)
        print(f"results: {out / 'RESULTS.md'}")
        return 0
    repro = reproduce.get(args.name)
    out = Path(args.out or f"runs/reproduce/{repro.name}{'-quick' if args.quick else ''}")
    overrides = {k: v for k, v in (("data_dir", args.data_dir), ("device", args.device)) if v is not None}
    if args.download:
        overrides["download"] = True
    only = [r.strip() for r in args.runs.split(",")] if args.runs else None
    rows = reproduce.run_reproduction(repro, quick=args.quick, out_dir=out, only=only,
                                      progress=not args.no_progress, **overrides)
    table = reproduce.results_table(rows)
    print(table, end="")
    out.mkdir(parents=True, exist_ok=True)
    title = f"# {repro.name}{' (quick)' if args.quick else ''}"
    (out / "results.md").write_text(f"{title}\n\n{repro.paper}\n\n{repro.table}. {repro.notes}\n\n"
                                    f"`nowt {' '.join(args.argv)}`\n\n{table}")
    ran = sorted({r["dir"] for r in rows if r["status"] == "ok"})
    if ran:
        print(f"report: {write_report(ran, out, title=f'{repro.name}: our runs')}")
    return 0


def report_command(args: argparse.Namespace) -> int:
    from nowt.report import write_report

    first = Path(args.runs[0])
    out = args.out or (first / "report" if len(args.runs) == 1 else first.parent / "report")
    print(f"report: {write_report(args.runs, out, title=args.title)}")
    return 0


COMMANDS = {"train": train_command, "compare": compare_command, "reproduce": reproduce_command,
            "report": report_command}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if getattr(args, "config", None):
        args = build_parser(read_toml(args.config)).parse_args(argv)
    args.argv = argv
    try:
        return COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        print(f"nowt {args.command}: error: {e}", file=sys.stderr)
        return 2
    finally:
        distributed.cleanup()  # a torchrun worker leaves its process group cleanly


if __name__ == "__main__":
    sys.exit(main())
