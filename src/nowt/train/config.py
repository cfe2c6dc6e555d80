"""`TrainConfig`: what a run computes and where it runs, and the one place its values are checked.

Each field carries its help text, choices, range and flag name in `field(metadata=...)`, so the command line
(`nowt.cli` builds its flags from these fields), TOML files and Python callers share one set of defaults and
one validation path: `TrainConfig.validate()` (and `TrainConfig.from_dict` for raw TOML values). The metadata
keys, and how the rule options' fields are made from the rules' own declarations: `nowt.train.schema`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args, get_type_hints

import torch

import nowt.targetprop  # noqa: F401  (registers target propagation's rules, whose options are fields here)
from nowt.rules import list_rules, rule_class
from nowt.train.kinds import learner_kind
from nowt.train.schema import (
    _PLURAL,
    FieldsByName,
    RuleOptionFields,
    _f,
    check_value,
    choices_of,
    flag_name,
    is_default,
    parse_list,
    with_rule_options,
)

#: Config fields that say where and how fast a run goes, not what it computes: a resume may change them.
NOT_IDENTITY = ("out_dir", "data_dir", "download", "device", "num_workers")
#: Config fields that say how `cfg.dataset` is loaded and prepared (`load_data`): none applies to data that
#: `fit` is given (`check_given_data`).
DATA_FIELDS = ("train_size", "image_size", "context", "augment", "standardize", "data_dir", "download")


def _rules() -> list[str]:
    from nowt.rules import list_rules

    return list_rules()


def _models() -> list[str]:
    from nowt.models import MODELS

    return list(MODELS)


def _datasets() -> tuple[str, ...]:
    from nowt.data import DATASETS

    return DATASETS


def _activations() -> list[str]:
    from nowt.models import ACTIVATIONS

    return sorted(ACTIVATIONS)


@with_rule_options(after="channels_last")
class TrainConfig(metaclass=RuleOptionFields):
    """One training run. Field names are TOML keys; flags are --field-name unless metadata says otherwise.

    Besides the fields written here, one field per rule option that a registered rule declares for the
    config (`nowt.rules.config_options`: the weight mirror's `mirror_*`, DFA's `conv_feedback`, `blocks`,
    `position_feedback`, target propagation's `schedule`, `alternate_every`, `inverse_*`, `sigma`,
    `alpha`), after `channels_last`, generated from the rule's `Option` and kept in step with the registry
    (`nowt.train.schema`); each is passed to the rules that declare it and refused for the others.
    """

    if TYPE_CHECKING:  # the rule-option fields, made from the registry
        def __init__(self, **values: Any) -> None: ...  # every field by keyword, rule options too

        def __getattr__(self, name: str) -> Any: ...

    rule: str = _f("fa", "learning rule", choices=_rules)
    model: str = _f("mlp", "model (nowt.models registry)", choices=_models)
    hidden: tuple[int, ...] = _f((1000,), "MLP hidden widths, e.g. 1000 or 500,500", min=1,
                                 metavar="W[,W...]")
    activation: str = _f("relu", "hidden-layer activation of the MLP", choices=_activations)
    dropout: float = _f(0.0, "dropout probability after each hidden layer of the MLP", min=0.0, lt=1.0)
    input_dropout: float = _f(0.0, "dropout probability on the MLP's input (Nøkland 2016: 0.1)", min=0.0,
                              lt=1.0)
    pool: str = _f("cls", "vit: the head reads the class token (cls) or the mean over the tokens (mean)",
                   choices=("cls", "mean"))
    init: str = _f("default", "weight init; normal_fan_avg: W, b and B ~ N(0, 1/(fan_in + fan_out)) "
                   "(Akrout et al.); xavier: W and B Glorot uniform, b 0 (BioTorch); zeros: forward "
                   "weights and biases start at 0, feedback stays random (Nøkland's FA/DFA tanh nets); "
                   "brsf's and frsf's random magnitudes keep the rule's own scale under every init",
                   choices=("default", "normal_fan_avg", "xavier", "zeros"))
    loss: str = _f("ce", "ce: softmax cross-entropy; bce: sigmoid cross-entropy on one-hot targets",
                   choices=("ce", "bce"))
    epochs: int = _f(5, "passes over the training set", min=1)
    patience: int | None = _f(None, "stop once the best test error (with --validation: the held-out "
                              "error) is N epochs old (Bartunov et al.: 100); none: run every epoch",
                              min=1, metavar="N")
    batch_size: int = _f(32, "global training batch (split across ranks under torchrun)", min=1)
    optimizer: str = _f("sgd", "optimizer of the forward weights (target propagation: always adam)",
                        choices=("sgd", "adam", "adamw", "rmsprop"))
    lr: float = _f(0.01, "learning rate", gt=0.0)
    momentum: float = _f(0.9, "momentum (sgd, rmsprop)", min=0.0)
    adam_betas: tuple[float, ...] = _f((0.9, 0.999), "Adam's / AdamW's betas (target propagation's forward "
                                       "optimizer too)", min=0.0, lt=1.0, length=2, metavar="B1,B2")
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
    standardize: bool = _f(True, "standardise images: MNIST's mean/std for MNIST and Fashion-MNIST alike, "
                           "CIFAR-10's per channel; --no-standardize: pixels / 255")
    shuffle: bool = _f(True, "shuffle the training set every epoch; --no-shuffle: batches in dataset order")
    drop_last: bool = _f(False, "drop the last, incomplete training batch of each epoch")
    bias_lr_scale: float = _f(1.0, "learning rate of the biases relative to --lr", gt=0.0)
    noise_pretrain: int = _f(0, "steps of random-noise pretraining before training (nowt.pretrain_noise's "
                             "defaults: nowt's pool variant of Cheon et al. 2024, its own SGD at lr 0.01, "
                             "momentum 0.9, cross-entropy, whatever --lr, --optimizer and --loss say; "
                             "--weight-decay, --momentum, --bias-lr-scale and --amp do not apply to it: no "
                             "decay, one lr for every parameter, fp32)",
                             min=0, metavar="STEPS")
    dataset: str = _f("mnist", "dataset (used when fit() is given no data)", choices=_datasets)
    image_size: int | None = _f(None, "resize mnist / fashion-mnist / cifar10 images to N x N first "
                                "(bilinear; BioTorch's LeNet: 32)", min=1, metavar="N")
    train_size: int | None = _f(None, "train on N examples: a class-balanced random sample, the same for "
                                "every run and seed (not the first N: image folders are in class order); "
                                "text: the first N windows",
                                min=1, metavar="N")
    validation: int = _f(0, "hold N training examples out (class-balanced, seed 1, unaugmented) and score "
                         "them every epoch as val_*: choose an epoch without the test set; 0: none", min=0,
                         metavar="N")
    context: int | None = _f(None, "text datasets: bytes per window, the model's context (default 128)",
                             min=1, metavar="T")
    augment: bool = _f(False, "CIFAR crop+flip, ImageNet resized crop+flip")
    data_dir: str | None = _f(None, "where the dataset files are (default: embedded or the cache)")
    download: bool = _f(False, "download MNIST/Fashion-MNIST/CIFAR-10 first")
    device: str = _f("cpu", "torch device: cpu, cuda, cuda:N, mps")
    num_workers: int = _f(0, "DataLoader worker processes, for image folders (imagenet) and augmented "
                          "cifar10; no effect on in-memory tensor data (mnist, fashion-mnist, cifar10 "
                          "without --augment, synthetic, text), which batches itself", min=0,
                          flag="--workers")
    out_dir: str | None = _f(None, "run directory (config, metrics, checkpoint); none: write nothing",
                             flag="--out")
    extra: dict = _f({}, "free-form notes kept with the config", cli=False)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "config") -> TrainConfig:
        """A checked config from raw values (a TOML table, keys with - or _); unknown keys are refused."""
        values = normalized_keys(values, source)
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
        for f in fields(self):
            count = f.metadata.get("length")
            if count is not None and len(getattr(self, f.name)) != count:
                raise ValueError(f"{f.name} ({flag_name(f)}) takes {_COUNT.get(count, count)} "
                                 f"{_PLURAL[get_args(hints[f.name])[0]]} {f.metadata['metavar']}, got "
                                 f"{getattr(self, f.name)!r}")
        if list(self.lr_milestones) != sorted(set(self.lr_milestones)):  # a repeat cuts the lr 100-fold
            raise ValueError(f"lr_milestones (--lr-milestones) must be increasing epochs, each once (e.g. "
                             f"50,75), got {self.lr_milestones!r}")
        own = learner_kind(self.rule).own_optimizer if self.rule in list_rules() else None
        if own is not None:  # target propagation: record the optimizer and schedule it runs, not the defaults
            if is_default(FIELDS["optimizer"], self.optimizer):
                self.optimizer = own
            if is_default(FIELDS["lr_schedule"], self.lr_schedule):
                self.lr_schedule = "constant"
        check_optimizer_fields(self, [n for n in OPTIMIZER_FIELDS
                                      if not is_default(FIELDS[n], getattr(self, n))])
        check_device(self.device)
        if self.out_dir is not None:
            check_out_dir(self.out_dir)
        return self

    def check_given_data(self) -> None:
        """For `fit` given its data: a data field set here (DATA_FIELDS) would not apply to that data, yet
        config.json would record it (and `nowt evaluate` load data by it): refused, naming the fields."""
        ignored = [flag_name(FIELDS[n]) for n in DATA_FIELDS if not is_default(FIELDS[n], getattr(self, n))]
        if ignored:
            raise ValueError(f"fit() was given its data, to which {', '.join(ignored)} would not apply (yet "
                             f"config.json would record them): leave them at their defaults and prepare the "
                             f"data yourself, or pass data_from_cfg=True for data loaded by this config "
                             f"(nowt.train.factories.load_data)")

    def _not_identity(self) -> set[str]:
        return not_identity(self.rule)

    def identity(self) -> dict[str, Any]:
        """The fields that decide what a run computes: a checkpoint resumes only under the same identity.
        With them num_workers, which decides it for a Dataset training set (`identity_differences`)."""
        skip = self._not_identity() - {"num_workers"}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items() if k not in skip}

    def schedule_spans_epochs(self) -> bool:
        """True when the lr at a step depends on the number of epochs (cosine; step without milestones)."""
        return self.lr_schedule == "cosine" or (self.lr_schedule == "step" and not self.lr_milestones)

    def identity_differences(self, earlier: dict[str, Any], *, dataset: bool = False) -> list[str]:
        """The identity fields in which `earlier` (a saved identity) differs from this config. A field the
        earlier run did not know (added to nowt since) counts as its default, so old runs still resume.
        `epochs` counts only where the lr schedule spans them: otherwise a longer run continues a shorter
        one exactly, so a run may be lengthened. `dataset`: the training set is a Dataset, whose transforms
        may draw random numbers (augmentation): with 0 workers from torch's global RNG, which the checkpoint
        keeps, with more from seeds each worker gets, so num_workers counts (where `earlier` has it)."""
        ours = json.loads(json.dumps(self.identity()))  # tuples as lists, as saved
        defaults = saved_defaults()
        skip = self._not_identity() | (set() if self.schedule_spans_epochs() else {"epochs"})
        if dataset and "num_workers" in earlier:
            skip.discard("num_workers")
        return sorted(k for k in set(earlier) | set(ours) if k not in skip
                      and earlier.get(k, defaults.get(k)) != ours.get(k, defaults.get(k)))

    def check_resumes(self, earlier: dict[str, Any], out: Path | None, *, dataset: bool) -> None:
        """Refuses to continue the checkpoint in `out`, whose saved identity is `earlier`, under this config
        where they differ (`identity_differences`), naming the fields."""
        differ = self.identity_differences(earlier, dataset=dataset)
        workers = ("; a Dataset's random transforms draw per DataLoader worker" if "num_workers" in differ
                   else "")
        if differ:
            raise ValueError(f"checkpoint in {out} was made with another configuration (it differs in "
                             f"{', '.join(differ)}{workers}); " + (f"resume with --workers "
                             f"{earlier['num_workers']}, or " if workers else "") + "use a new --out")


#: The fields only some optimizers read (`check_optimizer_fields`).
OPTIMIZER_FIELDS = ("adam_betas", "adam_eps", "momentum")


def check_optimizer_fields(cfg: TrainConfig, names: Iterable[str]) -> None:
    """Refuses those of the fields `names` (those set: other than the default, or given as flags even at
    it) that `cfg`'s optimizer does not read: --adam-betas and --adam-eps without Adam or AdamW, --momentum
    with them."""
    names = frozenset(names)
    own = learner_kind(cfg.rule).own_optimizer if cfg.rule in list_rules() else None
    adam = cfg.optimizer in ("adam", "adamw") or own == "adam"
    changed = [flag_name(FIELDS[n]) for n in ("adam_betas", "adam_eps") if n in names]
    if changed and not adam:
        raise ValueError(f"{' and '.join(changed)} {'apply' if len(changed) > 1 else 'applies'} to Adam "
                         f"and AdamW only, not --optimizer {cfg.optimizer}")
    # (target propagation refuses it with its own reason: `check_whole_network_fields`)
    if cfg.optimizer in ("adam", "adamw") and own is None and "momentum" in names:
        raise ValueError(f"--momentum applies to sgd and rmsprop, not --optimizer {cfg.optimizer} "
                         f"(its first moment is --adam-betas' B1)")


def not_identity(rule: str) -> set[str]:
    """The fields that do not decide what a run of `rule` computes: where and how fast it goes, and the rule
    options its rule does not have (refused when set, so they cannot change what it computes)."""
    declared = rule_class(rule).options if rule in list_rules() else {}
    # a rule with its own optimizer runs one optimizer and schedule whatever a config says (runs saved
    # before `validate` recorded them said sgd, cosine): they decide nothing
    own = {"optimizer", "lr_schedule"} if rule in list_rules() and learner_kind(rule).own_optimizer else set()
    return set(NOT_IDENTITY) | own | {name for name, f in FIELDS.items()
                                      if f.metadata.get("rule_option") and name not in declared}


def normalized_keys(values: Mapping[str, Any], source: str = "config") -> dict[str, Any]:
    """`values` with the keys' dashes as underscores; a key given twice (`train-size` and `train_size`) is
    refused, as one of the two values would be dropped unseen."""
    out: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name in out:
            raise ValueError(f"{source}: {name} given twice (as {spelled[name]} and {key}); keep one")
        out[name], spelled[name] = value, str(key)
    return out


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


#: TrainConfig's fields by name, for the flags and checks that cite them (read when asked: rule options follow
#: the registry).
FIELDS: Mapping[str, Any] = FieldsByName(TrainConfig)
_COUNT = {2: "two", 3: "three"}
__all__ = ["DATA_FIELDS", "FIELDS", "NOT_IDENTITY", "TrainConfig", "check_device", "check_optimizer_fields",
           "check_out_dir", "check_value", "choices_of", "flag_name", "is_default", "normalized_keys",
           "not_identity", "parse_list", "read_saved_config", "saved_defaults"]


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

