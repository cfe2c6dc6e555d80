"""`TrainConfig`: what a run computes and where it runs, and the one place its values are checked.

Each field carries its help text, choices, range and flag name in `field(metadata=...)`, so the command line
(`nowt.cli` builds its flags from these fields), TOML files and Python callers share one set of defaults and
one validation path: `TrainConfig.validate()` (and `TrainConfig.from_dict` for raw TOML values).

metadata keys: help (str), choices (tuple, or a function returning the names, for registries filled at
import time), flag (the CLI flag when not --field-name), metavar, min / gt / lt (numeric bounds, also for
each entry of a tuple), cli (False: no flag), rule_option (True: passed to the rules that declare it).
"""

from __future__ import annotations

import json
import math
import types
from collections.abc import Mapping
from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import torch

from nowt.rules import rule_class, rules
from nowt.rules.wm import MIRROR_ANNEAL, MIRROR_EVERY, MIRROR_WARMUP_BATCH
from nowt.train.kinds import learner_kind

#: Config fields that say where and how fast a run goes, not what it computes: a resume may change them.
NOT_IDENTITY = ("out_dir", "data_dir", "download", "device", "num_workers")


def _rules() -> list[str]:
    from nowt.rules import rules

    return rules()


def _models() -> list[str]:
    from nowt.models import MODELS

    return list(MODELS)


def _datasets() -> tuple[str, ...]:
    from nowt.data import DATASETS

    return DATASETS


def _activations() -> list[str]:
    from nowt.models import ACTIVATIONS

    return sorted(ACTIVATIONS)


def _f(default: Any, help: str, **meta: Any) -> Any:
    """A dataclass field whose metadata the CLI and `validate` read."""
    if isinstance(default, dict):
        return field(default_factory=dict, metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})


@dataclass
class TrainConfig:
    """One training run. Field names are TOML keys; flags are --field-name unless metadata says otherwise."""

    rule: str = _f("fa", "learning rule", choices=_rules)
    model: str = _f("mlp", "model (nowt.models registry)", choices=_models)
    hidden: tuple[int, ...] = _f((1000,), "MLP hidden widths, e.g. 1000 or 500,500", min=1,
                                 metavar="W[,W...]")
    activation: str = _f("relu", "hidden-layer activation of the MLP", choices=_activations)
    dropout: float = _f(0.0, "dropout probability after each hidden layer of the MLP", min=0.0, lt=1.0)
    input_dropout: float = _f(0.0, "dropout probability on the MLP's input (Nøkland 2016: 0.1)", min=0.0,
                              lt=1.0)
    init: str = _f("default", "weight init; normal_fan_avg: W, b and B ~ N(0, 1/(fan_in + fan_out)) "
                   "(Akrout et al.); xavier: W and B Glorot uniform, b 0 (BioTorch); zeros: forward "
                   "weights and biases start at 0, feedback stays random (Nøkland's FA/DFA tanh nets)",
                   choices=("default", "normal_fan_avg", "xavier", "zeros"))
    loss: str = _f("ce", "ce: softmax cross-entropy; bce: sigmoid cross-entropy on one-hot targets",
                   choices=("ce", "bce"))
    epochs: int = _f(5, "passes over the training set", min=1)
    patience: int | None = _f(None, "stop once the best test error is N epochs old (Bartunov et al.: 100); "
                              "none: run every epoch", min=1, metavar="N")
    batch_size: int = _f(32, "global training batch (split across ranks under torchrun)", min=1)
    optimizer: str = _f("sgd", "optimizer of the forward weights (target propagation: always adam)",
                        choices=("sgd", "adam", "adamw", "rmsprop"))
    lr: float = _f(0.01, "learning rate", gt=0.0)
    momentum: float = _f(0.9, "momentum (sgd, rmsprop)", min=0.0)
    adam_betas: tuple[float, ...] = _f((0.9, 0.999), "Adam's / AdamW's betas (target propagation's forward "
                                       "optimizer too)", min=0.0, lt=1.0, metavar="B1,B2")
    adam_eps: float = _f(1e-8, "Adam's / AdamW's epsilon (target propagation's forward optimizer too)",
                         gt=0.0)
    weight_decay: float = _f(0.0, "L2 weight decay", min=0.0)
    lr_schedule: str = _f("cosine", "cosine: to 0, per batch; constant; step: x0.1 at --lr-milestones "
                          "(default 1/3 and 2/3 of the run); plateau: Nøkland 2016's x0.5 when an epoch's "
                          "training error is not under its running mean, ending after 8 halvings (target "
                          "propagation: its lr is always constant)",
                          choices=("cosine", "constant", "step", "plateau"))
    lr_milestones: tuple[int, ...] = _f((), "epochs after which the step schedule multiplies the lr by 0.1, "
                                        "e.g. 50,75", min=1, metavar="E[,E...]")
    seed: int = _f(0, "seed of the init, feedback matrices and data order", min=0, lt=2**63)  # torch's range
    deterministic: bool = _f(False, "torch deterministic algorithms only")
    amp: str = _f("off", "bf16: forward and backward under torch.autocast in bfloat16 (weights stay fp32)",
                  choices=("off", "bf16"))
    channels_last: bool = _f(False, "NHWC memory format for the model and image batches (faster GPU convs)")
    mirror_steps: int = _f(1, "mirror steps after every --mirror-every-th optimizer step", min=0,
                           rule_option=True)
    mirror_warmup: int = _f(300, "mirror steps before training", min=0, rule_option=True)
    mirror_every: int = _f(MIRROR_EVERY, "optimizer steps between mirror steps", min=1, rule_option=True)
    mirror_batch: int = _f(0, "noise batch of a training mirror step; 0: mirror_every / 8 of the batch",
                           min=0, rule_option=True)
    mirror_warmup_batch: int = _f(MIRROR_WARMUP_BATCH, "noise batch of a warm-up mirror step", min=1,
                                  rule_option=True)
    mirror_lr: float | None = _f(None, "mirror step size; default: automatic, shrinking as evidence "
                                 "accumulates", gt=0.0, rule_option=True)
    mirror_anneal: float = _f(MIRROR_ANNEAL, "the automatic mirror step after the t-th training mirror step "
                              "is min(lr_auto, A / t); 0: a fixed step", min=0.0, rule_option=True)
    mirror_decay: float | None = _f(None, "decay of B per mirror step; default: the step (a moving average); "
                                    "0: accumulate", min=0.0, lt=1.0, rule_option=True)
    mirror_noise: str = _f("normal", "distribution of the mirror's noise", choices=("normal", "uniform"),
                           rule_option=True)
    mirror_noise_std: float = _f(1.0, "standard deviation of the mirror's noise", gt=0.0, rule_option=True)
    mirror_activation: str = _f("none", "the mirror's response: W x (none) or act(W x + b)",
                                choices=("none", "sigmoid", "tanh", "relu"), rule_option=True)
    mirror_normalize: bool = _f(True, "the mirror's estimate is y x^T / (s^2 n), an estimate of W; "
                                "--no-mirror-normalize: the raw sum y x^T (the paper's)", rule_option=True)
    conv_feedback: str = _f("full", "dfa: a convolution's B spans its whole input (full) or is "
                            "BioTorch's n_out x in_channels x kernel, e spread over the output positions "
                            "(kernel)",
                            choices=("full", "kernel"), rule_option=True)
    blocks: tuple[str, ...] = _f((), "dfa: modules whose output gets B e as a whole, with backprop inside "
                                 "them (Launay et al. 2020), by name or glob, e.g. 'blocks.*' for vit",
                                 metavar="NAME[,NAME...]", rule_option=True)
    position_feedback: str = _f("full", "dfa: a sequence's B, for Linear inputs and block outputs (N, T, C): "
                                "n_out x T x C (full) or one n_out x C for every position (shared, as Launay "
                                "et al. 2020 for transformers)", choices=("full", "shared"), rule_option=True)
    schedule: str = _f("parallel", "target propagation: train inverses with the forward weights "
                       "(parallel) or alternate by epoch (or --alternate-every)",
                       choices=("parallel", "alternating"), rule_option=True)
    alternate_every: int = _f(0, "target propagation, alternating schedule: switch every N batches instead "
                              "of every epoch (0)", min=0, metavar="N", rule_option=True)
    inverse_lr: float = _f(1e-4, "target propagation: Adam lr of the inverses g", gt=0.0, rule_option=True)
    inverse_betas: tuple[float, ...] = _f((0.9, 0.999), "target propagation: Adam betas of the inverses",
                                          min=0.0, lt=1.0, metavar="B1,B2", rule_option=True)
    inverse_eps: float = _f(1e-8, "target propagation: Adam epsilon of the inverses", gt=0.0,
                            rule_option=True)
    sigma: float = _f(0.1, "target propagation: std of the noise that corrupts h in the inverse loss",
                      min=0.0, rule_option=True)
    alpha: float = _f(0.1, "target propagation (tp, dtp): step size of the penultimate layer's target",
                      gt=0.0, rule_option=True)
    standardize: bool = _f(True, "standardise inputs (per-channel mean/std); --no-standardize: pixels / 255")
    shuffle: bool = _f(True, "shuffle the training set every epoch; --no-shuffle: batches in dataset order")
    drop_last: bool = _f(False, "drop the last, incomplete training batch of each epoch")
    bias_lr_scale: float = _f(1.0, "learning rate of the biases relative to --lr", gt=0.0)
    noise_pretrain: int = _f(0, "steps of random-noise pretraining before training (Cheon et al. 2024)",
                             min=0, metavar="STEPS")
    dataset: str = _f("mnist", "dataset (used when fit() is given no data)", choices=_datasets)
    image_size: int | None = _f(None, "resize mnist / fashion-mnist / cifar10 images to N x N first "
                                "(bilinear; BioTorch's LeNet: 32)", min=1, metavar="N")
    train_size: int | None = _f(None, "train on N examples: a class-balanced random sample, the same for "
                                "every run and seed (not the first N: image folders are in class order); "
                                "text: the first N windows",
                                min=1, metavar="N")
    context: int | None = _f(None, "text datasets: bytes per window, the model's context (default 128)",
                             min=1, metavar="T")
    augment: bool = _f(False, "CIFAR crop+flip, ImageNet resized crop+flip")
    data_dir: str | None = _f(None, "where the dataset files are (default: embedded or the cache)")
    download: bool = _f(False, "download MNIST/Fashion-MNIST/CIFAR-10 first")
    device: str = _f("cpu", "torch device: cpu, cuda, cuda:N, mps")
    num_workers: int = _f(0, "DataLoader worker processes", min=0, flag="--workers")
    out_dir: str | None = _f(None, "run directory (config, metrics, checkpoint); none: write nothing",
                             flag="--out")
    extra: dict = _f({}, "free-form notes kept with the config", cli=False)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "config") -> TrainConfig:
        """A checked config from raw values (a TOML table, keys with - or _); unknown keys are refused."""
        values = {str(k).replace("-", "_"): v for k, v in values.items()}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{source}: unknown key(s) {unknown}; known: {', '.join(sorted(known))}")
        return cls(**values).validate()

    def validate(self) -> TrainConfig:
        """Checks every field's type and range (bool is not a number, 1.5 is not an int), choices and the
        device and run directory; normalises in place (a list of widths becomes a tuple, an int lr a
        float). Raises a one-line ValueError naming the key and its flag; returns self."""
        hints = get_type_hints(type(self))
        for f in fields(self):
            setattr(self, f.name, check_value(f, hints[f.name], getattr(self, f.name)))
        if not self.hidden:  # an MLP without hidden layers is a linear model: never what a run asks for
            raise ValueError("hidden (--hidden) is empty; give at least one width, e.g. 1000 or 500,500")
        for name in ("adam_betas", "inverse_betas"):
            if len(getattr(self, name)) != 2:
                raise ValueError(f"{name} ({flag_name(FIELDS[name])}) takes two numbers B1,B2, got "
                                 f"{getattr(self, name)!r}")
        adam = self.optimizer in ("adam", "adamw") or (self.rule in rules()
                                                         and learner_kind(self.rule).own_optimizer == "adam")
        changed = [flag_name(FIELDS[n]) for n in ("adam_betas", "adam_eps")
                   if not is_default(FIELDS[n], getattr(self, n))]
        if changed and not adam:
            raise ValueError(f"{' and '.join(changed)} {'apply' if len(changed) > 1 else 'applies'} to Adam "
                             f"and AdamW only, not --optimizer {self.optimizer}")
        if self.optimizer in ("adam", "adamw") and not is_default(FIELDS["momentum"], self.momentum):
            raise ValueError(f"--momentum applies to sgd and rmsprop, not --optimizer {self.optimizer} "
                             f"(its first moment is --adam-betas' B1)")
        check_device(self.device)
        if self.out_dir is not None:
            check_out_dir(self.out_dir)
        return self

    def _not_identity(self) -> set[str]:
        """Where and how fast a run goes, and the rule options its rule does not have (refused when set,
        so they cannot change what it computes)."""
        declared = rule_class(self.rule).options if self.rule in rules() else {}
        return set(NOT_IDENTITY) | {f.name for f in fields(self)
                                    if f.metadata.get("rule_option") and f.name not in declared}

    def identity(self) -> dict[str, Any]:
        """The fields that decide what a run computes: a checkpoint resumes only under the same identity."""
        skip = self._not_identity()
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items() if k not in skip}

    def schedule_spans_epochs(self) -> bool:
        """True when the lr at a step depends on the number of epochs (cosine; step without milestones)."""
        return self.lr_schedule == "cosine" or (self.lr_schedule == "step" and not self.lr_milestones)

    def identity_differences(self, earlier: dict[str, Any]) -> list[str]:
        """The identity fields in which `earlier` (a saved identity) differs from this config. A field the
        earlier run did not know (added to nowt since) counts as its default, so old runs still resume.
        `epochs` counts only where the lr schedule spans them: otherwise a longer run continues a shorter
        one exactly, so a run may be lengthened."""
        ours = json.loads(json.dumps(self.identity()))  # tuples as lists, as saved
        defaults = saved_defaults()
        skip = self._not_identity() | (set() if self.schedule_spans_epochs() else {"epochs"})
        return sorted(k for k in set(earlier) | set(ours) if k not in skip
                      and earlier.get(k, defaults.get(k)) != ours.get(k, defaults.get(k)))


def read_saved_config(path: Path) -> dict[str, Any]:
    """A run's config.json as a dict, or a one-line ValueError naming the file."""
    try:
        values = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {path} ({e})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path} holds a JSON {type(values).__name__}, not a run's config (an object)")
    return values


def saved_defaults() -> dict[str, Any]:
    """TrainConfig's defaults as a saved config.json holds them (tuples as lists): what a field that a saved
    run predates counts as."""
    return json.loads(json.dumps(asdict(TrainConfig())))


FIELDS = {f.name: f for f in fields(TrainConfig)}  # by name, for the flags and checks that cite them


def flag_name(f: Field) -> str:
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


def choices_of(f: Field) -> list[str] | None:
    choices = f.metadata.get("choices")
    return list(choices() if callable(choices) else choices) if choices is not None else None


def is_default(f: Field, value: Any) -> bool:
    default = f.default_factory() if f.default is MISSING else f.default  # type: ignore[misc]
    return (tuple(value) if isinstance(value, list) else value) == default  # a TOML list is a tuple field


_PLURAL = {int: "integers", float: "numbers"}


def _describe(kind: Any) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            dict: "a table"}.get(kind, str(kind))


def _bounds(f: Field) -> str:
    parts = [f">= {f.metadata['min']}" if "min" in f.metadata else "",
             f"> {f.metadata['gt']}" if "gt" in f.metadata else "",
             f"< {f.metadata['lt']}" if "lt" in f.metadata else ""]
    return " and ".join(p for p in parts if p)


def _in_range(f: Field, x: float) -> bool:
    m = f.metadata
    return not (("min" in m and x < m["min"]) or ("gt" in m and x <= m["gt"]) or ("lt" in m and x >= m["lt"]))


def _scalar(kind: type, value: Any) -> Any:
    """`value` as `kind`, or a TypeError: no bool for a number, no float for an int, no str for a bool."""
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise TypeError
    if kind is float:
        try:
            value = float(value)
        except OverflowError:  # an int too large for a float
            raise ValueError("must be a finite number, got an integer too large for one") from None
        if not math.isfinite(value):  # NaN passes every bound and compares unequal to itself
            raise ValueError(f"must be a finite number, got {value!r}")
    return value


def parse_list(text: str, kind: type = int) -> tuple:
    """"500,500" -> (500, 500), "0.9,0.999" -> (0.9, 0.999) (kind float): a tuple field's flag (and TOML
    string) form."""
    try:
        return tuple(kind(h) for h in text.split(",") if h.strip())
    except ValueError:
        example = "1000 or 500,500" if kind is int else "0.9,0.999"
        raise ValueError(f"takes comma-separated {_PLURAL[kind]} like {example}, got {text!r}") from None


def check_value(f: Field, hint: Any, value: Any) -> Any:
    """`value` of field `f` (type `hint`) checked and normalised; ValueError naming the key and flag."""
    name = f"{f.name} ({flag_name(f)})"
    optional = get_origin(hint) in (Union, types.UnionType) and type(None) in get_args(hint)
    kind = next(a for a in get_args(hint) if a is not type(None)) if optional else hint
    if value is None and optional:
        return None
    bounds = _bounds(f)
    try:
        if get_origin(kind) is tuple:
            element = get_args(kind)[0]
            if isinstance(value, str):
                value = parse_list(value, element)
            if not isinstance(value, list | tuple):
                raise TypeError
            value = tuple(_scalar(element, v) for v in value)
            items = value
        else:
            value = _scalar(get_origin(kind) or kind, value)
            items = (value,) if isinstance(value, int | float) and not isinstance(value, bool) else ()
    except TypeError:
        what = f"a list of {_PLURAL[get_args(kind)[0]]}" if get_origin(kind) is tuple else _describe(kind)
        what += f" {bounds}" if bounds else ""
        what += " or none" if optional else ""
        raise ValueError(f"{name} expects {what}, got {value!r} ({type(value).__name__})") from None
    except ValueError as e:
        raise ValueError(f"{name} {e}") from None
    if not all(_in_range(f, x) for x in items):
        raise ValueError(f"{name} must be {bounds}, got {value!r}")
    choices = choices_of(f)
    if choices is not None and value not in choices:
        raise ValueError(f"unknown {f.name} {value!r} ({flag_name(f)}); choose from: {', '.join(choices)}")
    return value


def check_device(device: str) -> torch.device:
    """The torch device `device` names, or a ValueError when it is malformed or absent on this machine."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r} (--device); use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this PyTorch build has no CUDA" if torch.version.cuda is None else "no GPU is visible"
            raise ValueError(f"device {device!r} (--device) is not available: {why}; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} (--device) is not available: "
                             f"{torch.cuda.device_count()} GPU(s) visible")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} (--device) is not available on this machine; use --device cpu")
    return dev


def check_out_dir(out_dir: str) -> Path:
    """A run directory must be named and must not be an existing file."""
    if not str(out_dir).strip():
        raise ValueError("out_dir (--out) is empty; name a run directory, or omit --out to write nothing")
    path = Path(out_dir)
    if path.exists() and not path.is_dir():
        raise ValueError(f"out_dir (--out) {str(path)!r} is an existing file, not a run directory")
    return path

