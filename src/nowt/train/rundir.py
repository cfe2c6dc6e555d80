"""A run directory belongs to one run: an exclusive lock while a run writes there, and a refusal to start a
different configuration, or to start again, on top of an earlier run's files unless asked to.

`--overwrite` moves the earlier run's files aside (into `.overwritten/`) and deletes them only once the new
run has written its first checkpoint (or diverged: that ends it too); a new run that fails otherwise (or is
killed) before that gets them back, at its end or at the next claim of the directory.

Beside the checkpoint and metrics the loop writes here `provenance.jsonl` (the code, machine and world size
of every start) and TensorBoard logs."""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

from nowt import distributed, provenance
from nowt.train.config import NOT_IDENTITY, TrainConfig, read_saved_config

#: What a run writes into its directory (`--overwrite` replaces them).
DIVERGED = "diverged.json"  # a run that ended by diverging: where and how (its last good epoch is kept)
RUN_FILES = ("checkpoint.pt", "metrics.jsonl", "config.json", "tensorboard", DIVERGED, "provenance.jsonl")
ASIDE = ".overwritten"  # the earlier run's files while its replacement has no checkpoint yet


def mark_diverged(out: Path, epoch: int, message: str) -> None:
    """Records that the run in `out` diverged in `epoch` (1-based): the run has ended, and a table reading
    the directory must say so rather than take it for a run still to finish."""
    tmp = out / f"{DIVERGED}.tmp"
    tmp.write_text(json.dumps({"epoch": epoch, "message": message}) + "\n")
    os.replace(tmp, out / DIVERGED)


def divergence(out: Path) -> dict | None:
    """{"epoch", "message"} of the run in `out` if it diverged, else None."""
    path = out / DIVERGED
    return json.loads(path.read_text()) if path.is_file() else None


@contextlib.contextmanager
def claim(out: Path, cfg: TrainConfig, *, resume: bool, overwrite: bool) -> Iterator[None]:
    """Holds `out/.lock` for the whole run (a second run there is refused at once, naming the first one's
    pid) and checks that `out` holds no other run: one of another configuration is refused unless
    `overwrite`, one of the same configuration unless `resume` (continue it) or `overwrite` (start again)."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            raise ValueError(f"run directory {out} is in use by another run (pid {holder}); wait for it to "
                             f"end or choose another --out") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        try:
            _settle(out)  # a replacement killed before its first checkpoint: the earlier run comes back
            _check_owner(out, cfg, resume=resume, overwrite=overwrite)
            try:
                yield
            finally:
                _settle(out)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _settle(out: Path) -> None:
    """Ends a replacement: the files set aside are deleted once the new run has a checkpoint, else they
    are restored in place of whatever the new run wrote."""
    aside = out / ASIDE
    if not aside.is_dir():
        return
    # a new run that diverged before its first checkpoint has ended too: its marker stays, not the old run
    if not (out / "checkpoint.pt").exists() and not (out / DIVERGED).exists():
        for name in RUN_FILES:  # the new run's files go, the earlier run's come back
            _remove(out / name)
            if (aside / name).exists():
                os.replace(aside / name, out / name)
    shutil.rmtree(aside)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _check_owner(out: Path, cfg: TrainConfig, *, resume: bool, overwrite: bool) -> None:
    config = out / "config.json"
    if overwrite:  # set aside, not deleted: kept until the new run has a checkpoint
        (out / ASIDE).mkdir()
        for name in RUN_FILES:
            if (out / name).exists() or (out / name).is_symlink():
                os.replace(out / name, out / ASIDE / name)
        return
    if (diverged := divergence(out)) is not None:  # resuming would replay the steps that diverged
        raise ValueError(f"the run in {out} diverged in epoch {diverged['epoch']} ({diverged['message']}); "
                         f"it has ended: pass --overwrite to start again, or choose another --out")
    if not config.exists():
        return
    try:
        earlier = {k: v for k, v in read_saved_config(config).items() if k not in NOT_IDENTITY}
    except ValueError as e:
        raise ValueError(f"run directory {out}: {e}; choose another --out or pass --overwrite") from None
    differ = cfg.identity_differences(earlier)
    if differ:
        why = ""
        if "epochs" in differ:
            why = (f" (the {cfg.lr_schedule} schedule is laid over all epochs, so a run under it cannot be "
                   f"lengthened; constant, plateau or step with --lr-milestones can be)")
        raise ValueError(f"run directory {out} holds a run of another configuration (it differs in "
                         f"{', '.join(differ)}){why}; choose another --out, or pass --overwrite to replace "
                         f"it")
    if (out / "checkpoint.pt").exists():
        if not resume:
            raise ValueError(f"run directory {out} holds an earlier run of this configuration; pass --resume "
                             f"to continue it or --overwrite to start again")
        return
    metrics = out / "metrics.jsonl"
    if metrics.is_file() and metrics.read_text().strip():
        # starting afresh (resumed or not) would rewrite metrics.jsonl: its recorded epochs lost unasked
        epochs = len(metrics.read_text().splitlines())
        raise ValueError(f"run directory {out} records {epochs} epochs in metrics.jsonl but has no "
                         f"checkpoint.pt{' to continue from' if resume else ''} (checkpoints are kept out "
                         f"of git: was the folder copied without it?); pass --overwrite to start again (the "
                         f"earlier files are kept until its first checkpoint), or move the folder away")


def data_fingerprint(train, test, probe_x: Tensor, probe_y: Tensor) -> dict[str, float]:
    """What tells one data set from another at a glance: the sizes of its splits, sums over the probe
    batch (the first test examples) and, where they can be read without loading (or augmenting) an image,
    the training set's: a checksum of its labels in order and the sum of its first inputs. A checkpoint keeps
    it: `--data-dir` is no part of a run's identity (the same data lies in different folders on different
    machines), the data is."""
    return {"train": len(train[1]) if isinstance(train, tuple) else len(train),
            "test": len(test[1]) if isinstance(test, tuple) else len(test),
            "inputs": float(probe_x.double().sum()), "labels": float(probe_y.double().sum()),
            **_training_fingerprint(train)}


def _training_fingerprint(train) -> dict[str, float]:
    """The training set's part of `data_fingerprint`: `train_labels`, the labels weighted by their position
    (an exact integer in a double), and `train_inputs`, the sum of the first 256 inputs, each where it is
    cheap: tensors, and the Datasets `load_dataset` makes (an image folder's inputs are not read)."""
    from nowt.data.registry import TransformDataset, dataset_labels, flat_subset

    found: dict[str, float] = {}
    try:
        labels = dataset_labels(train)
    except TypeError:  # a Dataset of the caller's, whose labels only its examples hold
        return found
    per_example = labels.reshape(len(labels), -1).double().sum(1)
    weights = torch.arange(len(labels), dtype=torch.float64).remainder(251) + 1
    found["train_labels"] = float((per_example * weights).sum())
    if isinstance(train, tuple):
        first = train[0][:256]
    else:  # augmented tensors: their tensors, unaugmented (an image folder's would be decoded: left out)
        base, index = flat_subset(train)
        if not isinstance(base, TransformDataset):
            return found
        first = base.x[torch.as_tensor(index[:256], dtype=torch.long)]
    found["train_inputs"] = float(first.double().sum())
    return found


#: the fingerprint's parts (`data_fingerprint`) and what they say differs
_PARTS = {"train": "the number of training examples", "test": "the number of test examples",
          "inputs": "the test inputs", "labels": "the test labels", "train_labels": "the training labels",
          "train_inputs": "the training inputs"}


def data_differences(a: dict[str, float], b: dict[str, float]) -> list[str]:
    """The parts two data fingerprints both have that differ (sums to float rounding: another machine may
    add them in another order)."""
    exact = ("train_labels",)  # an integer: a changed label moves it by little against its size
    return [k for k in a.keys() & b.keys() if (a[k] != b[k] if k in exact else
                                               not math.isclose(a[k], b[k], rel_tol=1e-6, abs_tol=1e-6))]


def check_same_data(out: Path | None, saved: dict[str, float] | None, now: dict[str, float]) -> None:
    """Refuses to resume the run in `out` on other data than it trained on. The parts both fingerprints
    have are compared: a checkpoint from before fingerprints (`saved` None) is not checked, and one from
    before the training set's parts is checked on the others."""
    if saved is None:
        return
    differ = data_differences(saved, now)
    if not differ:
        return

    def shown(d: dict[str, float]) -> str:
        return f"{int(d['train'])} training and {int(d['test'])} test examples, probe sum {d['inputs']:.6g}"

    what = ", ".join([_PARTS[k] for k in _PARTS if k in differ] + [k for k in differ if k not in _PARTS])
    raise ValueError(f"the run in {out} trained on other data ({shown(saved)}; now {shown(now)}; {what} "
                     f"differ): pass its own --data-dir, or use a new --out")


def record_start(out: Path, epoch: int, device: str, data: dict[str, float]) -> None:
    """Appends to `out/provenance.jsonl` what code and machine the run starts (or resumes) on at `epoch`,
    on how many processes (torchrun's world size) and on what data (`data_fingerprint`: the tables keep
    runs on other data apart, `--data-dir` being no part of a run's identity): a run made over several
    sessions shows every version of nowt that trained it."""
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    record = {"started": now, "epoch": epoch, "nowt": provenance.version(), "commit": provenance.commit(),
              "torch": torch.__version__, "device": device, "machine": provenance.machine(device),
              "world_size": distributed.world()[1], "data": data}
    with open(out / "provenance.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def recorded_data(out: Path) -> dict | None:
    """The data fingerprint of the run's latest start in its provenance.jsonl (None where none is recorded:
    runs from before it was)."""
    path = out / "provenance.jsonl"
    if not path.is_file():
        return None
    starts = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return next((r["data"] for r in reversed(starts) if "data" in r), None)


def tensorboard(out: Path | None):
    """A TensorBoard writer into `out/tensorboard`; None without `out` or without tensorboard installed."""
    if out is None:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: metrics.jsonl alone
        return None
    return SummaryWriter(str(out / "tensorboard"))


def log_tensorboard(writer, record: dict) -> None:
    """An epoch's record: its numbers, and its per-layer dicts as `key/layer`."""
    step = record["epoch"]
    for key, value in record.items():
        if isinstance(value, float):
            writer.add_scalar(key, value, step)
        elif isinstance(value, dict):
            for layer, v in value.items():
                writer.add_scalar(f"{key}/{layer}", v, step)
