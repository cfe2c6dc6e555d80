"""The `nowt` command line.

    nowt train --rule fa                      # MLP on the embedded MNIST; ends "test accuracy: NN.NN%"
    nowt train --config run.toml --lr 0.05    # TOML keys are TrainConfig fields; flags override them
    nowt compare --rules bp,fa,kp --epochs 3  # same model, data and budget per rule; table and plots
    nowt reproduce --list | nowt reproduce akrout2019 --quick
    nowt report runs/compare-mnist/bp runs/compare-mnist/fa --out report/
    nowt evaluate runs/compare-mnist/fa       # a saved run's model scored on its train and test sets
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import MISSING, replace
from pathlib import Path
from types import UnionType
from typing import Any, NoReturn, Union, get_args, get_origin, get_type_hints

from nowt import distributed
from nowt.train.config import (
    FIELDS,
    TrainConfig,
    check_device,
    check_out_dir,
    choices_of,
    flag_name,
    is_default,
    normalized_keys,
    parse_list,
)
from nowt.train.factories import MODEL_OPTIONS, check_model_options, load_data, rules_declaring
from nowt.train.learners import check_flags_apply


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one line, `nowt train: error: ...`, without the usage block, and
    takes no abbreviation: `compare --rules fa --rule bp` read `--rule` as `--rules` and trained bp."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _list_of(kind: type):
    """argparse's type for a tuple field of `kind` ("500,500", "0.9,0.999")."""
    def parse(text: str) -> tuple:
        try:
            items = parse_list(text, kind)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        if not items:  # `--blocks ,` meant something; the default it would give was not asked for
            raise argparse.ArgumentTypeError(f"no items in {text!r}: give at least one, or leave the flag "
                                             f"out for its default")
        return items
    return parse


def _flag_type(hint: Any) -> Callable[[str], Any]:
    """How argparse turns a flag's text into the field's type (the checks come later, in TrainConfig)."""
    if get_origin(hint) in (Union, UnionType):  # X | None
        hint = next(a for a in get_args(hint) if a is not type(None))
    kind = hint
    if get_origin(kind) is tuple:
        return _list_of(get_args(kind)[0])
    return kind if kind in (int, float) else str  # str: the text as given


def add_training_args(p: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """A flag per TrainConfig field, generated from its metadata (help, choices, flag name): the dest is
    the field name, so a TOML file can set any of them. Values are checked by `TrainConfig.validate`. The
    rule options are those of the rules registered when this runs."""
    p.add_argument("--config", help="TOML file of TrainConfig fields (flags given here override it)")
    config_fields = list(FIELDS.values())  # brings the rule-option fields in step with the registry
    hints = get_type_hints(TrainConfig)
    for f in config_fields:
        if f.name in skip or not f.metadata.get("cli", True):
            continue
        default = f.default if f.default is not MISSING else None
        help_text = f.metadata["help"]
        choices = choices_of(f)
        if choices:
            help_text += f"; one of: {', '.join(choices)}"
        if f.metadata.get("rule_option"):
            help_text += f" (rule option of: {', '.join(rules_declaring(f.name))})"
        help_text += f" (default: {_shown(default)})"
        # no argparse default: config_from_args sees which flags were given, even at their default value
        if hints[f.name] is bool:
            p.add_argument(flag_name(f), dest=f.name, action=argparse.BooleanOptionalAction,
                           default=None, help=help_text)
        else:
            p.add_argument(flag_name(f), dest=f.name, type=_flag_type(hints[f.name]), default=None,
                           metavar=f.metadata.get("metavar", f.name.upper()), help=help_text)
    p.add_argument("--resume", action="store_true", help="continue the run(s) in --out from the checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier run in --out (without it, nowt refuses to write over one)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _shown(value: object) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


class _Raw:
    """A TOML value passed through argparse untouched; `TrainConfig.validate` checks it."""

    def __init__(self, value: object) -> None:
        self.value = value


def _unwrap(args: argparse.Namespace) -> argparse.Namespace:
    """The TOML values' own; `from_config` names those no flag overrode."""
    args.from_config = {key for key, value in vars(args).items() if isinstance(value, _Raw)}
    for key in args.from_config:
        setattr(args, key, getattr(args, key).value)
    return args


def _add_debug(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show the traceback of an error (or NOWT_DEBUG=1)")


def build_parser(config_defaults: dict | None = None) -> argparse.ArgumentParser:
    parser = Parser(prog="nowt", description="Deep learning without weight transport.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    t = sub.add_parser("train", help="train a model with a learning rule")
    add_training_args(t)
    c = sub.add_parser("compare", help="train several rules on the same model, data and budget")
    c.add_argument("--rules", default="bp,fa,kp,wm", help="comma-separated rules (default bp,fa,kp,wm)")
    c.add_argument("--seeds", type=_list_of(int), metavar="S[,S...]",
                   help="comma-separated seeds: every rule runs with each (in OUT/RULE/seedS), "
                   "and the report adds mean ± std over them; default: --seed alone")
    c.add_argument("--lr-grid", type=_list_of(float), metavar="LR[,LR...]",
                   help="a fair learning rate for every rule: each trains once per rate (its first seed) on "
                   "the training set less --holdout examples, and its test runs take the rate with the best "
                   "held-out accuracy (the test set is never used to choose)")
    c.add_argument("--holdout", type=int, default=None, metavar="N",
                   help="examples held out of the training set to choose --lr-grid's rate on (default a "
                   "tenth of the training set)")
    add_training_args(c, skip=("rule",))
    c.set_defaults(out_dir=None)
    for action in c._actions:
        if action.dest == "out_dir":
            action.help = "directory for the runs and the report (default runs/compare-DATASET)"
    for p in (t, c):
        # wrapped, so that argparse does not convert a TOML string ("3") as if it were a flag's text
        p.set_defaults(**{k: _Raw(v) for k, v in (config_defaults or {}).items()})
    r = sub.add_parser("reproduce", help="run a paper's table (nowt reproduce --list)")
    r.add_argument("name", nargs="?", help="reproduction name")
    r.add_argument("--list", action="store_true", help="list reproductions with their published numbers")
    r.add_argument("--verdicts", action="store_true", help="train nothing: refill the verdicts table of "
                   "README.md in --out (default results) from the committed runs of every reproduction")
    r.add_argument("--quick", action="store_true", help="the scaled-down version (minutes on 2 CPU cores)")
    r.add_argument("--runs", default=None, help="comma-separated subset of the reproduction's runs")
    r.add_argument("--seeds", type=_list_of(int), metavar="S[,S...]",
                   help="train only these of the registered seeds (the others are read from --out when "
                   "there); default: every registered seed")
    r.add_argument("--out", default=None, help="directory (default runs/reproduce/NAME[-quick])")
    r.add_argument("--data-dir", default=None, help="where the dataset files are")
    r.add_argument("--download", action="store_true", help="download the datasets first")
    r.add_argument("--device", default=None, help="torch device of every run (default: each run's own)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.add_argument("--gather", action="store_true", help="train nothing: tabulate the runs already in --out "
                   "from their metrics.jsonl and config.json")
    rep = sub.add_parser("report", help="markdown report with learning-curve and alignment plots")
    rep.add_argument("runs", nargs="+", help="run directories (made by --out)")
    rep.add_argument("--out", default=None, help="report directory (default: RUN_DIR/report for one run, "
                     "else the first run's parent/report)")
    rep.add_argument("--title", default="nowt report", help="the report's heading")
    ev = sub.add_parser("evaluate", help="score a saved run's model on its train and test sets")
    ev.add_argument("runs", nargs="+", help="run directories (with checkpoint.pt)")
    ev.add_argument("--split", default="train,test", help="comma-separated: train, test (default both)")
    ev.add_argument("--device", default=None, help="torch device (default: the run's own)")
    ev.add_argument("--data-dir", default=None, help="where the dataset files are (default: the run's own)")
    ev.add_argument("--no-progress", action="store_true", help="no progress bars")
    for p in (t, c, r, rep, ev):
        _add_debug(p)
    return parser


def _load_toml(path: str) -> dict[str, Any]:
    if sys.version_info < (3, 11):  # Python 3.10: no tomllib
        raise ValueError("--config needs Python 3.11+ (tomllib)")
    else:  # (an else: mypy checks it as Python 3.11's)
        import tomllib

        try:
            with open(path, "rb") as f:
                return tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ValueError(f"cannot read config {path}: {e}") from None


def read_toml(path: str, command: str = "train") -> dict:
    """Raw TrainConfig fields (and `rules` for compare) from a TOML file; unknown keys are refused here
    (and a key the command would ignore: `rules` in train, `rule` in compare), types and ranges by
    TrainConfig.validate with the flags' values."""
    values = normalized_keys(_load_toml(path), f"config {path}")
    allowed = {f.name for f in FIELDS.values() if f.metadata.get("cli", True)}
    allowed = allowed - {"rule"} | {"rules"} if command == "compare" else allowed
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise ValueError(f"config {path}: unknown key(s) {unknown} for nowt {command}; known: "
                         f"{', '.join(sorted(allowed))}")
    if isinstance(values.get("rules"), list):
        values["rules"] = ",".join(map(str, values["rules"]))
    return values


def config_from_args(args: argparse.Namespace, **overrides) -> TrainConfig:
    """The run's TrainConfig from flags and TOML values, checked once (TrainConfig.validate)."""
    values = {k: v for k, v in vars(args).items() if k in FIELDS and v is not None}  # None: not given
    values.update(overrides)
    if isinstance(values.get("rule"), str):
        values["rule"] = values["rule"].lower()
    # A flag given on the command line must apply, even at its default value (a TOML file, which may be a
    # whole run's config, is held to the checks of values other than the default, as a TrainConfig is).
    flags = set(values) - getattr(args, "from_config", set()) - set(overrides)
    check_model_options(str(values.get("model", FIELDS["model"].default)),
                        {k: values[k] for k in MODEL_OPTIONS
                         if k in values and (k in flags or not is_default(FIELDS[k], values[k]))})
    cfg = TrainConfig.from_dict(values)
    check_flags_apply(cfg, {name: values[name] for name in flags})
    return cfg


def train_command(args: argparse.Namespace) -> int:
    from nowt.train import fit

    cfg = config_from_args(args)
    if args.resume and not cfg.out_dir:
        raise ValueError("--resume needs --out, the run directory to resume")
    history = fit(cfg, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    if distributed.world()[0] == 0:
        print(f"test accuracy: {history[-1]['test_accuracy']:.2f}%")
    return 0


def compare_command(args: argparse.Namespace) -> int:
    from nowt.report import load_run, lr_grid_table, seed_summary_table, summary_table, write_report
    from nowt.train import fit
    from nowt.train.select import choose_lr

    # each rule once ("fa,FA" is one rule: its runs would share a directory and be averaged twice)
    rules = list(dict.fromkeys(r.strip().lower() for r in str(args.rules).split(",") if r.strip()))
    if not rules:
        raise ValueError("--rules is empty")
    if args.holdout is not None and args.holdout < 1:  # (0 would be taken as the default, a tenth)
        raise ValueError(f"--holdout {args.holdout}: hold out at least 1 training example, or leave it out "
                         f"for a tenth of the training set")
    if args.lr_grid and args.lr is not None:  # the grid's choice would replace it
        raise ValueError("--lr and --lr-grid exclude each other: --lr-grid chooses each rule's rate")
    dataset = args.dataset if args.dataset is not None else FIELDS["dataset"].default
    out = check_out_dir(args.out_dir) if args.out_dir is not None else Path(f"runs/compare-{dataset}")
    if args.seeds is None:
        configs = [config_from_args(args, rule=rule, out_dir=str(out / rule)) for rule in rules]
    else:
        if args.seed is not None:
            raise ValueError("--seed and --seeds exclude each other: --seeds gives every seed to run")
        seeds = args.seeds
        if not seeds or min(seeds) < 0 or len(set(seeds)) < len(seeds):
            raise ValueError(f"--seeds {','.join(map(str, seeds))}: give distinct seeds >= 0, e.g. 0,1,2")
        configs = [config_from_args(args, rule=rule, seed=seed, out_dir=str(out / rule / f"seed{seed}"))
                   for rule in rules for seed in seeds]
    first = configs[0]  # checked: every config differs only in its rule, seed, directory (and TP optimizer)
    trained = {c.rule: f"{c.optimizer}, {c.lr_schedule} lr" for c in configs}
    optimizers = ("" if len(set(trained.values())) == 1 else  # target propagation runs its own Adam
                  "Not one optimizer: " + "; ".join(f"{r}: {how}" for r, how in trained.items()) + ".\n\n")
    rank0 = distributed.world()[0] == 0  # under torchrun every rank trains; rank 0 alone reports
    if rank0:
        print(optimizers, end="")
    data = load_data(first)
    run = {"resume": args.resume, "overwrite": args.overwrite, "progress": not args.no_progress}
    grid = ""
    if args.lr_grid:  # each rule's rate chosen on held-out training examples, from the one grid
        chosen, how = {}, ""
        for rule in rules:
            lead = next(c for c in configs if c.rule == rule)
            best, records, how = choose_lr(lead, sorted(set(args.lr_grid)), data, args.holdout,
                                           out / rule / "lr-grid", **run)
            chosen[rule] = best, records
        configs = [replace(c, lr=chosen[c.rule][0]) for c in configs]
        grid = lr_grid_table(chosen, how)
    elif args.holdout is not None:
        raise ValueError("--holdout applies with --lr-grid only")
    for cfg in configs:  # the very same tensors, model recipe, seed and budget for every rule
        fit(cfg, data.train, data.test, **run, data_from_cfg=True)
    distributed.barrier()  # the ranks end together, rank 0's files written
    if not rank0:  # another rank would read the runs while rank 0 still writes them, and write the report too
        return 0
    dirs = [cfg.out_dir for cfg in configs if cfg.out_dir is not None]  # every one's: made with out_dir
    runs = [load_run(d, name=str(Path(d).relative_to(out))) for d in dirs]
    by_rule = seed_summary_table(runs)
    print(grid + summary_table(runs) + (f"\n{by_rule}" if by_rule else ""), end="")
    report = write_report(dirs, out, title=f"nowt compare on {first.dataset}: {', '.join(rules)}",
                          preamble=optimizers + grid)
    print(f"report: {report}")
    return 0


def reproduce_command(args: argparse.Namespace) -> int:
    from nowt import reproduce

    if args.device is not None:
        check_device(args.device)
    if args.list:
        print(reproduce.describe(reproduce.get(args.name)) if args.name else reproduce.listing())
        return 0
    if args.verdicts:
        path = reproduce.write_verdicts(args.out or "results")  # the table it wrote, not gathered again
        print(path.read_text().split(reproduce.VERDICTS_BEGIN)[1].split(reproduce.VERDICTS_END)[0].lstrip(),
              end="")
        print(f"written into {path}")
        return 0
    if not args.name:
        raise ValueError("give a reproduction name or --list")
    overrides = {k: v for k, v in (("data_dir", args.data_dir), ("device", args.device)) if v is not None}
    if args.download:
        overrides["download"] = True
    only = [r.strip() for r in args.runs.split(",") if r.strip()] if args.runs is not None else None
    if only is not None and not only:
        raise ValueError("--runs is empty: leave it out for every one, or name some")
    path = reproduce.run(args.name, args.out, quick=args.quick, only=only, progress=not args.no_progress,
                         command="nowt " + " ".join(args.argv), gather=args.gather,
                         seeds=list(args.seeds) if args.seeds else None, **overrides)
    if distributed.world()[0] == 0:  # under torchrun, rank 0 alone wrote RESULTS.md
        print(path.read_text() if path.stat().st_size < 20_000 else "", end="")
        print(f"results: {path}")
    return 0


def report_command(args: argparse.Namespace) -> int:
    from nowt.report import write_report

    resolved = [Path(r).resolve() for r in args.runs]
    twice = next((r for i, r in enumerate(args.runs) if resolved[i] in resolved[:i]), None)
    if twice is not None:  # it would stand in the tables and plots twice, as two runs
        raise ValueError(f"run {twice} is given twice")
    first = Path(args.runs[0])
    out = args.out or (first / "report" if len(args.runs) == 1 else first.parent / "report")
    if Path(out).exists() and not Path(out).is_dir():
        raise ValueError(f"--out {out} is a file: the report is a folder (report.md and its plots)")
    print(f"report: {write_report(args.runs, out, title=args.title)}")
    return 0


def evaluate_command(args: argparse.Namespace) -> int:
    from nowt.train import evaluate_run

    if args.device is not None:
        check_device(args.device)
    splits = [s.strip() for s in args.split.split(",") if s.strip()]
    if not splits:
        raise ValueError("--split is empty: give train, test or train,test")
    for i, run in enumerate(args.runs):
        epoch, scores = evaluate_run(run, splits, device=args.device, data_dir=args.data_dir,
                                     progress=not args.no_progress)
        if i == 0:
            print("| run | epoch | split | loss | accuracy % | top-1 error % | top-5 error % |\n"
                  "|---|---|---|---|---|---|---|")
        for split, m in scores.items():
            print(f"| {run} | {epoch} | {split} | {m['loss']:.4f} | {m['accuracy']:.2f} "
                  f"| {m['top1_error']:.2f} | {m['top5_error']:.2f} |", flush=True)
    return 0


COMMANDS = {"train": train_command, "compare": compare_command, "reproduce": reproduce_command,
            "report": report_command, "evaluate": evaluate_command}


def main(argv: list[str] | None = None) -> int:
    """Runs one command; a bad input ends as one line `nowt CMD: error: ...` and status 2 (with --debug or
    NOWT_DEBUG=1, the traceback instead)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("NOWT_DEBUG", "") not in ("", "0")
    try:
        if getattr(args, "config", None):
            args = _unwrap(build_parser(read_toml(args.config, args.command)).parse_args(argv))
        args.argv = argv
        return COMMANDS[args.command](args)
    except (ValueError, OSError, FloatingPointError) as e:
        if debug:
            raise
        print(f"nowt {args.command}: error: {e}", file=sys.stderr)
        return 2
    finally:
        distributed.cleanup()  # a torchrun worker leaves its process group cleanly


if __name__ == "__main__":
    sys.exit(main())
