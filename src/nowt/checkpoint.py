"""Checkpoints that survive a kill and refuse corruption.

Written to a temporary file, fsynced, then renamed over the old one (a kill leaves the old checkpoint or the
new one, never half of one); read back with `weights_only=True` (no code runs on loading). Each carries a
SHA-256 over its contents (every tensor's dtype, shape and bytes, and every other value), verified on
loading: a flipped bit gives "checksum mismatch" instead of a run that silently goes another way. Temporary
files left by a killed writer are removed on the next save or load.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import socket
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

MAGIC = "nowt-checkpoint-v2"  # v2: with "sha256"
LEGACY = ("nowt-checkpoint-v1",)  # written before checksums: loaded unverified
STALE_AFTER_S = 3600.0  # a temporary file of another host (or a reused pid) is stale after this long


def content_digest(value: Any) -> str:
    """SHA-256 of a checkpoint's contents: tensors by dtype, shape and bytes; containers in order."""
    h = hashlib.sha256()
    _update(h, value)
    return h.hexdigest()


def _update(h, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, dict):
        h.update(f"D{len(value)}:".encode())
        for k, v in value.items():
            _update(h, k)
            _update(h, v)
    elif isinstance(value, (list, tuple)):
        h.update(f"{type(value).__name__[0]}{len(value)}:".encode())
        for v in value:
            _update(h, v)
    else:  # numbers, strings, None, dtypes...: their repr is exact (floats round-trip)
        h.update(f"{type(value).__name__}={value!r};".encode())


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}."


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Deletes the temporary files of `path` that no live writer holds: those of a process of this host
    that no longer runs (or of this process), and any older than `STALE_AFTER_S`. Returns them."""
    path = Path(path)
    removed: list[Path] = []
    if not path.parent.is_dir():
        return removed
    host = socket.gethostname()
    for tmp in path.parent.glob(f"{_tmp_prefix(path)}*.tmp"):
        parts = tmp.name[len(_tmp_prefix(path)):].split(".")  # host (dots allowed), pid, random, tmp
        try:
            if len(parts) >= 4 and ".".join(parts[:-3]) == host and parts[-3].isdigit():
                stale = int(parts[-3]) == os.getpid() or not _alive(int(parts[-3]))
            else:
                stale = len(parts) < 4 or time.time() - tmp.stat().st_mtime > STALE_AFTER_S
            if stale:
                tmp.unlink()
                removed.append(tmp)
        except FileNotFoundError:  # removed meanwhile by someone else
            pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    payload = {"format": MAGIC, **state}
    payload["sha256"] = content_digest(payload)
    prefix = f"{_tmp_prefix(path)}{socket.gethostname()}.{os.getpid()}."
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # a full disk: torch's writer says "unexpected pos ..."
        Path(tmp).unlink(missing_ok=True)
        free = shutil.disk_usage(path.parent).free / 2**20
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise OSError(f"cannot write checkpoint {path} ({reason}); {free:.0f} MiB free on its disk: free "
                      f"space or choose another --out (the previous checkpoint is kept)") from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str | os.PathLike, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """The state saved at `path`, its checksum verified (ValueError if it does not match, or if a key in
    `required` is missing). A v1 file (before checksums) cannot be verified: it loads with a warning."""
    path = Path(path)
    remove_stale_temporaries(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file, or holding objects weights_only refuses
        # torch's own message for the last case advises weights_only=False: wrong for a damaged file,
        # unsafe for a foreign one, so it is not passed on.
        reason = (f"{type(e).__name__}: {e}" if not isinstance(e, pickle.UnpicklingError)
                  else "not a torch file, or it holds objects a weights-only load refuses")
        raise ValueError(f"checkpoint {path} is corrupt or not a nowt checkpoint ({reason}); restore it from "
                         f"a copy or start a new run") from e
    if not isinstance(state, dict) or state.get("format") not in (MAGIC, *LEGACY):
        raise ValueError(f"checkpoint {path} is not a nowt checkpoint (no {MAGIC!r} marker)")
    if state["format"] == MAGIC:
        stored = state.pop("sha256", None)
        if stored != content_digest(state):
            raise ValueError(f"corrupt checkpoint {path}: checksum mismatch (its contents changed after it "
                             f"was written); restore it from a copy or start a new run")
    else:
        warnings.warn(f"checkpoint {path} is {state['format']}, written before checksums: loaded unverified",
                      RuntimeWarning, stacklevel=2)
    missing = [k for k in required if k not in state]
    if missing:
        raise ValueError(f"checkpoint {path} lacks {', '.join(missing)}: not a checkpoint of a nowt run (or "
                         f"of one too old to use); start a new run")
    return state
