"""torch.distributed glue: process-group setup from torchrun's environment, DDP wrapping, batch sharding.

What each rule needs to stay consistent across ranks, and where it comes from:
- fixed random feedback (fa, frsf's R, DFA's B): drawn on the CPU from the same `seed` on every rank, and
  broadcast from rank 0 when DDP wraps the model (DDP syncs buffers at construction);
- kp: B is a parameter with W's gradient, so DDP all-reduces it like any weight;
- brsf: draws come from the layer's seed and draw counter (buffers): identical while ranks step together;
- wm: `nowt.mirror` draws the noise for the *global* batch from one generator on every rank, each rank uses
  its own slice (at its offset: shards may be uneven), and the estimates are summed across ranks and
  normalised by the global batch: the same B as one process with the whole batch
  (`nowt train`'s mirror draws from torch's global RNG, each rank's own stream: see below; the summed
  estimate is still one tensor on every rank, so B stays identical);
- target propagation: layer-local and inverse gradients are averaged over ranks before each optimizer step,
  and the inverse loss's noise is drawn like the mirror's.

Per-step randomness is each rank's own (`seed_rank`): `nowt train` builds the model, draws every rule's
feedback and runs `begin_training` from one global RNG state on every rank; then, at the start of every
epoch, each rank r > 0 reseeds torch's global RNG from (seed, r, epoch), so dropout masks and other draws of
the global RNG differ across ranks' shards as they do across one process's examples. Rank 0, and a lone
process, keep the unbroken stream that the checkpoint saves.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterable, Iterator
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import BatchSampler, Sampler

_alone = False  # inside `alone()`


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a process group and inside `alone()`."""
    if not _alone and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextlib.contextmanager
def alone() -> Iterator[None]:
    """Inside, `world()` is (0, 1): every rank does one process's work, with no collective (shards, the
    mirror's split noise and summed estimates). For what every rank runs alike before DDP, such as noise
    pretraining, which would otherwise give wm's mirror a world-size-dependent noise batch."""
    global _alone
    before, _alone = _alone, True
    try:
        yield
    finally:
        _alone = before


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


DEFAULT_TIMEOUT_S = 600.0
TIMEOUT_ENV = "NOWT_PG_TIMEOUT"


def pg_timeout(seconds: float | None = None) -> timedelta:
    """How long a collective waits for the other ranks before failing: `seconds`, else the environment's
    NOWT_PG_TIMEOUT (seconds), else 10 minutes. A hung (not dead) rank then ends the job instead of
    leaving the others waiting forever."""
    if seconds is None:
        raw = os.environ.get(TIMEOUT_ENV, "").strip()
        try:
            seconds = float(raw) if raw else DEFAULT_TIMEOUT_S
        except ValueError:
            seconds = float("nan")
        where = f"{TIMEOUT_ENV}={raw!r}"
    else:
        where = f"timeout={seconds!r}"
    if isinstance(seconds, bool) or not (isinstance(seconds, (int, float)) and 0 < seconds < float("inf")):
        raise ValueError(f"{where}: the process-group timeout must be a positive number of seconds")
    return timedelta(seconds=seconds)


def timeout_message(timeout: timedelta | None = None) -> str:
    """What to tell the user when a collective timed out (see `pg_timeout`)."""
    seconds = (timeout or pg_timeout()).total_seconds()
    return (f"a rank did not answer within {seconds:g}s (the process-group timeout): one worker hung or "
            f"died; the last checkpoint is kept, resume with --resume (set {TIMEOUT_ENV}=<seconds> if a "
            f"step legitimately takes longer)")


def setup(backend: str | None = None, timeout: float | None = None) -> torch.device:
    """Joins the process group described by torchrun's environment; returns this rank's device.
    `timeout`: seconds a collective waits for the other ranks (see `pg_timeout`)."""
    if not dist.is_initialized():
        wait = pg_timeout(timeout)
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        # Keys under this restart's own prefix: after torchrun restarts the workers, gloo would otherwise
        # read the previous attempt's (dead) peer addresses from the shared store and fail to connect.
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), size,
                              is_master=False, timeout=max(wait, timedelta(minutes=5)))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group(backend, store=dist.PrefixStore(f"nowt/attempt{attempt}", store),
                                rank=rank, world_size=size, timeout=wait)
    if torch.cuda.is_available() and dist.get_backend() == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, device: torch.device | None = None) -> nn.Module:
    """DistributedDataParallel around `model` (which stays reachable as `.module`), or `model` alone."""
    if world()[1] == 1:
        return model
    ids = [device.index] if device is not None and device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def rank_seed(seed: int, rank: int, epoch: int) -> int:
    """The seed of rank `rank`'s global RNG in `epoch` (counted from 0): a 63-bit hash of the three, so
    ranks and epochs get unrelated streams (not seed + k * rank, which another run's seed could equal)."""
    digest = hashlib.blake2b(f"nowt/rank-rng/{seed}/{rank}/{epoch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def seed_rank(seed: int, epoch: int) -> None:
    """At the start of `epoch`: ranks r > 0 reseed torch's global RNG (CPU and every GPU) with
    `rank_seed(seed, r, epoch)`, so each rank draws its own dropout masks and noise for its shard instead
    of the same ones as rank 0. Rank 0 (a lone process too) keeps its stream untouched: a single process is
    bit-for-bit what it was, and rank 0's stream is the one the checkpoint saves. Reseeding per epoch makes
    the other ranks' streams a function of (seed, rank, epoch), so a run resumed at an epoch's start draws
    what the unbroken run drew without saving every rank's state. Call it after everything that must be
    identical across ranks has drawn (model init, feedback, the rules' `begin_training`)."""
    rank = world()[0]
    if rank > 0:
        torch.manual_seed(rank_seed(seed, rank, epoch))


def shard(*tensors: Tensor) -> tuple[Tensor, ...]:
    """This rank's contiguous slice of a global batch; ranks' slices concatenate to the whole batch.

    An uneven batch gives some ranks one example more, and a batch smaller than the world leaves some ranks
    none: `weigh_shard` makes the ranks' averaged gradient that of the global batch's mean loss."""
    rank, size = world()
    if size == 1:
        return tensors
    return tuple(t.tensor_split(size)[rank] for t in tensors)


_Batch = TypeVar("_Batch", Tensor, range, list)


def rank_part(batch: _Batch) -> _Batch:
    """This rank's part of a global batch's indices: the rows `shard` would give it."""
    rank, size = world()
    base, extra = divmod(len(batch), size)
    start = rank * base + min(rank, extra)
    return batch[start:start + base + (rank < extra)]


class RankBatches(Sampler[list[int]]):
    """A batch sampler that hands this rank only its part (`rank_part`) of each global batch of `batches`
    (the same on every rank: one seeded order), so a rank loads and decodes its own examples, not the whole
    batch. A DataLoader cannot load an empty part: where a global batch is smaller than the world, a rank left
    nothing loads the batch's first example as a stand-in, and `rank_batches` empties it again."""

    def __init__(self, batches: BatchSampler):
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            yield list(rank_part(batch)) or batch[:1]

    def counts(self) -> Iterator[int]:
        """This rank's number of examples in each batch, computed (iterating the batches would draw the
        shuffle's next order)."""
        n, size = len(self.batches.sampler), self.batches.batch_size  # type: ignore[arg-type]
        sizes = [size] * (n // size) + ([n % size] if n % size and not self.batches.drop_last else [])
        return (len(rank_part(range(s))) for s in sizes)


def rank_batches(loader: Iterable) -> Iterator[tuple[Tensor, Tensor]]:
    """This rank's part of each global batch of `loader`: as loaded where the loader loads parts
    (`loads_parts`: `make_loader`'s under torchrun), else cut from the whole batch."""
    sampler = getattr(loader, "batch_sampler", None)
    if isinstance(sampler, RankBatches):
        for (x, y), count in zip(loader, sampler.counts(), strict=True):
            yield (x, y) if count else (x[:0], y[:0])
    elif loads_parts(loader):
        yield from loader
    else:
        for x, y in loader:
            x, y = shard(x, y)
            yield x, y


def loads_parts(loader: Iterable) -> bool:
    """Whether `loader` gives this rank its part of each global batch: a DataLoader over `RankBatches`, or a
    TensorLoader with `per_rank`."""
    if isinstance(getattr(loader, "batch_sampler", None), RankBatches):
        return True
    return bool(getattr(loader, "per_rank", False))


def shard_span(n: int) -> tuple[int, int]:
    """(where this rank's `n` rows start in the global batch, the global batch's rows): the ranks' counts
    summed in rank order, so uneven shards (7 rows: 4 + 3) and empty ones are placed right; (0, n) alone.
    A collective every rank must call."""
    rank, size = world()
    if size == 1:
        return 0, n
    counts = per_rank(n)
    return sum(counts[:rank]), sum(counts)


def randn_for_shard(shape: torch.Size | tuple[int, ...], *, generator: torch.Generator | None = None,
                    device=None, dtype=None) -> Tensor:
    """Gaussian noise for this rank's slice of a global batch (`shape` is the local batch's): every rank
    draws the whole global batch from the same generator state and keeps its own slice, so the numbers do
    not depend on how many ranks share the batch (nor on how evenly), and the ranks' generators stay in
    step. A collective every rank must call (it gathers the ranks' shard sizes)."""
    return noise_for_shard(shape, "normal", generator=generator, device=device, dtype=dtype)


def noise_for_shard(shape: torch.Size | tuple[int, ...], distribution: str = "normal", *,
                    generator: torch.Generator | None = None, device=None, dtype=None,
                    span: tuple[int, int] | None = None) -> Tensor:
    """`randn_for_shard` for a named distribution: "normal" N(0, 1) or "uniform" U[-sqrt(3), sqrt(3)) (also
    zero mean and unit variance, so a caller scales both by the same standard deviation). `span`:
    `shard_span(shape[0])` where the caller has it (no collective then)."""
    n = shape[0]
    offset, total = shard_span(n) if span is None else span
    full = (total, *shape[1:])
    if distribution == "normal":
        noise = torch.randn(full, generator=generator, device=device, dtype=dtype)
    elif distribution == "uniform":
        noise = torch.rand(full, generator=generator, device=device, dtype=dtype).sub_(0.5).mul_(12 ** 0.5)
    else:
        raise ValueError(f"unknown noise distribution {distribution!r}; choose normal or uniform")
    return noise[offset:offset + n]


def average_gradients(params) -> None:
    """All-reduce the `.grad` of `params` to their mean over ranks (what DDP does for a wrapped model)."""
    size = world()[1]
    if size == 1:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(size)


def weigh_shard(loss: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """(the loss to backpropagate, the global batch's mean loss, detached) for `loss`, the mean over this
    rank's `count` examples (0: a stand-in batch whose loss must weigh nothing). Each rank's loss is
    weighted by its share of the global batch, so DDP's average of the ranks' gradients is the gradient of
    the mean over every example, as one process would take it, for uneven and empty shards too. Alone (or
    with even shards) the weight is exactly 1."""
    size = world()[1]
    if size == 1:
        return loss, loss.detach()
    totals = all_reduce_sum_(torch.stack([loss.detach() * count, loss.new_tensor(float(count))]))
    return loss * (count * size / totals[1]), totals[0] / totals[1]


def shard_weight(count: int) -> float:
    """`weigh_shard`'s weight of a rank's mean loss over its `count` examples, as a number (a collective,
    read on the host): count x world / the global batch; 1.0 alone."""
    size = world()[1]
    if size == 1:
        return 1.0
    return count * size / float(all_reduce_sum_(torch.tensor([float(count)])).item())


def agree(ok: bool) -> bool:
    """True when `ok` on every rank (a collective every rank must call): one rank's refusal reaches all."""
    if world()[1] == 1:
        return ok
    flag = torch.tensor([1 if ok else 0], device=_collective_device())
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def per_rank(value: int) -> list[int]:
    """Every rank's `value`, in rank order, on every rank (a collective every rank must call)."""
    rank, size = world()
    if size == 1:
        return [value]
    values = torch.zeros(size, dtype=torch.int64, device=_collective_device())
    values[rank] = value
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values.tolist()


def rank0_decides(flag: bool) -> bool:
    """Rank 0's `flag` on every rank (a collective every rank must call): a decision that ranks taking it
    apart could take differently (one leaving the loop while another waits in its next collective)."""
    if world()[1] == 1:
        return flag
    t = torch.tensor([1 if flag else 0], device=_collective_device())
    dist.broadcast(t, src=0)
    return bool(t.item())


def broadcast_buffers(module: nn.Module) -> None:
    """Rank 0's buffers (batch norm's running statistics) into every rank's `module`, as DDP does before
    each forward: after a step each rank's statistics are those of its own shard, so ranks evaluating
    their own copies would score different models (and rank 0's is the one the checkpoint keeps)."""
    if world()[1] == 1:
        return
    for buffer in module.buffers():
        sent = buffer if buffer.is_contiguous() else buffer.contiguous()
        dist.broadcast(sent, src=0)
        if sent is not buffer:
            buffer.copy_(sent)


def barrier() -> None:
    """Waits for every rank (returns at once alone): what rank 0 wrote before it is there to read."""
    if world()[1] > 1:
        dist.barrier()


def _collective_device() -> str:
    return "cuda" if dist.get_backend() == "nccl" else "cpu"


def all_reduce_sum_(t: Tensor) -> Tensor:
    """`t` summed over ranks, in place. A tensor on another device than the backend reduces (NCCL: CUDA
    only; the loop's epoch totals and `shard_weight`'s count are CPU tensors) goes there and back."""
    if world()[1] > 1:
        on = t.to(_collective_device())
        dist.all_reduce(on, op=dist.ReduceOp.SUM)
        if on is not t:
            t.copy_(on)
    return t
