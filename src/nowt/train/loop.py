"""The training loop shared by every rule: batches, evaluation, metrics (JSON lines and TensorBoard), an
atomic checkpoint every epoch that `resume=True` continues from to the numbers of an unbroken run, and a
clean stop on divergence that keeps the last good checkpoint.

The loop does not read the device every step: losses and accuracies add up on the device and are read,
and checked for NaN, once every LOG_EVERY steps and at the end of each epoch (before any checkpoint).
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
import warnings
from collections.abc import Iterable, Iterator, Sized
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from nowt import distributed, noise
from nowt.checkpoint import load_checkpoint, save_checkpoint
from nowt.data.registry import first_examples, holdout, num_classes, probe_batch
from nowt.inventory import summary
from nowt.metrics import as_tokens, evaluate, output_collapsed
from nowt.optim import HalveOnPlateau
from nowt.progress import progress_bar
from nowt.train import ranks, rundir
from nowt.train.config import TrainConfig, read_saved_config
from nowt.train.datacheck import check_data
from nowt.train.factories import build_model, load_data, make_loader, make_loss, sized
from nowt.train.kinds import LearnerKind, learner_kind
from nowt.train.learners import Learner, make_learner

#: What a run's checkpoint holds (`_write_epoch`); a resume refuses a file without any of them.
RUN_STATE = ("config", "epoch", "model", "learner", "loader_rng", "rng", "history")
#: Steps between reads of the running loss (progress bar, NaN check); every epoch end is read too.
LOG_EVERY = 50


def fit(cfg: TrainConfig, train=None, test=None, *, resume: bool = False, overwrite: bool = False,
        progress: bool = True, data_from_cfg: bool = False) -> list[dict]:
    """Trains `cfg.model` with `cfg.rule`; returns one metrics dict per epoch.

    `train`/`test`: (inputs, labels) tensors or Datasets, both or neither; neither loads `cfg.dataset`. Data
    given is used as it is, so cfg's data fields (`DATA_FIELDS`) must be at their defaults, unless
    `data_from_cfg` says it was loaded by them (`load_data(cfg)`, or parts of it). With `cfg.out_dir`,
    writes `config.json`, `metrics.jsonl` and `checkpoint.pt` there after every epoch; `resume=True`
    continues from that checkpoint and ends with the numbers an unbroken run would have. The directory is
    locked while the run writes there, and an earlier run in it is refused unless `resume` (continue it:
    same configuration) or `overwrite` (replace it) says what to do with it (see `rundir.claim`).
    """
    cfg.validate()
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other: continue the run in --out, or "
                         "replace it")
    if (train is None) != (test is None):
        raise ValueError("fit() takes both train and test data, or neither (then cfg.dataset is loaded)")
    if not data_from_cfg and train is not None:
        cfg.check_given_data()
    if train is None or test is None:
        with sized(f"loading {cfg.dataset} (--image-size {cfg.image_size}, --train-size {cfg.train_size})"):
            data = load_data(cfg)
        train, test = data.train, data.test
    check_data(train, test)  # an empty part, labels that are no class indices, train and test unlike
    validation = None
    if cfg.validation:  # held out of what trains, so an epoch is chosen without the test set
        train, validation = holdout(train, cfg.validation, "--validation")
    if distributed.launched_by_torchrun():
        device = distributed.setup()
        if device.type == "cuda":
            cfg.device = str(device)
        progress = progress and distributed.world()[0] == 0
    owns_dir = cfg.out_dir is not None and distributed.world()[0] == 0  # rank 0 alone writes
    claim = (rundir.claim(Path(cfg.out_dir), cfg, resume=resume, overwrite=overwrite)
             if owns_dir and cfg.out_dir is not None else None)
    try:
        with _deterministic(cfg.deterministic), contextlib.ExitStack() as stack:
            try:
                stack.enter_context(claim or contextlib.nullcontext())
            except BaseException:
                distributed.agree(False)  # the other ranks end with a line, not in their first collective
                raise
            if not distributed.agree(True):
                raise ValueError(f"rank 0 refused the run directory {cfg.out_dir} (--out): see its error")
            return _fit(cfg, train, test, validation, resume, progress)
    except Exception as e:
        if "in DataLoader worker process" in str(e).split("\n", 1)[0]:
            raise _from_worker(e) from None
        if isinstance(e, RuntimeError | torch.distributed.DistError) and distributed.launched_by_torchrun() \
                and "timed out" in str(e).lower():
            raise TimeoutError(distributed.timeout_message()) from e
        raise


def _from_worker(e: Exception) -> Exception:
    """A DataLoader worker's error as its own last line: torch puts the worker's whole traceback in the
    message ("Caught ValueError in DataLoader worker process 0. Original Traceback ...")."""
    first, *_, last = str(e).strip().splitlines()
    where = first.removeprefix("Caught ").rstrip(".").split(" in ", 1)[-1]
    return type(e)(f"{last.split(': ', 1)[-1]} (in {where})")


def _fit(cfg: TrainConfig, train, test, validation, resume: bool, progress: bool) -> list[dict]:
    train_loader = make_loader(train, cfg.batch_size, shuffle=cfg.shuffle, seed=cfg.seed,
                               num_workers=cfg.num_workers, drop_last=cfg.drop_last)
    test_loader, val_loader = (make_loader(part, 1000 if isinstance(part, tuple) else cfg.batch_size,
                                           num_workers=cfg.num_workers) if part is not None else None
                               for part in (test, validation))
    probe_x, probe_y = (t.to(cfg.device) for t in probe_batch(test))  # class-balanced
    first_x, first_y = (t.to(cfg.device) for t in first_examples(test, 256))  # as saved checkpoints
    data_print = rundir.data_fingerprint(train, test, first_x, first_y)  # (--data-dir is no identity)
    input_shape = tuple(probe_x.shape[1:])
    kind = learner_kind(cfg.rule)  # per-layer or whole-network: decided once, asked of `kind` from here on
    with sized(f"building model {cfg.model} for inputs {input_shape} (--hidden {_shown(cfg.hidden)})"):
        model = build_model(cfg, input_shape, num_classes(train, test), kind, probe_x.cpu())
    out = Path(cfg.out_dir) if cfg.out_dir else None
    rank0 = distributed.world()[0] == 0
    if rank0 and progress and kind.converts_model:  # each layer's rule and what its backward reads
        summary(model)
    writes = out is not None and rank0  # under torchrun, rank 0 alone writes
    checkpoint = out / "checkpoint.pt" if out else None
    resuming = ranks.agree_on_resume(resume, checkpoint)
    if resume and not resuming and rank0:  # a mistyped --out must not pass for a continued run
        print(f"nothing to resume in {out}: no checkpoint.pt there; starting a fresh run", file=sys.stderr)
    if cfg.noise_pretrain and not resuming:
        _noise_pretrain(cfg, model, input_shape, kind)
    learner = make_learner(cfg, model, len(train_loader), kind)
    loss_fn = make_loss(cfg.loss)
    history: list[dict] = []
    if resuming and checkpoint is not None:
        state = load_checkpoint(checkpoint, RUN_STATE)
        cfg.check_resumes(state["config"], out, dataset=not isinstance(train, tuple))
        ranks.check_world_size(state.get("world_size"), model, out)
        rundir.check_same_data(out, state.get("data"), data_print)
        model.load_state_dict(state["model"])
        learner.load_state_dict(state["learner"])
        train_loader.generator.set_state(state["loader_rng"])
        _set_rng_state(state["rng"])
        history = state["history"]
        if len(history) > cfg.epochs:
            raise ValueError(f"the run in {out} has done {len(history)} epochs, more than --epochs "
                             f"{cfg.epochs}")
        # a kill between the checkpoint and the metrics write is healed from the checkpoint
        if writes and out is not None:
            _write_metrics(out, history)
    else:
        learner.begin_training(first_x[:cfg.batch_size])
    if writes and out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=1) + "\n")
    writer = rundir.tensorboard(out) if writes else None
    start = len(history)
    for epoch in range(start, cfg.epochs):
        if distributed.rank0_decides(learner.finished or out_of_patience(history, cfg.patience)):
            break  # the lr schedule or --patience has ended the run (rank 0's word: ranks must not part)
        # under torchrun, ranks > 0 draw their own dropout/noise from here on (rank 0 keeps its stream, which
        # the checkpoint saves; the others restart from (seed, rank, epoch), so a resume draws the same)
        distributed.seed_rank(cfg.seed, epoch)
        if writes and out is not None and epoch == start:  # a start that trains nothing adds no line
            rundir.record_start(out, epoch, cfg.device, data_print)
        t0 = time.perf_counter()
        try:
            with sized(f"training (--batch-size {cfg.batch_size})"):
                desc = f"{cfg.rule} epoch {epoch + 1}/{cfg.epochs}"
                train_metrics = train_epoch(learner, train_loader, desc, cfg.device, progress)
            learner.end_epoch(train_metrics)
            distributed.broadcast_buffers(model)  # every rank scores (and rank 0 saves) one model
            test_metrics = evaluate(model, test_loader, loss_fn, cfg.device)
            val_metrics = evaluate(model, val_loader, loss_fn, cfg.device) if val_loader is not None else {}
            _check_finite(model, test_metrics["loss"], f"the end of epoch {epoch + 1}")  # before a checkpoint
        except FloatingPointError as e:
            message = str(e)
            if checkpoint is not None:  # (none is written before the first epoch ends)
                message += (" (the last good checkpoint is kept)" if checkpoint.exists()
                            else " (no epoch had ended: no checkpoint)")
            if writes and out is not None:
                rundir.mark_diverged(out, epoch + 1, message)
            raise FloatingPointError(message) from None
        record = {
            "epoch": epoch + 1, **train_metrics,
            **{f"test_{k}": v for k, v in test_metrics.items()},
            **{f"val_{k}": v for k, v in val_metrics.items()},
            "lr": learner.lr(),
            **learner.measure(probe_x, probe_y),  # weight/update angles, the rule's own diagnostics
            "collapsed": len(probe_x) > 1 and output_collapsed(model, probe_x),
            "seconds": time.perf_counter() - t0,
        }
        if record["collapsed"] and not (history and history[-1].get("collapsed")) and rank0:
            warnings.warn(collapse_message(epoch + 1, len(probe_x)), RuntimeWarning, stacklevel=2)
        history.append(record)
        if progress:
            bpc = f"test bpc {record['test_bpc']:.3f}, " if "test_bpc" in record else ""
            tqdm.write(f"epoch {epoch + 1}: train loss {record['train_loss']:.4f}, {bpc}"
                       f"test accuracy {record['test_accuracy']:.2f}% ({record['seconds']:.1f}s)")
        if writes and out is not None:
            _write_epoch(out, cfg, epoch, model, learner, train_loader, history, data_print)
        if writer:
            rundir.log_tensorboard(writer, record)
    if writer:
        writer.close()
    return history


def evaluate_run(run_dir: str | Path, splits: Iterable[str] = ("train", "test"), *, device: str | None = None,
                 data_dir: str | None = None, progress: bool = False) -> tuple[int, dict[str, dict]]:
    """The model of `run_dir`'s last checkpoint scored on its dataset (`evaluate`'s loss, accuracy, top-1/5
    errors per split; the training split without augmentation or its --validation examples), with the epoch
    it was saved after; data other than the run trained on is refused. A run logs the running error of each
    training epoch; papers often report the training set scored after training, which this gives."""
    splits = list(splits)
    unknown = [s for s in splits if s not in ("train", "test")]
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; choose from: train, test")
    run = Path(run_dir)
    state = load_checkpoint(run / "checkpoint.pt", ("config", "epoch", "model"))
    saved = run / "config.json"  # the whole config (data_dir, device...); the checkpoint has its identity
    values = read_saved_config(saved) if saved.is_file() else dict(state["config"])
    values.update({k: v for k, v in (("device", device), ("data_dir", data_dir)) if v})
    cfg = TrainConfig.from_dict(values, source=str(saved))
    differences = cfg.identity_differences(state["config"])
    if differences:
        raise ValueError(f"{saved} does not describe the checkpoint in {run} (it differs in {differences})")
    if "test set" in cfg.extra:  # an --lr-grid run: trained without its held-out part, scored on it
        warnings.warn(f"{run} is a learning-rate grid run ({cfg.extra['test set']}); evaluate scores the "
                      f"whole training set (held-out part included) and the test set", stacklevel=2)
    cfg = replace(cfg, augment=False)
    data = load_data(cfg)
    train = holdout(data.train, cfg.validation, "--validation")[0] if cfg.validation else data.train
    if "test set" not in cfg.extra:  # the data it trained on (an --lr-grid run's split is warned of above)
        rundir.check_same_data(run, state.get("data"),
                               rundir.data_fingerprint(train, data.test, *first_examples(data.test, 256)))
    chosen = {"train": train, "test": data.test}
    input_shape = tuple(first_examples(data.test, 1)[0].shape[1:])
    model = build_model(cfg, input_shape, num_classes(data.train, data.test))
    model.load_state_dict(state["model"])
    loss_fn = make_loss(cfg.loss)
    scores = {}
    for split in splits:
        loader = make_loader(chosen[split], 1000 if isinstance(chosen[split], tuple) else cfg.batch_size,
                             num_workers=cfg.num_workers)
        batches = progress_bar(loader, f"{run} {split}", progress)
        scores[split] = evaluate(model, batches, loss_fn, cfg.device)
    return int(state["epoch"]), scores


def collapse_message(epoch: int, probes: int) -> str:
    return (f"epoch {epoch}: the model gives one and the same output for all {probes} probe inputs: its "
            "units no longer tell inputs apart (e.g. every ReLU of a layer is dead). A rule that sends error "
            "through the layers' derivatives cannot leave this state; try a lower learning rate or another "
            "seed.")


@torch.no_grad()
def out_of_patience(history: list[dict], patience: int | None) -> bool:
    """True when the best error so far is `patience` or more epochs old: the held-out error where the run
    logs one (--validation: the test set must not choose the run's length), else the test error."""
    if patience is None or not history:
        return False
    key = "val_top1_error" if "val_top1_error" in history[0] else "test_top1_error"
    errors = [r[key] for r in history]
    return len(errors) - 1 - errors.index(min(errors)) >= patience


def run_ended(history: list[dict], epochs: int, patience: int | None, lr_schedule: str) -> bool:
    """Whether a run with this log has ended: its epochs done, its patience out, or (the plateau schedule)
    its lr halvings spent, where the loop (`learner.finished`, `out_of_patience`) would have stopped it.
    Read from logs by the tables, so a run that stopped early by its own rule counts as finished and a
    killed one does not."""
    return len(history) >= epochs or out_of_patience(history, patience) or (
        lr_schedule == "plateau" and HalveOnPlateau.ended([1 - r["train_accuracy"] / 100 for r in history]))


def _write_epoch(out: Path, cfg: TrainConfig, epoch: int, model: nn.Module, learner: Learner,
                 train_loader, history: list[dict], data_print: dict[str, float]) -> None:
    save_checkpoint(out / "checkpoint.pt", {
        "config": cfg.identity(), "epoch": epoch + 1, "model": model.state_dict(),
        "learner": learner.state_dict(), "loader_rng": train_loader.generator.get_state(),
        "rng": _rng_state(), "history": history, "data": data_print, "world_size": distributed.world()[1],
    })
    _write_metrics(out, history)


def _write_metrics(out: Path, history: list[dict]) -> None:
    """Rewritten whole from the checkpointed history, so a resumed run never logs an epoch twice."""
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))


def train_epoch(learner: Learner, loader: Iterable, desc: str, device: str,
                progress: bool) -> dict[str, float]:
    """One pass over `loader`; stops with FloatingPointError on a NaN or infinite loss. Sums stay on the
    device and are read every LOG_EVERY steps and at the end, so a step does not wait for the device."""
    dev = torch.device(device)
    seen, t0 = 0, time.perf_counter()
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
    correct = torch.zeros((), dtype=torch.float64, device=dev)
    inverse_sum, inverse_seen = 0.0, 0  # target propagation's inverse loss, on the steps that trained them
    # under torchrun each rank trains on its part of the global batch
    bar = progress_bar(distributed.rank_batches(loader), desc, progress,
                       total=len(loader) if isinstance(loader, Sized) else None)
    for i, (x, y) in enumerate(bar, 1):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        step = learner.train_step(x, y)
        seen += len(y)
        loss_sum += step["loss"] * len(y)
        if "output" in step:  # logits of the batch before the update (a sequence's: per token)
            out, tokens = as_tokens(step["output"], y)
            if len(tokens):  # a rank's empty shard (a last batch smaller than the world) scores nothing
                correct += (out.argmax(1) == tokens).sum() * (len(y) / len(tokens))
        else:  # target propagation reports the batch's accuracy (%) before the update instead
            correct += step["accuracy"] * len(y) / 100
            if math.isfinite(step.get("inverse_loss", math.nan)):  # (nan: a forward-only step)
                inverse_sum, inverse_seen = inverse_sum + step["inverse_loss"] * len(y), inverse_seen + len(y)
        if i % LOG_EVERY == 0:
            # a rank whose shards were all empty (a batch smaller than the world) has seen nothing yet
            loss = _finite_mean(loss_sum, max(seen, 1), f"step {i} of {desc}")
            if progress:
                bar.set_postfix(loss=f"{loss:.4f}", acc=f"{100 * float(correct) / max(seen, 1):.2f}%",
                                ex_s=f"{seen / (time.perf_counter() - t0):.0f}", refresh=False)
    _finite_mean(loss_sum, max(seen, 1), desc)
    # under torchrun: sums over every rank's slices (each step's loss is already the mean over ranks)
    totals = torch.tensor([seen, float(loss_sum), float(correct), inverse_sum, inverse_seen],
                          dtype=torch.float64)
    seen, total_loss, total_correct, inverse_sum, inverse_seen = distributed.all_reduce_sum_(totals).tolist()
    inverse = {"train_inverse_loss": inverse_sum / inverse_seen} if inverse_seen else {}
    return {"train_loss": total_loss / seen, "train_accuracy": 100.0 * total_correct / seen, **inverse}


def _finite_mean(loss_sum: Tensor, seen: int, where: str) -> float:
    """The mean loss so far, read from the device; any non-finite step makes the sum non-finite."""
    mean = float(loss_sum) / seen
    if not math.isfinite(mean):
        raise FloatingPointError(_diverged(f"loss became {mean}", where))
    return mean


def _check_finite(model: nn.Module, test_loss: float, where: str) -> None:
    """The same stop as `_finite_mean` for what the training loss cannot show: a step's update that made a
    weight (or buffer) non-finite after its loss was taken, seen in the test loss or in the tensors."""
    if not math.isfinite(test_loss):
        raise FloatingPointError(_diverged(f"test loss became {test_loss}", where))
    tensors = {n: t for n, t in model.state_dict().items() if t.is_floating_point()}
    if tensors and not bool(torch.stack([t.isfinite().all() for t in tensors.values()]).all()):  # one read
        bad = next(n for n, t in tensors.items() if not t.isfinite().all())
        raise FloatingPointError(_diverged(f"{bad} became non-finite", where))


def _diverged(what: str, where: str) -> str:
    return f"the run diverged: {what} by {where}; lower --lr"


def _noise_pretrain(cfg: TrainConfig, model: nn.Module, input_shape: tuple[int, ...],
                    kind: LearnerKind) -> None:
    if not kind.pretrains_on_noise:  # the plain network would be pretrained by backprop
        raise ValueError(f"--noise-pretrain needs a per-layer rule or DFA, not {cfg.rule!r}")
    with distributed.alone():  # as one process: every rank pretrains alike, before DDP, with no collective
        noise.pretrain_noise(model, input_shape, steps=cfg.noise_pretrain, batch_size=cfg.batch_size,
                             seed=cfg.seed, progress=False)


@contextlib.contextmanager
def _deterministic(on: bool) -> Iterator[None]:
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(on or before)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def _rng_state() -> dict[str, Any]:
    """torch's global RNG (CPU and every GPU): dropout and augmentation draws resume where they were."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
