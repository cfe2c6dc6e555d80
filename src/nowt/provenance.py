"""What code and machine a number came from: the one place run directories, RESULTS.md files and benchmark
tables read them (a leaf utility: it imports only torch)."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

_SRC = Path(__file__).resolve().parent  # src/nowt


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", "-C", str(_SRC), *args], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


@functools.cache
def commit(*paths: str) -> str | None:
    """The short commit of nowt's own checkout, with "+" when `paths` (relative to the checkout; default
    src/nowt) have uncommitted changes; None when nowt does not run from its checkout (an installed copy, or a
    checkout of another repository that vendors it). Read once a process: the code it imported."""
    top, _, head = _git("rev-parse", "--show-toplevel", "--short", "HEAD").partition("\n")
    if not top or Path(top, "src", "nowt") != _SRC or not head:
        return None
    changed = _git("status", "--porcelain", "--untracked-files=no", "--",
                   *(str(Path(top, p)) for p in paths or ("src/nowt",)))
    return head + ("+" if changed else "")


def version() -> str | None:
    """nowt's installed version; None when it runs from a source tree on PYTHONPATH."""
    try:
        return metadata.version("nowt")
    except metadata.PackageNotFoundError:
        return None


@functools.cache
def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str | torch.device | None = None) -> str:
    """This machine in a few words: CPU model, cores and torch threads, and the GPU when `device` is a CUDA
    device (by default: when one is available)."""
    text = f"{_cpu()}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads"
    cuda = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
    if cuda:
        text += f", {torch.cuda.get_device_name(torch.device(device) if device is not None else None)}"
    return text
