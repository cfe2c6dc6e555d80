"""DDP on CPU (gloo): 2 ranks with the global batch split in two end with the weights of 1 process that
sees the whole batch, for every rule, feedback state included; and so do a vit (rule-trained attention) and
a Conv1d net."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import nowt
from nowt import distributed

# One rule per distributed code path, not every rule: each case is a real two-process torchrun (seconds each).
# A fixed B (fa), a trained B (kp), the mirror's shared noise (wm), a per-batch draw (brsf), the output error
# broadcast (dfa), and target propagation's own learner (dtp, sdtp); the contract test covers every rule.
RULES = [r for r in ("bp", "fa", "kp", "wm", "brsf", "dfa", "dtp", "sdtp") if r in nowt.list_rules()]
TARGETPROP = ("dtp", "sdtp")
STEPS = 4
#: name -> (factory, input shape of one example): the convnet runs every rule, the new layers fa, kp and wm.
NETS = {"convnet": (lambda: nowt.models.convnet(2, 3, width=4, image_size=8), (2, 8, 8)),
        "vit": (lambda: nowt.models.vit(2, 3, image_size=8, patch=4, dim=8, depth=1, heads=2), (2, 8, 8)),
        "conv1d": (lambda: nowt.models.conv1d(2, 3, image_size=8, width=4), (2, 8, 8))}
RUNS = [("convnet", rule) for rule in RULES] + [(net, rule) for net in ("vit", "conv1d")
                                                for rule in ("fa", "kp", "wm")] + [("vit", "dfa-blocks")]
#: run names that are a rule with options
VARIANTS = {"dfa-blocks": ("dfa", {"blocks": ["blocks.*"], "position_feedback": "shared"})}


def _convert(model: torch.nn.Module, rule: str) -> torch.nn.Module:
    name, options = VARIANTS.get(rule, (rule, {}))
    return nowt.convert(model, name, seed=0, **options)


def _train_targetprop(algorithm: str, ddp: bool) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    net = nowt.models.mlp(16, (12, 10), 3, activation="tanh").double()
    tp = nowt.TargetPropTrainer(net, algorithm=algorithm, lr=1e-2, inverse_lr=1e-2, sigma=0.1, seed=0)
    data = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        x = torch.randn(8, 16, generator=data, dtype=torch.double)
        y = torch.randint(0, 3, (8,), generator=data)
        tp.train_step(*(distributed.shard(x, y) if ddp else (x, y)))
    state = tp.state_dict()
    return {**state["model"], **{f"inverse.{k}": v for k, v in state["inverses"].items()}}


def _train(net: str, rule: str, ddp: bool) -> dict[str, torch.Tensor]:
    if rule in TARGETPROP:
        return _train_targetprop(rule, ddp)
    make, shape = NETS[net]
    torch.manual_seed(0)
    model = make().double()
    _convert(model, rule)
    data = torch.Generator().manual_seed(1)
    x0 = torch.randn(8, *shape, generator=data, dtype=torch.double)
    model(distributed.shard(x0)[0] if ddp else x0)  # wm needs an input shape; dfa its feedback
    net = distributed.wrap(model) if ddp else model
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    mirror_noise = torch.Generator().manual_seed(2)
    for _ in range(STEPS):
        x = torch.randn(8, *shape, generator=data, dtype=torch.double)
        y = torch.randint(0, 3, (8,), generator=data)
        if ddp:
            x, y = distributed.shard(x, y)
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if rule == "wm":
            nowt.mirror(model, 2, generator=mirror_noise)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        results = {f"{net}/{rule}": _train(net, rule, ddp=True) for net, rule in RUNS}
        if rank == 1:  # rank 1 holds what it computed itself; rank 0's copy is checked for equality too
            torch.save(results, os.path.join(out_dir, "rank1.pt"))
        else:
            torch.save(results, os.path.join(out_dir, "rank0.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


@pytest.mark.parametrize(("net", "rule"), RUNS)
def test_two_ranks_match_one_process_with_the_whole_batch(two_rank_results, net, rule):
    single = _train(net, rule, ddp=False)
    torch.manual_seed(0)
    start = (nowt.models.mlp(16, (12, 10), 3, activation="tanh").double() if rule in TARGETPROP else
             _convert(NETS[net][0]().double(), rule)).state_dict()
    moved = False
    for ranks in two_rank_results:
        got = ranks[f"{net}/{rule}"]
        assert got.keys() == single.keys()
        for k in single:
            torch.testing.assert_close(got[k], single[k], rtol=1e-9, atol=1e-12, msg=f"{net} {rule}: {k}")
            moved |= k in start and k.endswith("weight") and not torch.allclose(single[k], start[k])
    assert moved, "training must change the weights, or the comparison proves nothing"
    feedback = [k for k in single if k.endswith("feedback")]
    if net != "convnet":  # every layer's B, attention projections included, is one tensor on both ranks
        names = {k.rsplit(".", 1)[0] for k in feedback}
        inside = "blocks.0" if rule == "dfa-blocks" else "blocks.0.self_attn.in_proj"  # a block: one B
        assert (net != "vit" or inside in names) and len(names) >= 3
        rank0, rank1 = (ranks[f"{net}/{rule}"] for ranks in two_rank_results)
        assert all(torch.equal(rank0[k], rank1[k]) for k in feedback)
        learned = any(k in start and not torch.equal(single[k], start[k]) for k in feedback)  # dfa: later
        assert learned == (rule in ("kp", "wm")), "kp and wm learn B (so equal B across ranks is no accident)"


def test_shard_splits_the_global_batch_in_rank_order(monkeypatch):
    monkeypatch.setattr(distributed, "world", lambda: (1, 2))
    assert distributed.shard(torch.arange(6))[0].tolist() == [3, 4, 5]
    assert distributed.shard(torch.arange(5))[0].tolist() == [3, 4]
    monkeypatch.setattr(distributed, "world", lambda: (0, 2))
    assert distributed.shard(torch.arange(5))[0].tolist() == [0, 1, 2]


#: `nowt train`'s options for the torchrun tests: a tiny MLP with dropout on synthetic data.
TRAIN = ("--dataset", "synthetic", "--hidden", "16", "--epochs", "3", "--batch-size", "50", "--lr", "0.05",
         "--dropout", "0.2", "--no-progress")


def _torchrun(out, *extra, kill=False, train=(*TRAIN, "--rule", "kp", "--resume"), record=None):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--max-restarts=1",
           "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{_free_port()}", *extra,
           "train", *train, "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", NOWT_TEST_KILL="1" if kill else "0",
               NOWT_TEST_RECORD=str(record or ""))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)


def _worker_script() -> str:
    from pathlib import Path

    return str(Path(__file__).with_name("torchrun_worker.py"))


def test_torchrun_restart_after_a_killed_worker_finishes_like_an_unbroken_run(tmp_path):
    """With dropout: rank 1's own RNG stream (`distributed.seed_rank`) resumes to the unbroken run's too."""
    import json

    unbroken = _torchrun(tmp_path / "a", _worker_script())
    assert unbroken.returncode == 0, unbroken.stderr[-2000:]
    killed = _torchrun(tmp_path / "b", _worker_script(), kill=True)
    assert killed.returncode == 0, killed.stderr[-2000:]
    assert "failed (exitcode: 1) local_rank: 1" in killed.stderr, killed.stderr[-2000:]  # it did die
    a = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    for ra, rb in zip(a, b, strict=True):
        ra.pop("seconds"), rb.pop("seconds")
        assert ra == rb
    assert unbroken.stdout.strip().splitlines()[-1] == killed.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("rule", ["fa", "dfa", "wm"])
def test_torchrun_ranks_draw_their_own_dropout_with_the_same_weights_and_feedback(tmp_path, rule):
    """Each rank's shard gets its own dropout masks (as one process's examples do), while what must be one
    across ranks is: the initial weights, B (fa's fixed, DFA's drawn at the first forward, wm's mirrored with
    each rank's own noise) and the weights after every epoch."""
    train = (*TRAIN, "--rule", rule, "--activation", "tanh", "--dropout", "0.5", "--epochs", "2")
    run = _torchrun(tmp_path / "run", "--max-restarts=0", _worker_script(), train=train, record=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert len(rank0) == len(rank1) == 2  # epochs
    feedback = [k for k in rank0[-1]["end"] if k.endswith("feedback")]  # DFA's: drawn in the first step
    assert len(feedback) >= (1 if rule == "dfa" else 2), feedback
    for e0, e1 in zip(rank0, rank1, strict=True):
        for when in ("start", "end"):
            assert e0[when].keys() == e1[when].keys()
            for k in e0[when]:
                assert torch.equal(e0[when][k], e1[when][k]), f"{rule}: {k} differs across ranks at {when}"
        assert len(e0["masks"]) == len(e1["masks"]) > 0
        assert all(m.any() for m in e0["masks"] + e1["masks"])  # dropout did drop units
        for m0, m1 in zip(e0["masks"], e1["masks"], strict=True):
            assert not torch.equal(m0, m1), f"{rule}: both ranks dropped the same units"
    assert not torch.equal(rank1[0]["masks"][0], rank1[1]["masks"][0])  # a new stream each epoch
    if rule == "wm":  # the mirror moved B during training, the same on both ranks
        assert any(not torch.equal(rank0[0]["start"][k], rank0[-1]["end"][k]) for k in feedback)


def test_seed_rank_leaves_rank_0_and_a_lone_process_on_their_stream(monkeypatch):
    before = torch.get_rng_state()
    for rank, size in ((0, 1), (0, 2)):
        monkeypatch.setattr(distributed, "world", lambda rank=rank, size=size: (rank, size))
        distributed.seed_rank(0, 3)
        assert torch.equal(torch.get_rng_state(), before)
    monkeypatch.setattr(distributed, "world", lambda: (1, 2))
    draws = []
    for epoch in (0, 0, 1):
        distributed.seed_rank(0, epoch)
        draws.append(torch.rand(4))
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])  # (seed, rank, epoch)
    seeds = {distributed.rank_seed(s, r, e) for s in (0, 1) for r in (1, 2) for e in (0, 1)}
    assert len(seeds) == 8 and all(0 <= x < 2**63 for x in seeds)
