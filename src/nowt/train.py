"""One training loop for every rule.

A *learner* owns what one batch does: `RuleLearner` for the per-layer rules and DFA (forward, backward
through the rule, optimizer step, the weight mirror's mirror step), `nowt.targetprop.TargetPropTrainer` for
tp/dtp/sdtp/ao-sdtp. The loop around it is shared: batches, evaluation, metrics (JSON lines and TensorBoard),
an atomic checkpoint every epoch that `resume=True` continues from to the numbers of an unbroken run, and a
clean stop on divergence that keeps the last good checkpoint.

The pieces are small functions so that a distributed run can swap them: `make_loader` (a DistributedSampler),
`build_model` (a DDP wrapper around the result), `RuleLearner.train_step` (the step).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

import nowt
from nowt import distributed
from nowt.checkpoint import load_checkpoint, save_checkpoint
from nowt.metrics import backprop_mode, evaluate
from nowt.rules import WholeNetworkRule, rule_class

#: TrainConfig fields passed to the rule as options when its class declares one of that name.
_RULE_OPTIONS = ("mirror_steps", "mirror_warmup")
#: Config fields that say where and how fast a run goes, not what it computes: a resume may change them.
_NOT_IDENTITY = ("out_dir", "data_dir", "download", "device", "num_workers")


@dataclass
class TrainConfig:
    rule: str = "fa"
    model: str = "mlp"
    hidden: tuple[int, ...] = (1000,)
    activation: str = "relu"
    dropout: float = 0.0
    init: str = "default"  # or "normal_fan_avg": W, b and B ~ N(0, 1/(fan_in + fan_out)) (Akrout et al.)
    loss: str = "ce"  # "ce": softmax cross-entropy; "bce": sigmoid cross-entropy on one-hot targets
    epochs: int = 5
    batch_size: int = 32
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_schedule: str = "cosine"  # cosine (to 0, per batch) | constant | step (x0.1 at 1/3 and 2/3 of the run)
    seed: int = 0
    deterministic: bool = False
    amp: str = "off"  # "bf16": forward and backward under torch.autocast in bfloat16 (weights stay fp32)
    channels_last: bool = False  # NHWC memory format for the model and image batches (faster convs on GPU)
    mirror_steps: int = 1  # wm: mirror steps after every 2nd optimizer step, noise batch 1/4 of the batch
    mirror_warmup: int = 300  # wm: mirror steps before training, noise batch 256
    schedule: str = "parallel"  # target propagation: parallel | alternating
    noise_pretrain: int = 0  # steps of random-noise pretraining (nowt.pretrain_noise) before training
    dataset: str = "mnist"  # used when fit() is given no data
    train_size: int | None = None  # keep only the first n training examples
    augment: bool = False
    data_dir: str | None = None
    download: bool = False
    device: str = "cpu"
    num_workers: int = 0
    out_dir: str | None = None
    extra: dict = field(default_factory=dict)


class TensorLoader:
    """Shuffled mini-batches of in-memory tensors, with a generator whose state is checkpointed."""

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, shuffle: bool = False, seed: int = 0):
        if len(x) != len(y):
            raise ValueError(f"inputs and targets differ in length: {len(x)} vs {len(y)}")
        self.x, self.y, self.batch_size, self.shuffle = x, y, batch_size, shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = torch.randperm(len(self.x), generator=self.generator) if self.shuffle else None
        for i in range(0, len(self.x), self.batch_size):
            idx = order[i:i + self.batch_size] if order is not None else slice(i, i + self.batch_size)
            yield self.x[idx], self.y[idx]


def make_loader(data: tuple[Tensor, Tensor] | Dataset, batch_size: int, *, shuffle: bool = False,
                seed: int = 0, num_workers: int = 0) -> TensorLoader | DataLoader:
    """Tensors batch themselves (fast); a Dataset goes through a DataLoader. Both shuffle with a generator
    of their own (`.generator`), whose state the checkpoint keeps."""
    if isinstance(data, tuple):
        return TensorLoader(*data, batch_size, shuffle=shuffle, seed=seed)
    return DataLoader(data, batch_size, shuffle=shuffle, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(seed), persistent_workers=False)


def make_optimizer(name: str, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0):
    name = name.lower()
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose sgd, adam, adamw or rmsprop")


def make_scheduler(name: str, optimizer, total_steps: int):
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))
    if name == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    if name == "step":
        milestones = [total_steps // 3, 2 * total_steps // 3]
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)
    raise ValueError(f"unknown lr schedule {name!r}; choose cosine, constant or step")


def make_loss(name: str):
    if name == "ce":
        return F.cross_entropy
    if name == "bce":  # Akrout et al.: a sigmoid per class against the one-hot target, summed over classes
        return lambda out, y: F.binary_cross_entropy_with_logits(
            out, F.one_hot(y, out.shape[1]).to(out.dtype), reduction="sum") / len(y)
    raise ValueError(f"unknown loss {name!r}; choose ce or bce")


def model_factories() -> dict[str, Any]:
    """Every model by name: `nowt.models`' registry and the target-propagation networks of Bartunov et al."""
    from nowt.targetprop.networks import NETWORKS

    return {**nowt.models._MODELS, **NETWORKS}


def build_model(cfg: TrainConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """`cfg.model` for inputs of `input_shape`, initialised from `cfg.seed`, converted to `cfg.rule` (target
    propagation trains the plain network itself)."""
    torch.manual_seed(cfg.seed)
    factory = model_factories().get(cfg.model)
    if factory is None:
        raise ValueError(f"unknown model {cfg.model!r}; known models: {', '.join(model_factories())}")
    offered = dict(in_features=math.prod(input_shape), hidden=cfg.hidden, activation=cfg.activation,
                   dropout=cfg.dropout, num_classes=num_classes, in_channels=input_shape[0],
                   image_size=input_shape[-1], input_shape=input_shape)
    accepted = inspect.signature(factory).parameters
    if cfg.dropout and "dropout" not in accepted:
        raise ValueError(f"model {cfg.model!r} has no dropout option")
    model = factory(**{k: v for k, v in offered.items() if k in accepted})
    rule = rule_class(cfg.rule)
    if not issubclass(rule, WholeNetworkRule):
        options = {k: getattr(cfg, k) for k in _RULE_OPTIONS if k in rule.options}
        model = nowt.convert(model, cfg.rule, seed=cfg.seed, **options)
    if cfg.init == "normal_fan_avg":
        _normal_fan_avg_(model, cfg.seed)
    elif cfg.init != "default":
        raise ValueError(f"unknown init {cfg.init!r}; choose default or normal_fan_avg")
    model = model.to(cfg.device)
    return model.to(memory_format=torch.channels_last) if cfg.channels_last else model


@torch.no_grad()
def _normal_fan_avg_(model: nn.Module, seed: int) -> None:
    """W, b and fixed random B ~ N(0, 1/(fan_in + fan_out)), as in Akrout et al.'s official code."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.Linear | nn.Conv2d):
            fan_out, fan_in = m.weight.shape[0], m.weight[0].numel()
            std = (fan_in + fan_out) ** -0.5
            tensors = [m.weight, m.bias]
            if isinstance(m, nowt.FeedbackLayer):
                tensors += m.rule.feedback_tensors(m)
            for t in tensors:
                if t is not None:
                    t.copy_(torch.randn(t.shape, generator=g) * std)


class Learner(Protocol):
    """What the loop needs from whatever trains the network one batch at a time."""

    model: nn.Module

    def train_step(self, x: Tensor, y: Tensor) -> dict[str, Any]: ...  # {"loss": float, "output": logits}
    def end_epoch(self) -> None: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class RuleLearner:
    """Per-layer rules and DFA: the rule acts inside autograd, so a step is the usual forward, backward and
    optimizer step, followed by each rule's `after_step` hook (weight mirrors: the mirror-mode step)."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, steps_per_epoch: int):
        self.model, self.loss_fn = model, make_loss(cfg.loss)
        self.net = distributed.wrap(model, torch.device(cfg.device))  # DDP under torchrun, else the model
        if cfg.amp not in ("off", "bf16"):
            raise ValueError(f"unknown amp {cfg.amp!r}; choose off or bf16")
        self.autocast = dict(device_type=torch.device(cfg.device).type, dtype=torch.bfloat16,
                             enabled=cfg.amp == "bf16")
        self.channels_last = cfg.channels_last
        self.optimizer = make_optimizer(cfg.optimizer, model.parameters(), cfg.lr, cfg.momentum,
                                        cfg.weight_decay)
        self.scheduler = make_scheduler(cfg.lr_schedule, self.optimizer, cfg.epochs * steps_per_epoch)
        self.rules = nowt.feedback_rules(model)

    def train_step(self, x: Tensor, y: Tensor) -> dict[str, Any]:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(**self.autocast):
            out = self.net(x)
            loss = self.loss_fn(out.float(), y)
        mean_loss = distributed.global_mean(loss)  # every rank stops on a NaN on any rank
        if torch.isfinite(mean_loss):  # a diverged step is not taken; the loop stops on its loss
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            # the scheduler's step count is checkpointed, so a resumed run calls with the same numbers
            for rule in self.rules:
                rule.after_step(self.model, self.scheduler.last_epoch)
        return {"loss": mean_loss.item(), "output": out.detach()}

    def end_epoch(self) -> None:
        """Nothing changes at epoch ends for per-layer rules (target propagation switches phases there)."""

    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


def make_learner(cfg: TrainConfig, model: nn.Module, steps_per_epoch: int) -> Learner:
    """The one place that decides how a rule trains: target propagation or a per-layer rule (DFA included)."""
    rule = rule_class(cfg.rule)
    if issubclass(rule, WholeNetworkRule):
        # Target propagation trains with its own Adam optimizers and layer losses: refuse what it ignores.
        ignored = [flag for flag, off in (("--loss bce", cfg.loss == "ce"), ("--amp", cfg.amp == "off"),
                                          ("--channels-last", not cfg.channels_last),
                                          ("--weight-decay", cfg.weight_decay == 0)) if not off]
        if ignored:
            raise ValueError(f"rule {cfg.rule!r} (target propagation) does not support {', '.join(ignored)}; "
                             "it trains with Adam at --lr on its own layer-local losses")
        return rule.learner(model, lr=cfg.lr, seed=cfg.seed, schedule=cfg.schedule)
    return RuleLearner(model, cfg, steps_per_epoch)


def _noise_pretrain(cfg: TrainConfig, model: nn.Module, input_shape: tuple[int, ...]) -> None:
    from nowt.noise import pretrain_noise

    if issubclass(rule_class(cfg.rule), WholeNetworkRule):  # its plain network would learn by backprop
        raise ValueError(f"--noise-pretrain needs a per-layer rule or DFA, not {cfg.rule!r}")
    pretrain_noise(model, input_shape, steps=cfg.noise_pretrain, batch_size=cfg.batch_size, seed=cfg.seed,
                   progress=False)


@torch.no_grad()
def _probe_forward(model: nn.Module, x: Tensor) -> None:
    """One forward pass that only shows each layer a training batch's shape (a weight mirror's noise has it):
    eval mode and plain ops, so no batch-norm statistic, dropout mask or rule state (brsf draws) moves."""
    was_training = model.training
    model.eval()
    try:
        with backprop_mode(model):
            model(x)
    finally:
        model.train(was_training)


def _probe_batch(test, n: int = 256) -> tuple[Tensor, Tensor]:
    """A fixed batch (the first test examples) on which update angles are measured every epoch."""
    if isinstance(test, tuple):
        return test[0][:n], test[1][:n]
    items = [test[i] for i in range(min(n, len(test)))]
    return torch.stack([x for x, _ in items]), torch.as_tensor([y for _, y in items])


@contextlib.contextmanager
def _deterministic(on: bool) -> Iterator[None]:
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(on or before)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tensorboard(out: Path | None):
    if out is None:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: metrics.jsonl alone
        return None
    return SummaryWriter(str(out / "tensorboard"))


def _num_classes(train, test) -> int:
    if isinstance(train, tuple):
        return int(torch.cat([train[1], test[1]]).max()) + 1
    base = getattr(train, "dataset", train)  # a Subset's classes are its dataset's
    if hasattr(base, "classes"):
        return len(base.classes)
    raise ValueError("cannot tell the number of classes of this Dataset: give it a `classes` attribute")


def fit(cfg: TrainConfig, train=None, test=None, *, resume: bool = False,
        progress: bool = True) -> list[dict]:
    """Trains `cfg.model` with `cfg.rule`; returns one metrics dict per epoch.

    `train`/`test`: (inputs, labels) tensors or Datasets; None loads `cfg.dataset`. With `cfg.out_dir`,
    writes `config.json`, `metrics.jsonl` and `checkpoint.pt` there after every epoch; `resume=True`
    continues from that checkpoint and ends with the numbers an unbroken run would have.
    """
    if train is None or test is None:
        from nowt.data import load_dataset

        data = load_dataset(cfg.dataset, root=cfg.data_dir, download=cfg.download, augment=cfg.augment,
                            train_size=cfg.train_size)
        train, test = data.train, data.test
    if distributed.launched_by_torchrun():
        device = distributed.setup()
        if device.type == "cuda":
            cfg.device = str(device)
        progress = progress and distributed.world()[0] == 0
    with _deterministic(cfg.deterministic):
        return _fit(cfg, train, test, resume, progress)


def _fit(cfg: TrainConfig, train, test, resume: bool, progress: bool) -> list[dict]:
    train_loader = make_loader(train, cfg.batch_size, shuffle=True, seed=cfg.seed,
                               num_workers=cfg.num_workers)
    test_loader = make_loader(test, 1000 if isinstance(test, tuple) else cfg.batch_size,
                              num_workers=cfg.num_workers)
    if len(test if not isinstance(test, tuple) else test[1]) == 0:
        raise ValueError("the test set is empty")
    probe_x, probe_y = (t.to(cfg.device) for t in _probe_batch(test))
    input_shape = tuple(probe_x.shape[1:])
    model = build_model(cfg, input_shape, _num_classes(train, test))
    out = Path(cfg.out_dir) if cfg.out_dir else None
    writes = out is not None and distributed.world()[0] == 0  # under torchrun, rank 0 alone writes
    checkpoint = out / "checkpoint.pt" if out else None
    resuming = resume and checkpoint is not None and checkpoint.exists()
    if cfg.noise_pretrain and not resuming:
        _noise_pretrain(cfg, model, input_shape)
    learner = make_learner(cfg, model, len(train_loader))
    loss_fn = make_loss(cfg.loss)
    history: list[dict] = []
    if resuming:
        state = load_checkpoint(checkpoint)
        if state["config"] != _config_dict(cfg):
            raise ValueError(f"checkpoint in {out} was made with another configuration; use a new --out")
        model.load_state_dict(state["model"])
        learner.load_state_dict(state["learner"])
        train_loader.generator.set_state(state["loader_rng"])
        _set_rng_state(state["rng"])
        history = state["history"]
    elif rules := nowt.feedback_rules(model):
        _probe_forward(model, probe_x[:cfg.batch_size])
        for rule in rules:
            rule.begin_training(model, cfg.batch_size)
    if writes:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=1) + "\n")
    writer = _tensorboard(out) if writes else None
    has_feedback = bool(nowt.feedback_layers(model))  # none in target propagation's plain networks
    for epoch in range(len(history), cfg.epochs):
        t0 = time.perf_counter()
        train_metrics = train_epoch(learner, train_loader, f"{cfg.rule} epoch {epoch + 1}/{cfg.epochs}",
                                    cfg.device, progress)
        learner.end_epoch()
        test_metrics = evaluate(model, test_loader, loss_fn, cfg.device)
        record = {
            "epoch": epoch + 1, **train_metrics,
            **{f"test_{k}": v for k, v in test_metrics.items()},
            "lr": learner.lr() if hasattr(learner, "lr") else cfg.lr,
            "weight_angles": nowt.weight_angles(model) if has_feedback else {},
            "update_angles": nowt.update_angles(model, loss_fn, probe_x, probe_y) if has_feedback else {},
            "seconds": time.perf_counter() - t0,
        }
        history.append(record)
        if progress:
            tqdm.write(f"epoch {epoch + 1}: train loss {record['train_loss']:.4f}, "
                       f"test accuracy {record['test_accuracy']:.2f}% ({record['seconds']:.1f}s)")
        if writes:
            save_checkpoint(checkpoint, {
                "config": _config_dict(cfg), "epoch": epoch + 1, "model": model.state_dict(),
                "learner": learner.state_dict(), "loader_rng": train_loader.generator.get_state(),
                "rng": _rng_state(), "history": history,
            })
            # Rewritten whole from the checkpointed history, so a resumed run never logs an epoch twice.
            (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
        if writer:
            _log_tensorboard(writer, record)
    if writer:
        writer.close()
    return history


def train_epoch(learner: Learner, loader, desc: str, device: str, progress: bool) -> dict[str, float]:
    """One pass over `loader`; stops with FloatingPointError on a NaN or infinite loss."""
    seen, loss_sum, correct, t0 = 0, 0.0, 0.0, time.perf_counter()
    bar = tqdm(loader, desc=desc, disable=not progress, leave=False)
    for x, y in bar:
        x, y = distributed.shard(x, y)  # under torchrun each rank takes its slice of the global batch
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        step = learner.train_step(x, y)
        if not math.isfinite(step["loss"]):
            raise FloatingPointError(f"loss became {step['loss']} in {desc}; lower --lr "
                                     "(the last good checkpoint is kept)")
        seen += len(y)
        loss_sum += step["loss"] * len(y)
        if "output" in step:  # logits of the batch before the update
            correct += int((step["output"].argmax(1) == y).sum())
        else:  # target propagation reports the batch's accuracy (%) before the update instead
            correct += step["accuracy"] * len(y) / 100
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{100 * correct / seen:.2f}%",
                        ex_s=f"{seen / (time.perf_counter() - t0):.0f}", refresh=False)
    # under torchrun: sums over every rank's slices (each step's loss is already the mean over ranks)
    seen, loss_sum, correct = distributed.all_reduce_sum_(torch.tensor([seen, loss_sum, correct],
                                                                       dtype=torch.float64)).tolist()
    return {"train_loss": loss_sum / seen, "train_accuracy": 100.0 * correct / seen}


def _log_tensorboard(writer, record: dict) -> None:
    step = record["epoch"]
    for key, value in record.items():
        if isinstance(value, float):
            writer.add_scalar(key, value, step)
        elif isinstance(value, dict):
            for layer, v in value.items():
                writer.add_scalar(f"{key}/{layer}", v, step)


def _config_dict(cfg: TrainConfig) -> dict:
    d = asdict(cfg)
    for key in _NOT_IDENTITY:
        d.pop(key)
    d["hidden"] = list(d["hidden"])
    return d
