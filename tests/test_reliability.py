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


# --- a run directory belongs to one run; resume heals the metrics; clear errors (issue 12) ---

def _synthetic(rule: str, out, epochs: int = 2):
    from nowt.train import TrainConfig

    return TrainConfig(rule=rule, dataset="synthetic", hidden=(8,), epochs=epochs, batch_size=100,
                       out_dir=str(out))


def test_a_run_directory_refuses_another_configuration_and_a_silent_restart(tmp_path):
    from nowt.train import fit

    out = tmp_path / "run"
    fit(_synthetic("fa", out), progress=False)
    with pytest.raises(ValueError, match="another configuration .*rule"):
        fit(_synthetic("bp", out), progress=False)
    with pytest.raises(ValueError, match="pass --resume to continue it or --overwrite"):
        fit(_synthetic("fa", out), progress=False)
    assert len(fit(_synthetic("fa", out), resume=True, progress=False)) == 2  # continue: nothing to do
    history = fit(_synthetic("bp", out, epochs=1), overwrite=True, progress=False)
    assert len(history) == 1 and '"rule": "bp"' in (out / "config.json").read_text()


def test_a_run_directory_in_use_is_refused(tmp_path):
    import fcntl

    from nowt.train import fit

    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".lock", "a+") as held:  # another run holds the directory
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242\n")
        held.flush()
        with pytest.raises(ValueError, match=r"in use by another run \(pid 4242\)"):
            fit(_synthetic("fa", out), progress=False)
    assert len(fit(_synthetic("fa", out, epochs=1), progress=False)) == 1  # free again


def test_resume_repairs_metrics_from_the_checkpoint(tmp_path):
    from nowt.train import fit

    out = tmp_path / "run"
    fit(_synthetic("kp", out), progress=False)
    full = (out / "metrics.jsonl").read_text()
    (out / "metrics.jsonl").write_text(full.splitlines(keepends=True)[0])  # killed before the last write
    fit(_synthetic("kp", out), resume=True, progress=False)
    assert (out / "metrics.jsonl").read_text() == full


def test_a_resume_without_the_checkpoint_keeps_the_recorded_epochs(tmp_path):
    """A run folder copied without its checkpoint (git keeps checkpoints out) was resumed from scratch and its
    metrics.jsonl rewritten at the first epoch: the epochs it recorded were lost unasked. Now refused."""
    from nowt.train import fit

    out = tmp_path / "run"
    fit(_synthetic("fa", out), progress=False)
    recorded = (out / "metrics.jsonl").read_text()
    (out / "checkpoint.pt").unlink()
    with pytest.raises(ValueError, match="records 2 epochs in metrics.jsonl but has no checkpoint.pt"):
        fit(_synthetic("fa", out), resume=True, progress=False)
    assert (out / "metrics.jsonl").read_text() == recorded
    # a plain run of the same configuration (neither --resume nor --overwrite) rewrote them just the same
    with pytest.raises(ValueError, match="records 2 epochs in metrics.jsonl but has no checkpoint.pt"):
        fit(_synthetic("fa", out), progress=False)
    assert (out / "metrics.jsonl").read_text() == recorded
    assert len(fit(_synthetic("fa", out), overwrite=True, progress=False)) == 2  # asked: starts again


def test_a_run_is_lengthened_where_its_lr_schedule_allows(tmp_path):
    from dataclasses import replace

    from nowt.train import fit

    def constant(out, epochs):
        return replace(_synthetic("fa", out, epochs=epochs), lr_schedule="constant")

    def timeless(history):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in history]

    straight = fit(constant(tmp_path / "a", 3), progress=False)
    fit(constant(tmp_path / "b", 2), progress=False)
    lengthened = fit(constant(tmp_path / "b", 3), resume=True, progress=False)
    assert timeless(lengthened) == timeless(straight)  # as if it had been asked for 3 epochs at once
    assert '"epochs": 3' in (tmp_path / "b" / "config.json").read_text()
    with pytest.raises(ValueError, match="has done 3 epochs, more than --epochs 2"):
        fit(constant(tmp_path / "b", 2), resume=True, progress=False)
    fit(_synthetic("fa", tmp_path / "c", epochs=2), progress=False)  # cosine: the lr depends on the length
    with pytest.raises(ValueError, match="differs in epochs.*cosine schedule is laid over all epochs"):
        fit(_synthetic("fa", tmp_path / "c", epochs=3), resume=True, progress=False)


def test_update_angles_on_an_unconverted_model_says_so():
    import nowt

    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    with pytest.raises(ValueError, match="no converted layers; call nowt.convert"):
        nowt.update_angles(model, torch.nn.functional.cross_entropy, torch.randn(2, 4), torch.tensor([0, 1]))


def test_an_exclude_that_matches_no_layer_is_named():
    import nowt

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"exclude: \['haed'\] match\(es\) no layer"):
        nowt.convert(model, "fa", exclude=["haed"])


def test_a_failed_download_is_one_line_naming_the_url(tmp_path, monkeypatch):
    import urllib.error
    import urllib.request

    from nowt.data.downloads import download

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    with pytest.raises(ConnectionError, match="cannot download http://x/y.gz: Name or service not known; "
                                              ".*--data-dir") as info:
        download("http://x/y.gz", tmp_path / "y.gz", "0" * 32)
    assert "\n" not in str(info.value) and not list(tmp_path.iterdir())


def test_a_collective_timeout_under_torchrun_becomes_a_clear_error(tmp_path, monkeypatch):
    import nowt.train.loop as loop
    from nowt import distributed

    def hung(*args):
        raise RuntimeError("[Gloo] Timed out waiting 600000ms for recv operation to complete")

    monkeypatch.setattr(loop, "_fit", hung)
    monkeypatch.setattr(distributed, "launched_by_torchrun", lambda: True)
    monkeypatch.setattr(distributed, "setup", lambda *a, **k: torch.device("cpu"))
    with pytest.raises(TimeoutError, match="did not answer within .*process-group timeout"):
        loop.fit(_synthetic("fa", tmp_path / "run"), progress=False)
