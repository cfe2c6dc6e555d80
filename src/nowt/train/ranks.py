"""What the ranks of a torchrun job must agree on before they train together, for the loop (`loop.fit`):
whether they resume, and whether the run's checkpoint may be resumed under this world size."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from nowt import distributed


def agree_on_resume(resume: bool, checkpoint: Path | None) -> bool:
    """Whether the run resumes from `checkpoint`: where `resume` asks and the file is there. Every rank
    reads it itself; one that did not see it (--out on one node's own disk) would start afresh, its
    gradients averaged with the resumed ranks', so ranks that disagree are refused (a collective every rank
    calls when `resume`, which is the same on every rank)."""
    here = checkpoint is not None and checkpoint.exists()
    if not resume:
        return False
    seen = distributed.per_rank(int(here))
    if len(set(seen)) > 1:
        blind = ", ".join(str(r) for r, s in enumerate(seen) if not s)
        raise ValueError(f"--resume: not every rank sees the checkpoint in --out ({checkpoint}: rank(s) "
                         f"{blind} do not); put --out on a filesystem every node sees")
    return here


def batch_statistics(model: nn.Module) -> list[str]:
    """The modules of `model` whose buffers are statistics of each rank's share of the batch (batch and
    instance norm's running mean and variance; not SyncBatchNorm's, taken over the global batch)."""
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats
            and not isinstance(m, nn.SyncBatchNorm)]


def check_world_size(saved: int | None, model: nn.Module, out: Path | None) -> None:
    """Refuses to resume under another world size than the checkpoint's (`saved`; None: a checkpoint from
    before it was saved, not checked) a model whose statistics depend on each rank's share of the batch:
    the run would go on with other statistics than it started with. Other models resume under any world
    size (the ranks' averaged gradient is the whole batch's)."""
    size = distributed.world()[1]
    stats = batch_statistics(model) if saved is not None and saved != size else []
    if stats:
        raise ValueError(f"the run in {out} trained on {saved} process(es), now {size}: its {stats[0]} keeps "
                         f"running statistics (batch norm) of each process's share of the batch, which the "
                         f"world size changes; resume it with {saved} process(es) in all, or use a new --out")
