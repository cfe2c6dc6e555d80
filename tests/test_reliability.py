"""A hung rank ends the job: the process-group timeout reaches init_process_group, and a collective that
a rank never joins fails after it instead of waiting forever."""

import os
import socket
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nowt import distributed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("env, arg, seconds", [(None, None, 600), ("42", None, 42), ("42", 7.5, 7.5)])
def test_the_timeout_reaches_init_process_group(monkeypatch, env, arg, seconds):
    store = dist.TCPStore("127.0.0.1", 0, 1, is_master=True)  # torchrun's agent hosts it
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(store.port))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    if env is None:
        monkeypatch.delenv(distributed.TIMEOUT_ENV, raising=False)
    else:
        monkeypatch.setenv(distributed.TIMEOUT_ENV, env)
    seen = {}
    real = dist.init_process_group

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(dist, "init_process_group", spy)
    try:
        assert distributed.setup("gloo", timeout=arg) == torch.device("cpu")
        assert distributed.world() == (0, 1)
    finally:
        distributed.cleanup()
    assert seen["timeout"] == timedelta(seconds=seconds)


@pytest.mark.parametrize("value", ["ten", "0", "-5", "inf", "nan"])
def test_a_bad_timeout_is_named(monkeypatch, value):
    monkeypatch.setenv(distributed.TIMEOUT_ENV, value)
    with pytest.raises(ValueError, match=f"NOWT_PG_TIMEOUT='{value}': .*positive number of seconds"):
        distributed.pg_timeout()
    with pytest.raises(ValueError, match="timeout=0: "):
        distributed.pg_timeout(0)
    assert "resume with --resume" in distributed.timeout_message(timedelta(seconds=3))


def _hung_worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)
    if rank == 0:
        store = dist.TCPStore("127.0.0.1", port, 2, is_master=True)  # noqa: F841 - kept alive
    distributed.setup("gloo", timeout=2)
    done = os.path.join(out_dir, "rank0.done")
    if rank == 1:  # hangs: never joins the collective, until rank 0 has given up
        while not os.path.exists(done):
            time.sleep(0.05)
        os._exit(0)  # skip tearing down a process group whose peer gave up (slow)
    t0 = time.monotonic()
    try:
        distributed.all_reduce_sum_(torch.ones(1))
        outcome = "returned"
    except Exception as e:  # gloo: "Timed out waiting ... for recv operation to complete"
        outcome = f"{type(e).__name__}: {e}"
    with open(os.path.join(out_dir, "rank0.txt"), "w") as f:
        f.write(f"{time.monotonic() - t0:.2f}\n{outcome}")
    open(done, "w").close()
    os._exit(0)


def test_a_hung_rank_ends_the_collective_after_the_timeout(tmp_path):
    mp.spawn(_hung_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    seconds, outcome = (tmp_path / "rank0.txt").read_text().split("\n", 1)
    assert 1.5 < float(seconds) < 30, seconds
    assert "timed out" in outcome.lower() or "timeout" in outcome.lower(), outcome
