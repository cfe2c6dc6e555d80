"""What a run is made of, by name: data loaders, the model (converted to its rule), optimizer, schedule, loss.

Small functions so that a distributed run or a reproduction can swap one piece: `make_loader` (each rank's
part of every global batch under torchrun), `build_model` (a DDP wrapper around the result).
"""

from __future__ import annotations

import contextlib
import inspect
import math
import re
from collections.abc import Callable, Iterator, Sized
from dataclasses import fields
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from nowt import distributed, lc
from nowt.conversion import convert
from nowt.data import Data, load_dataset
from nowt.distributed import RankBatches, rank_part
from nowt.metrics import as_tokens
from nowt.models import FIXED_ACTIVATION, MODELS, create_model
from nowt.optim import HalveOnPlateau
from nowt.rules import list_rules, rule_class
from nowt.rules.base import is_rule_layer
from nowt.train.config import FIELDS, TrainConfig, flag_name, is_default
from nowt.train.kinds import LearnerKind, learner_kind

LossFn = Callable[[Tensor, Tensor], Tensor]


class TensorLoader:
    """Shuffled mini-batches of in-memory tensors, with a generator whose state is checkpointed; with
    `per_rank`, this rank's part of each global batch (`distributed.rank_part`)."""

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False, per_rank: bool = False):
        if len(x) != len(y):
            raise ValueError(f"inputs and targets differ in length: {len(x)} vs {len(y)}")
        self.x, self.y, self.batch_size, self.shuffle, self.drop_last = x, y, batch_size, shuffle, drop_last
        self.per_rank = per_rank
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = torch.randperm(len(self.x), generator=self.generator) if self.shuffle else None
        for i in range(0, len(self) * self.batch_size, self.batch_size):
            stop = min(i + self.batch_size, len(self.x))
            if order is None:  # a view, not a copy
                rows = rank_part(range(i, stop)) if self.per_rank else range(i, stop)
                idx: Tensor | slice = slice(rows.start, rows.stop)
            else:
                idx = rank_part(order[i:stop]) if self.per_rank else order[i:stop]
            yield self.x[idx], self.y[idx]


def make_loader(data: tuple[Tensor, Tensor] | Dataset, batch_size: int, *, shuffle: bool = False,
                seed: int = 0, num_workers: int = 0, drop_last: bool = False) -> TensorLoader | DataLoader:
    """Tensors batch themselves (fast); a Dataset goes through a DataLoader. Both shuffle with a generator
    of their own (`.generator`), whose state the checkpoint keeps. Under torchrun every rank draws the same
    global batches and loads only its part of each (`distributed.rank_batches` reads them)."""
    per_rank = distributed.world()[1] > 1
    size = len(data[1]) if isinstance(data, tuple) else len(cast(Sized, data))
    if drop_last and size < batch_size:  # no batch at all: an epoch of no step, a mean over no example
        raise ValueError(f"--drop-last with --batch-size {batch_size} drops all {size} training examples: no "
                         f"step would be taken; give a --batch-size of at most {size}, or leave out "
                         f"--drop-last")
    if isinstance(data, tuple):
        return TensorLoader(*data, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last,
                            per_rank=per_rank)
    generator = torch.Generator().manual_seed(seed)
    if not per_rank:
        return DataLoader(data, batch_size, shuffle=shuffle, num_workers=num_workers, drop_last=drop_last,
                          generator=generator, persistent_workers=False)
    # the sampler DataLoader(shuffle=...) would make, batched, then cut to this rank's parts
    examples = cast(Sized, data)
    order = RandomSampler(examples, generator=generator) if shuffle else SequentialSampler(examples)
    return DataLoader(data, batch_sampler=RankBatches(BatchSampler(order, batch_size, drop_last)),
                      num_workers=num_workers, generator=generator, persistent_workers=False)


@contextlib.contextmanager
def sized(what: str) -> Iterator[None]:
    """An allocation that fails inside (a size this machine cannot hold) as one line naming `what` asked for
    it (the flags), instead of the allocator's traceback."""
    try:
        yield
    except (RuntimeError, MemoryError) as e:
        text = str(e)
        if not isinstance(e, MemoryError) and "can't allocate memory" not in text \
                and "out of memory" not in text.lower():
            raise
        asked = re.search(r"allocate (\d+) bytes", text) or re.search(r"allocate ([\d.]+ [KMGT]iB)", text)
        size = "" if asked is None else (f" ({int(asked[1]) / 2**30:.1f} GiB at once)" if asked[1].isdigit()
                                         else f" ({asked[1]} at once)")
        raise ValueError(f"out of memory {what}{size}; choose smaller sizes") from None  # CLI: one line


def check_takes(model: nn.Module, example: Tensor, name: str) -> None:
    """Runs one example of `example` through `model` (eval mode, no gradient: no dropout draw, no batch-norm
    statistics) and turns the shape error of a model that cannot take such inputs into one line naming it."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example[:1])
    except RuntimeError as e:
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "out of memory" in text.lower() or "can't allocate memory" in text:
            raise
        raise ValueError(f"model {name!r} cannot take inputs of shape {tuple(example.shape[1:])}, "
                         f"{example.dtype} (--dataset, --image-size): {text}") from None
    finally:
        model.train(was_training)


def load_data(cfg: TrainConfig) -> Data:
    """The dataset `cfg` names, prepared as it asks (root, download, augmentation, size, standardisation)."""
    return load_dataset(cfg.dataset, root=cfg.data_dir, download=cfg.download, augment=cfg.augment,
                        train_size=cfg.train_size, standardize=cfg.standardize, image_size=cfg.image_size,
                        context=cfg.context)


def parameter_groups(model: nn.Module, lr: float, bias_lr_scale: float = 1.0) -> list[dict[str, Any]]:
    """The model's parameters in one group, or two where the biases learn at `bias_lr_scale` x `lr` (the
    official Akrout et al. code moves biases by the batch-mean error times lr / batch size)."""
    params = dict(model.named_parameters())
    if bias_lr_scale == 1.0:
        return [{"params": list(params.values())}]
    # "bias", and attention's "in_proj_bias"
    bias = [p for n, p in params.items() if n.rsplit(".", 1)[-1].split("_")[-1] == "bias"]
    rest = [p for n, p in params.items() if n.rsplit(".", 1)[-1].split("_")[-1] != "bias"]
    return [{"params": rest}, {"params": bias, "lr": lr * bias_lr_scale}]


Scheduler = torch.optim.lr_scheduler.LRScheduler | HalveOnPlateau


def make_scheduler(name: str, optimizer: torch.optim.Optimizer, total_steps: int,
                   milestones: list[int] | None = None) -> Scheduler:
    """Stepped once per batch, so `cosine` reaches 0 at the last step of the run; `plateau` once per epoch,
    on the epoch's training error (and it may end the run early). `milestones`: the steps at which `step`
    multiplies the lr by 0.1 (default a third and two thirds of the run)."""
    if milestones and name != "step":
        raise ValueError(f"--lr-milestones applies to --lr-schedule step only, not {name!r}")
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))
    if name == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    if name == "step":
        milestones = milestones or [total_steps // 3, 2 * total_steps // 3]
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)
    if name == "plateau":
        return HalveOnPlateau(optimizer)
    raise ValueError(f"unknown lr schedule {name!r}; choose cosine, constant, step or plateau")


def make_loss(name: str) -> LossFn:
    """The loss by name, mean over examples; a sequence's [N, T, V] outputs and [N, T] targets count one
    example per token (`as_tokens`): next-token cross-entropy at every position."""
    if name == "ce":
        return _cross_entropy
    if name == "bce":
        return _sigmoid_cross_entropy
    raise ValueError(f"unknown loss {name!r}; choose ce or bce")


def _cross_entropy(out: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(*as_tokens(out, y))


def _sigmoid_cross_entropy(out: Tensor, y: Tensor) -> Tensor:
    """Akrout et al.: a sigmoid per class against the one-hot target, summed over classes."""
    out, y = as_tokens(out, y)
    return F.binary_cross_entropy_with_logits(out, F.one_hot(y, out.shape[1]).to(out.dtype),
                                              reduction="sum") / len(y)


def model_factories() -> dict[str, Callable[..., nn.Module]]:
    """Every model by name (kept for old callers: use `nowt.models.MODELS`)."""
    return dict(MODELS)


def rules_declaring(option: str) -> list[str]:
    """The rules whose class declares `option` (where a rule-option field applies)."""
    return [r for r in list_rules() if option in rule_class(r).options]


def rule_options(cfg: TrainConfig) -> dict[str, Any]:
    """The config's rule-option fields (mirror_steps, schedule, ...) that `cfg.rule` declares. A field set
    to a non-default value for a rule that does not declare it is refused rather than silently ignored."""
    cls = rule_class(cfg.rule)
    declared = cls.options
    options = {}
    for f in fields(cfg):
        if not f.metadata.get("rule_option"):
            continue
        value = getattr(cfg, f.name)
        if f.name in declared:
            options[f.name] = value
        elif not is_default(f, value):
            raise ValueError(f"{flag_name(f)} applies only to: {', '.join(rules_declaring(f.name))} "
                             f"(not {cfg.rule!r})")
    return options


MODEL_OPTIONS = ("hidden", "activation", "dropout", "input_dropout", "pool")


def check_model_options(model: str, requested: dict[str, object]) -> None:
    """Refuses a model option (`MODEL_OPTIONS`) that `model`'s factory does not take, rather than ignore it
    silently; an activation equal to the one the model is built with (FIXED_ACTIVATION) is accepted."""
    factory = MODELS.get(model)
    if factory is None:
        return  # TrainConfig.validate and build_model name an unknown model
    accepted = inspect.signature(factory).parameters
    for name, value in requested.items():
        built = FIXED_ACTIVATION.get(model) if name == "activation" else None
        if name in accepted or value == built:
            continue
        takes = ", ".join(n for n, m in MODELS.items() if name in inspect.signature(m).parameters)
        its = f" (its {name} is {built})" if built else ""
        raise ValueError(f"model {model!r} has no {name} option{its}; {flag_name(FIELDS[name])} "
                         f"applies to: {takes}")


def build_model(cfg: TrainConfig, input_shape: tuple[int, ...], num_classes: int,
                kind: LearnerKind | None = None, example: Tensor | None = None) -> nn.Module:
    """`cfg.model` for inputs of `input_shape`, initialised from `cfg.seed`, converted to `cfg.rule` where
    its learner `kind` (by default `learner_kind(cfg.rule)`) converts the model (target propagation trains
    the plain network itself). `example`: a batch of the data's inputs, run through the plain model first
    (`check_takes`), so that a model unfit for the data is refused by name."""
    kind = kind or learner_kind(cfg.rule)
    torch.manual_seed(cfg.seed)
    factory = MODELS.get(cfg.model)
    if factory is None:
        raise ValueError(f"unknown model {cfg.model!r}; known models: {', '.join(MODELS)}")
    offered = dict(in_features=math.prod(input_shape), hidden=cfg.hidden, activation=cfg.activation,
                   dropout=cfg.dropout, input_dropout=cfg.input_dropout, pool=cfg.pool,
                   num_classes=num_classes, in_channels=input_shape[0], image_size=input_shape[-1],
                   input_shape=input_shape)
    accepted = inspect.signature(factory).parameters
    # left at its default, a model option is no request (the CLI also checks the flags given explicitly)
    check_model_options(cfg.model, {name: getattr(cfg, name) for name in MODEL_OPTIONS
                                    if not is_default(FIELDS[name], getattr(cfg, name))})
    model = create_model(cfg.model, **{k: v for k, v in offered.items() if k in accepted})
    untouched = [n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    if cfg.init != "default" and untouched:  # its in_proj_weight is no Linear: the init would skip it
        raise ValueError(f"--init {cfg.init} rewrites Linear, convolution and locally connected layers only; "
                         f"model {cfg.model} also has attention projections it would leave at their default "
                         f"({untouched[0]}.in_proj_weight): use --init default")
    if example is not None:
        check_takes(model, example, cfg.model)
    options = rule_options(cfg)
    if cfg.init in ("xavier", "normal_fan_avg") and "feedback_init" in rule_class(cfg.rule).options:
        options["feedback_init"] = cfg.init  # DFA's B is drawn at the first forward, after the init below
    if "init" in rule_class(cfg.rule).options:
        options["init"] = "kaiming_uniform"  # B at the scale every recipe ran at (convert's default: match)
    if kind.converts_model:
        model = convert(model, cfg.rule, seed=cfg.seed,
                        **options)
    if cfg.init == "normal_fan_avg":
        _normal_fan_avg_(model, cfg.seed)
    elif cfg.init == "xavier":
        _xavier_(model, cfg.seed)
    elif cfg.init == "zeros":
        _zero_forward_(model)
    elif cfg.init != "default":
        raise ValueError(f"unknown init {cfg.init!r}; choose default, normal_fan_avg, xavier or zeros")
    model = model.to(cfg.device)
    # Module.to takes memory_format (torch's own docs), but its stubs' overloads leave it out
    return model.to(memory_format=torch.channels_last) if cfg.channels_last else model  # type: ignore[call-overload]


WeightLayer = nn.Linear | nn.modules.conv._ConvNd | lc.LocallyConnected2d


def _weight_layers(model: nn.Module) -> Iterator[WeightLayer]:
    """The Linear, convolution and locally connected layers (converted or not) that an init rewrites."""
    return (m for m in model.modules() if isinstance(m, WeightLayer))


def _fans(m: WeightLayer) -> tuple[int, int]:
    """Fan-in and fan-out as Glorot counts them (a convolution's: channels times the kernel's size, in any
    dimension and for transposed ones too; a locally connected layer's: as for its kernel, `lc.fans`)."""
    if isinstance(m, lc.LocallyConnected2d):
        return m.fans()
    return nn.init._calculate_fan_in_and_fan_out(m.weight)


@torch.no_grad()
def _xavier_(model: nn.Module, seed: int) -> None:
    """W and the random feedback ~ Glorot uniform, biases 0: BioTorch's benchmark init."""
    g = torch.Generator().manual_seed(seed)
    for m in _weight_layers(model):
        fan_in, fan_out = _fans(m)
        bound = math.sqrt(3.0) * math.sqrt(2.0 / float(fan_in + fan_out))  # xavier_uniform_'s, to the bit
        for t in [m.weight] + (m.rule.feedback_tensors(m) if is_rule_layer(m) else []):
            t.copy_(torch.empty(t.shape).uniform_(-bound, bound, generator=g))
        if m.bias is not None:
            m.bias.zero_()


@torch.no_grad()
def _zero_forward_(model: nn.Module) -> None:
    """Forward weights and biases at 0 (Nøkland 2016's FA/DFA tanh nets: the random feedback alone breaks
    the symmetry; under backprop such a net cannot leave 0 in its hidden layers)."""
    for m in _weight_layers(model):
        for t in (m.weight, m.bias):
            if t is not None:
                t.zero_()


@torch.no_grad()
def _normal_fan_avg_(model: nn.Module, seed: int) -> None:
    """W, b and fixed random B ~ N(0, 1/(fan_in + fan_out)), as in Akrout et al.'s official code (fans as
    Glorot counts them: a convolution's are its channels times the kernel's size, in any dimension and for
    transposed ones too, whose fan-in and fan-out sum the same; `_fans`)."""
    g = torch.Generator().manual_seed(seed)
    for m in _weight_layers(model):
        fan_in, fan_out = _fans(m)
        std = (fan_in + fan_out) ** -0.5
        tensors = [m.weight, m.bias]
        if is_rule_layer(m):  # a converted layer: the random feedback its rule lets an init redraw
            tensors += m.rule.feedback_tensors(m)
        for t in tensors:
            if t is not None:
                t.copy_(torch.randn(t.shape, generator=g) * std)
