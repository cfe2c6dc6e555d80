"""Checkpoints: a checksum verified on loading (a flipped byte in a tensor is refused), stale temporary files
removed, legacy (v1) checkpoints still loaded."""

import os
import socket
import subprocess
import sys
import time
import zipfile

import pytest
import torch
from conftest import tiny_mlp

import nowt
from nowt.checkpoint import MAGIC, content_digest, load_checkpoint, remove_stale_temporaries, save_checkpoint


def real_state():
    model = nowt.convert(tiny_mlp(), "fa", seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 5, dtype=torch.double)).sum().backward()
    opt.step()
    return {"config": {"rule": "fa", "lr": 0.1, "hidden": [8]}, "epoch": 1, "model": model.state_dict(),
            "learner": opt.state_dict(), "rng": torch.get_rng_state(),
            "history": [{"epoch": 1, "test_accuracy": 51.25, "update_angles": {}}],
            "half": torch.arange(6, dtype=torch.bfloat16).view(2, 3)[:, 1:]}  # a non-contiguous bf16 view


def tensor_member(path, name_part: str = "data/"):
    """(offset, size) in the file of the bytes of the largest stored tensor (torch stores them raw)."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if name_part in i.filename and not i.filename.endswith(".pkl")),
                   key=lambda i: i.file_size)
    with open(path, "rb") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def test_round_trip_keeps_every_value(tmp_path):
    state = real_state()
    save_checkpoint(tmp_path / "checkpoint.pt", state)
    loaded = load_checkpoint(tmp_path / "checkpoint.pt")
    assert loaded["format"] == MAGIC and "sha256" not in loaded
    assert content_digest({"format": MAGIC, **state}) == content_digest(loaded)
    assert torch.equal(loaded["half"], state["half"]) and loaded["history"] == state["history"]
    assert all(torch.equal(v, state["model"][k]) for k, v in loaded["model"].items())


def test_a_flipped_byte_inside_a_stored_tensor_is_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, real_state())
    offset, size = tensor_member(path)
    raw = bytearray(path.read_bytes())
    raw[offset + size // 2] ^= 0x40  # an exponent-sized flip: the file still loads (torch skips zip CRCs)
    path.write_bytes(bytes(raw))
    torch.load(path, weights_only=True)  # the damage is invisible to torch itself
    with pytest.raises(ValueError, match=f"corrupt checkpoint {path}: checksum mismatch"):
        load_checkpoint(path)


def test_a_changed_value_is_refused_and_v1_checkpoints_still_load(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, real_state())
    raw = torch.load(path, weights_only=True)
    raw["history"][0]["test_accuracy"] = 91.25  # re-saved by hand, with the old checksum
    torch.save(raw, path)
    with pytest.raises(ValueError, match="checksum mismatch"):
        load_checkpoint(path)
    del raw["sha256"]
    torch.save(raw, path)  # no checksum at all under the v2 marker: refused as well
    with pytest.raises(ValueError, match="checksum mismatch"):
        load_checkpoint(path)
    raw["format"] = "nowt-checkpoint-v1"  # written by nowt before checksums
    torch.save(raw, path)
    assert load_checkpoint(path)["history"][0]["test_accuracy"] == 91.25


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.mark.parametrize("on", ["save", "load"])
def test_stale_temporary_files_are_removed(tmp_path, on):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"x": torch.ones(2)})
    host = socket.gethostname()
    stale = [".checkpoint.pt.a8x_k2.tmp",  # written by nowt before pids were in the name
             f".checkpoint.pt.{host}.{_dead_pid()}.q1w2e3.tmp",  # its writer was killed
             f".checkpoint.pt.{host}.{os.getpid()}.zz9.tmp",  # this process's own, left by an exception
             ".checkpoint.pt.otherhost.12.old.tmp"]  # another host's, hours old
    kept = [f".checkpoint.pt.{host}.{os.getppid()}.live.tmp",  # a live writer's (e.g. another run)
            ".checkpoint.pt.otherhost.12.new.tmp",  # another host's, recent
            ".other.pt.x.tmp", "metrics.jsonl"]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"\0" * 64)
    old = time.time() - 2 * 3600
    os.utime(tmp_path / stale[-1], (old, old))
    if on == "save":
        save_checkpoint(path, {"x": torch.zeros(2)})
    else:
        assert torch.equal(load_checkpoint(path)["x"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["checkpoint.pt", *kept])
    assert remove_stale_temporaries(tmp_path / "absent" / "checkpoint.pt") == []


def test_unreadable_files_are_named_without_torchs_advice_to_load_unsafely(tmp_path):
    path = tmp_path / "ck.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt or not a nowt checkpoint") as e:
        load_checkpoint(path)
    assert "weights_only" not in str(e.value)
    save_checkpoint(path, real_state())
    path.write_bytes(path.read_bytes()[:200])  # truncated
    with pytest.raises(ValueError, match="corrupt or not a nowt checkpoint"):
        load_checkpoint(path)
