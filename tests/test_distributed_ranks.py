"""What the ranks of a torchrun job must agree on, and what rank 0 alone does: 2 gloo ranks on CPU, spawned as
in test_distributed.py, each running one scenario (a function of this module) and saving what it returned or
raised. Tiny synthetic runs: a few seconds a test."""

import contextlib
import io
import os
import socket
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import nowt
import nowt.train.loop as loop
from nowt import cli
from nowt.train import TrainConfig

#: a collective left waiting by a rank that went another way fails after this long, not the default 10 min
WAIT = timedelta(seconds=20)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, out: str, scenario, args: tuple) -> None:
    # WORLD_SIZE makes fit() take the torchrun path (it joins the group made here)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=WAIT)
    try:
        try:
            result = scenario(rank, *args)
        except Exception as e:  # the test reads what each rank raised
            result = {"error": f"{type(e).__name__}: {e}"}
        torch.save(result, Path(out) / f"rank{rank}.pt")
    finally:
        if dist.is_initialized():  # (the CLI leaves the group itself)
            dist.destroy_process_group()


def on_two_ranks(tmp_path: Path, scenario, *args) -> list:
    """What `scenario(rank, *args)` returned on ranks 0 and 1 ({"error": ...} where it raised)."""
    out = tmp_path / "ranks"
    out.mkdir()
    mp.spawn(_rank, args=(_free_port(), str(out), scenario, args), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


RUN = {"rule": "fa", "dataset": "synthetic", "epochs": 2, "batch_size": 50, "lr": 0.05,
       "lr_schedule": "constant", "train_size": 100}


def _mlp(**fields) -> TrainConfig:
    return TrainConfig(**{**RUN, "hidden": (8,), **fields})


def _resnet(**fields) -> TrainConfig:  # batch norm
    return TrainConfig(**{**RUN, "model": "resnet20", **fields})


# 1. compare and reproduce: rank 0 alone reads the runs and reports, after every rank has trained.

def _compare(rank: int, out: str) -> dict:
    if rank == 0:  # a slow disk: rank 0's files of each epoch come late
        write = loop._write_epoch

        def slow(*args, **kwargs):
            time.sleep(0.5)
            return write(*args, **kwargs)

        loop._write_epoch = slow
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = cli.main(["compare", "--rules", "bp,fa", "--dataset", "synthetic", "--train-size", "100",
                         "--hidden", "8", "--epochs", "2", "--batch-size", "50", "--no-progress", "--out",
                         out])
    return {"code": code, "stdout": printed.getvalue()}


def test_compare_under_torchrun_reports_once_from_rank_0_after_training(tmp_path):
    rank0, rank1 = on_two_ranks(tmp_path, _compare, str(tmp_path / "cmp"))
    assert rank0["code"] == rank1["code"] == 0, (rank0, rank1)
    assert rank1["stdout"] == "", "rank 1 read the runs (perhaps before rank 0 wrote them) and reported"
    assert rank0["stdout"].count("report: ") == 1
    assert "| bp | bp | 2 |" in rank0["stdout"] and "| fa | fa | 2 |" in rank0["stdout"], rank0["stdout"]


def _reproduce(rank: int, out: str) -> dict:
    from nowt.reproduce.entry import Reproduction

    written = []
    write_text = Path.write_text

    def noted(self, *args, **kwargs):
        written.append(self.name)
        return write_text(self, *args, **kwargs)

    Path.write_text = noted  # type: ignore[method-assign]
    repro = Reproduction(name="tiny", paper="-", table="-", runs={"fa": {"rule": "fa"}}, published={},
                         seeds=(0,), run_figures=False, config={**RUN, "hidden": (8,)})
    path = repro.run(out, progress=False, command="test")
    return {"written": written, "results": path.read_text() if rank == 0 else None}


def test_reproduce_under_torchrun_writes_results_from_rank_0_alone(tmp_path):
    rank0, rank1 = on_two_ranks(tmp_path, _reproduce, str(tmp_path / "repro"))
    assert "error" not in rank0 and "error" not in rank1, (rank0, rank1)
    assert "RESULTS.md" in rank0["written"]
    assert rank1["written"] == [], f"rank 1 wrote {rank1['written']}"
    assert "1 of 1 seeds" in rank0["results"]


# 7. wm's cached pair counts follow the model's dtype (no ranks needed).

@pytest.mark.parametrize("cast", ["double", "half"])
def test_wm_mirror_after_a_cast_counts_in_the_new_dtype(cast):
    torch.manual_seed(0)
    model = nowt.convert(nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)), "wm",
                         seed=0, mirror_warmup=2)
    with torch.no_grad():
        model(torch.randn(2, 2, 6, 6))
    rules = nowt.feedback_rules(model)
    for rule in rules:
        rule.begin_training(model, 8)
        rule.after_step(model, 8)  # the counts are cached in float32
    model = getattr(model, cast)()
    for rule in rules:
        rule.after_step(model, 16)
    assert model[0].feedback.dtype == model[0]._mirror_counts[1].dtype == getattr(torch, cast)
    assert model[0].feedback.isfinite().all()
