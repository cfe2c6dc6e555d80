"""What the ranks of a torchrun job must agree on, and what rank 0 alone does: 2 gloo ranks on CPU, spawned as
in test_distributed.py, each running one scenario (a function of this module) and saving what it returned or
raised. Tiny synthetic runs: a few seconds a test."""

import contextlib
import io
import json
import os
import socket
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import nowt
import nowt.train.loop as loop
from nowt import cli, distributed
from nowt.checkpoint import load_checkpoint, save_checkpoint
from nowt.train import TrainConfig, build_model, fit, learner_kind

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


# 2. --resume: every rank resumes, or none.

def _resume(rank: int, out0: str, out1: str) -> dict:
    history = fit(_mlp(out_dir=out0 if rank == 0 else out1), resume=True, progress=False)
    return {"epochs": len(history)}


def test_resume_refused_when_a_rank_does_not_see_the_checkpoint(tmp_path):
    """--out on node 0's own disk: rank 1's --out (another folder here) holds no checkpoint."""
    fit(_mlp(epochs=1, out_dir=str(tmp_path / "node0")), progress=False)
    results = on_two_ranks(tmp_path, _resume, str(tmp_path / "node0"), str(tmp_path / "node1"))
    for r in results:
        assert "not every rank sees the checkpoint in --out" in r.get("error", ""), r
        assert "rank(s) 1 do not" in r["error"] and "filesystem every node sees" in r["error"]


# 3. batch norm: one model scored on every rank; rank 0 decides when to stop; the world size is recorded.

def _scores(rank: int) -> dict:
    history = fit(_resnet(), progress=False)
    return {"history": [{k: v for k, v in r.items() if k.startswith("test_")} for r in history]}


def test_batch_norm_ranks_score_one_model(tmp_path):
    """Each rank's running statistics are its own shard's after a step: the ranks must score rank 0's."""
    rank0, rank1 = on_two_ranks(tmp_path, _scores)
    assert "error" not in rank0 and "error" not in rank1, (rank0, rank1)
    assert len(rank0["history"]) == 2
    assert rank0["history"] == rank1["history"]


def _impatient_rank1(rank: int) -> dict:
    if rank == 1:  # as if rank 1's test error (its own batch-norm statistics) had stalled
        loop.out_of_patience = lambda history, patience: bool(history)
    return {"epochs": len(fit(_mlp(epochs=3, patience=10), progress=False))}


def test_rank_0_decides_when_patience_ends_the_run(tmp_path):
    rank0, rank1 = on_two_ranks(tmp_path, _impatient_rank1)
    assert rank0 == rank1 == {"epochs": 3}, (rank0, rank1)


def _checkpoint_world(path: Path, size: int | None) -> None:
    state = load_checkpoint(path)
    state.pop("world_size", None)
    if size is not None:
        state["world_size"] = size
    save_checkpoint(path, state)


def test_batch_norm_run_resumes_under_its_own_world_size_only(tmp_path):
    bn, plain = _resnet(epochs=1, out_dir=str(tmp_path / "bn")), _mlp(epochs=1, out_dir=str(tmp_path / "mlp"))
    for cfg in (bn, plain):
        fit(cfg, progress=False)
    start = json.loads((tmp_path / "bn" / "provenance.jsonl").read_text().splitlines()[0])
    assert start["world_size"] == 1
    assert load_checkpoint(tmp_path / "bn" / "checkpoint.pt")["world_size"] == 1
    _checkpoint_world(tmp_path / "bn" / "checkpoint.pt", 2)  # as if trained on 2 ranks
    with pytest.raises(ValueError, match=r"trained on 2 process\(es\), now 1: its bn1 keeps running stat"):
        fit(replace(bn, epochs=2), resume=True, progress=False)
    _checkpoint_world(tmp_path / "mlp" / "checkpoint.pt", 2)  # no batch statistics: any world size
    assert len(fit(replace(plain, epochs=2), resume=True, progress=False)) == 2
    _checkpoint_world(tmp_path / "bn" / "checkpoint.pt", None)  # a checkpoint from before world sizes
    assert len(fit(replace(bn, epochs=2), resume=True, progress=False)) == 2


# 4. --noise-pretrain: every rank pretrains as one process does.

def _pretrained(rank: int | None) -> dict[str, torch.Tensor]:
    cfg = _mlp(rule="wm", hidden=(16,), noise_pretrain=12, batch_size=16)
    kind = learner_kind(cfg.rule)
    torch.manual_seed(0)
    model = build_model(cfg, (1, 8, 8), 4, kind)
    loop._noise_pretrain(cfg, model, (1, 8, 8), kind)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_noise_pretraining_on_two_ranks_is_one_process(tmp_path):
    """wm's mirror in pretraining: one process's noise batch on each rank, not world x the batch."""
    single = _pretrained(None)
    for ranks in on_two_ranks(tmp_path, _pretrained):
        assert ranks.keys() == single.keys()
        for k in single:
            torch.testing.assert_close(ranks[k], single[k], rtol=0, atol=0, msg=k)


# 5. uneven shards: a global batch of 7 on 2 ranks (4 + 3) draws and counts what one process does.

UNEVEN = 7


def _uneven(rank: int | None) -> dict:
    def mine(*tensors):
        return distributed.shard(*tensors) if rank is not None else tensors

    draws = torch.Generator().manual_seed(0)
    noise = distributed.randn_for_shard(mine(torch.zeros(UNEVEN))[0].shape + (5,), generator=draws)
    torch.manual_seed(0)
    model = nowt.convert(nowt.models.mlp(64, (32,), 3).double(), "wm", seed=0)
    data = torch.Generator().manual_seed(1)
    model(*mine(torch.randn(UNEVEN, 64, generator=data, dtype=torch.double)))  # the layers' shard shapes
    nowt.mirror(model, 3, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(0)
    tp = nowt.TargetPropTrainer(nowt.models.mlp(16, (12, 10), 3, activation="tanh").double(),
                                algorithm="dtp", lr=1e-2, inverse_lr=1e-2, sigma=0.1, seed=0)
    for _ in range(3):
        x = torch.randn(UNEVEN, 16, generator=data, dtype=torch.double)
        tp.train_step(*mine(x, torch.randint(0, 3, (UNEVEN,), generator=data)))
    state = tp.state_dict()
    return {"noise": noise, "noise_rng": draws.get_state(),
            "feedback": {k: v for k, v in model.state_dict().items() if k.endswith("feedback")},
            "tp": {**state["model"], **{f"inverse.{k}": v for k, v in state["inverses"].items()}},
            "tp_rng": state["generator"]}


@pytest.fixture(scope="module")
def uneven(tmp_path_factory):
    return _uneven(None), on_two_ranks(tmp_path_factory.mktemp("uneven"), _uneven)


def test_uneven_shards_draw_the_global_batchs_noise(uneven):
    single, (rank0, rank1) = uneven
    assert (len(rank0["noise"]), len(rank1["noise"])) == (4, 3)
    assert torch.equal(torch.cat([rank0["noise"], rank1["noise"]]), single["noise"])  # no row twice
    assert torch.equal(rank0["noise_rng"], rank1["noise_rng"]) and torch.equal(rank0["noise_rng"],
                                                                                 single["noise_rng"])


def test_wm_mirror_on_uneven_shards_is_one_process(uneven):
    single, ranks = uneven
    assert single["feedback"]
    for r in ranks:
        for k, b in single["feedback"].items():
            torch.testing.assert_close(r["feedback"][k], b, rtol=1e-9, atol=1e-12, msg=k)


def test_target_propagation_on_uneven_shards_is_one_process(uneven):
    single, ranks = uneven
    for r in ranks:
        assert torch.equal(r["tp_rng"], single["tp_rng"])  # the ranks' noise generators stay in step
        for k, w in single["tp"].items():
            torch.testing.assert_close(r["tp"][k], w, rtol=1e-9, atol=1e-12, msg=k)


# 6. a global batch smaller than the world: a rank with empty shards only.

def _batch_of_one(rank: int | None) -> list[dict]:
    loop.LOG_EVERY = 2  # (the running loss is read every 2 steps, as every 50 in a longer run)
    history = fit(_mlp(batch_size=1, train_size=12, epochs=1), progress=False)
    return [{k: v for k, v in r.items() if k.startswith(("train_", "test_"))} for r in history]


def test_a_batch_smaller_than_the_world_trains_as_one_process(tmp_path):
    log_every = loop.LOG_EVERY
    try:
        single = _batch_of_one(None)
    finally:
        loop.LOG_EVERY = log_every
    for r in on_two_ranks(tmp_path, _batch_of_one):
        assert isinstance(r, list), r
        assert r[0].keys() == single[0].keys()
        for k in single[0]:
            assert r[0][k] == pytest.approx(single[0][k], rel=1e-5, abs=1e-6), k


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


# 8. a Dataset under torchrun: each rank loads only its part of each global batch (an image folder's decoding
# is not done world-size times over), and is scored on its part of the test set; the run is one process's.

class _Recorded(torch.utils.data.Dataset):
    """Examples from tensors; what the DataLoader fetched, batch by batch (`__getitems__`: the probe and
    first-example reads, one index at a time, are not loads of a batch)."""

    classes = ("a", "b", "c")

    def __init__(self, x, y):
        self.x, self.y, self.batches = x, y, []

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]

    def __getitems__(self, indices):
        self.batches.append(list(indices))
        return [self[i] for i in indices]


def _dataset_run(rank: int | None) -> dict:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(152, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    # 101 = 50 + 50 + 1: the last global batch leaves rank 1 nothing (a stand-in, weighing nothing); 51 test
    # examples: the same on the test set (rank 1 skips the second batch)
    train, test = _Recorded(x[:101], y[:101]), _Recorded(x[101:], y[101:])
    cfg = TrainConfig(rule="fa", hidden=(8,), epochs=2, batch_size=50, lr=0.05, lr_schedule="constant")
    history = fit(cfg, train, test, progress=False)
    return {"history": [{k: v for k, v in r.items() if k.startswith(("train_", "test_"))} for r in history],
            "train": train.batches, "test": test.batches}


def test_each_rank_loads_its_part_of_every_global_batch_and_the_run_is_one_process(tmp_path):
    single = _dataset_run(None)
    ranks = on_two_ranks(tmp_path, _dataset_run)
    assert all("error" not in r for r in ranks), ranks
    for epoch in range(2):  # one process loads global batches of 50, 50, 1 (train) and 50, 1 (test)
        whole = single["train"][3 * epoch:3 * epoch + 3]
        assert [len(b) for b in whole] == [50, 50, 1]
        parts = [r["train"][3 * epoch:3 * epoch + 3] for r in ranks]
        assert [b[:25] for b in whole[:2]] == parts[0][:2] and [b[25:] for b in whole[:2]] == parts[1][:2]
        assert parts[0][2] == whole[2] and parts[1][2] == whole[2]  # rank 1's stand-in: the example alone
    test_whole, test_parts = single["test"], [r["test"] for r in ranks]
    assert [len(b) for b in test_whole] == [50, 1, 50, 1]  # scored after each of the 2 epochs
    assert test_parts[0] == [b[:25] if len(b) == 50 else b for b in test_whole]
    assert test_parts[1] == [b[25:] if len(b) == 50 else b for b in test_whole]  # (a stand-in never scored)
    for r in ranks:
        for got, want in zip(r["history"], single["history"], strict=True):
            assert got.keys() == want.keys()
            for k in want:
                assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-6), k


# 9. NCCL reduces CUDA tensors only: the epoch totals and target propagation's counts are CPU tensors.

@pytest.mark.skipif(not (torch.cuda.is_available() and dist.is_nccl_available()), reason="NCCL needs a GPU")
def test_cpu_tensors_sum_over_ranks_under_nccl(tmp_path, monkeypatch):
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'group'}", rank=0, world_size=1)
    try:
        monkeypatch.setattr(distributed, "world", lambda: (0, 2))  # (a group of one reduces to itself)
        totals = torch.tensor([3.0, 1.5], dtype=torch.float64)
        assert distributed.all_reduce_sum_(totals) is totals and totals.tolist() == [3.0, 1.5]
        assert distributed.shard_weight(4) == 2.0  # count x world / the (one-rank) global count
    finally:
        dist.destroy_process_group()
