"""The real-client check for torchvision and timm (issue 27, item 7): a fixed list of their models, random
init (nothing downloaded), converted with every per-layer rule in the registry, as
`tests/test_real_models.py` does for Hugging Face transformers.

    python benchmarks/real_models.py               # torchvision and timm: records benchmarks/real_models.md
    python benchmarks/real_models.py --suite timm --rules fa kp   # prints only: a partial run
    python benchmarks/real_models.py --suite nowt  # a self-check of the script on nowt's models; prints

Each (model, rule) cell is one of: `ok` with the first step's gradient norm over backprop's on the same batch
(`ok 1.3x`); `refused: ...` (nowt.convert or the first forward raised a ValueError saying why: a loud refusal,
allowed); `refused at backward: ...` (nowt's error at the first backward naming a converted layer whose weight
the model used without running it: loud, allowed); `LEFT ON BP: ...` (a weight matrix on backprop that nowt
did not account for: a `nowt.summary` row on plain `bp` under another rule); `NEVER RAN: ...` (a converted
layer the model bypassed); `NOT FINITE` (loss or weights after one SGD step); `FAIL: ...` (any other error). A
batch of 2 at the resolution in MODELS, cross-entropy against random labels over the model's logits (a
segmentation model's "out" map per pixel).

The results must be produced where torchvision and timm are installed: on this project's machines
torchvision exists only as a multi-GB CUDA build of PyTorch (and timm needs torchvision), run on the CPU in a
venv of its own:

    python3.11 -m venv /tmp/tvenv && /tmp/tvenv/bin/pip install torch==2.14.1 torchvision==0.29.1
    /tmp/tvenv/bin/pip install timm==1.0.31 numpy tqdm matplotlib && /tmp/tvenv/bin/pip install --no-deps -e .
    OMP_NUM_THREADS=1 /tmp/tvenv/bin/python benchmarks/real_models.py

Never record results of a partial rule set or of the `nowt` self-check as if they were these.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import nowt
from nowt.rules import WholeNetworkRule, rule_class

sys.path.insert(0, str(Path(__file__).resolve().parent))
from history import record  # noqa: E402

RULES = [r for r in nowt.list_rules() if not issubclass(rule_class(r), WholeNetworkRule)]

#: suite -> {model: (builder name or callable, input shape)}. Builders: "module:function" with num_classes=10.
MODELS: dict[str, dict[str, tuple[str | Callable[[], nn.Module], tuple[int, ...]]]] = {
    "torchvision": {
        "resnet18": ("torchvision.models:resnet18", (3, 64, 64)),
        "mobilenet_v3_small": ("torchvision.models:mobilenet_v3_small", (3, 64, 64)),
        "efficientnet_b0": ("torchvision.models:efficientnet_b0", (3, 64, 64)),
        "regnet_y_400mf": ("torchvision.models:regnet_y_400mf", (3, 64, 64)),
        "convnext_tiny": ("torchvision.models:convnext_tiny", (3, 64, 64)),
        "densenet121": ("torchvision.models:densenet121", (3, 64, 64)),
        "googlenet": (lambda: importlib.import_module("torchvision.models").googlenet(
            num_classes=10, aux_logits=False, init_weights=True), (3, 64, 64)),
        "swin_t": ("torchvision.models:swin_t", (3, 64, 64)),
        "swin_v2_t": ("torchvision.models:swin_v2_t", (3, 64, 64)),
        "vit_b_16": (lambda: importlib.import_module("torchvision.models").vit_b_16(
            num_classes=10, image_size=64), (3, 64, 64)),
        "maxvit_t": ("torchvision.models:maxvit_t", (3, 224, 224)),
        "r3d_18": ("torchvision.models.video:r3d_18", (3, 4, 32, 32)),
        "r2plus1d_18": ("torchvision.models.video:r2plus1d_18", (3, 4, 32, 32)),
        "deeplabv3_mobilenet_v3_large": (lambda: importlib.import_module(
            "torchvision.models.segmentation").deeplabv3_mobilenet_v3_large(
            num_classes=10, weights_backbone=None), (3, 64, 64)),
    },
    "timm": {name: (lambda name=name, kw=kw: importlib.import_module("timm").create_model(
        name, pretrained=False, num_classes=10, **kw), shape) for name, kw, shape in (
        ("vit_tiny_patch16_224", {"img_size": 64}, (3, 64, 64)),
        ("deit_tiny_patch16_224", {"img_size": 64}, (3, 64, 64)),
        ("beit_base_patch16_224", {"img_size": 64, "depth": 2}, (3, 64, 64)),
        ("eva02_tiny_patch14_224", {"img_size": 56}, (3, 56, 56)),
        ("swinv2_tiny_window8_256", {}, (3, 256, 256)),
        ("convnext_atto", {}, (3, 64, 64)),
        ("resnet18", {}, (3, 64, 64)),
        ("efficientnet_b0", {}, (3, 64, 64)),
        ("tf_efficientnet_b0", {}, (3, 64, 64)),
        ("mobilenetv3_small_100", {}, (3, 64, 64)),
        ("resnetv2_50x1_bit", {}, (3, 64, 64)),
        ("nf_resnet26", {}, (3, 64, 64)),
        ("mixer_b16_224", {"img_size": 64}, (3, 64, 64)),
    )},
    "nowt": {  # the script's self-check, runnable anywhere: never recorded
        "resnet18": (lambda: nowt.models.resnet18(num_classes=10), (3, 32, 32)),
        "vit": (lambda: nowt.models.vit(in_channels=3, num_classes=10, image_size=28), (3, 28, 28)),
    },
}


def build(spec: str | Callable[[], nn.Module]) -> nn.Module:
    if callable(spec):
        return spec()
    module, fn = spec.split(":")
    return getattr(importlib.import_module(module), fn)(num_classes=10)


def logits(out) -> torch.Tensor:
    if isinstance(out, dict):
        out = out["out"]
    elif isinstance(out, tuple | list):
        out = out[0]
    return out.flatten(2).transpose(1, 2).reshape(-1, out.shape[1]) if out.dim() > 2 else out


def first_step(model: nn.Module, x: torch.Tensor, seed: int = 0) -> tuple[float, float, float]:
    """One SGD step: (loss before, loss after, gradient norm of the weights, all as floats)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    out = logits(model(x))
    y = torch.randint(0, out.shape[-1], (out.shape[0],), generator=torch.Generator().manual_seed(seed))
    loss = F.cross_entropy(out.float(), y)
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if p.grad is not None and not n.endswith("feedback")]
    norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
    optimizer.step()
    with torch.no_grad():
        after = F.cross_entropy(logits(model(x)).float(), y)
    return float(loss), float(after), norm


#: What nowt raises at the first backward when a model uses a converted layer's weight without running the
#: layer (timm's BEiT, EVA-02 and Swin V2 call `F.linear(x, self.qkv.weight, ...)`): a loud refusal, by name.
BYPASS = "never ran, but its weight got a gradient"


def check(name: str, spec, shape: tuple[int, ...], rule: str, bp_norm: float | None) -> tuple[str, float]:
    """The cell for (model, rule) and the first step's gradient norm (nan where it did not get that far)."""
    torch.manual_seed(0)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    try:
        model = nowt.convert(build(spec), rule, seed=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            before, after, norm = first_step(model, x)
    except ValueError as e:
        return f"refused: {str(e)[:120]}", math.nan
    except RuntimeError as e:
        if BYPASS in str(e):  # nowt's own refusal, at the first backward: the model bypassed the layer
            return f"refused at backward: {str(e)[:120]}", math.nan
        return f"FAIL: RuntimeError: {str(e)[:120]}", math.nan
    except Exception as e:  # noqa: BLE001 - every other failure is a result too
        return f"FAIL: {type(e).__name__}: {str(e)[:120]}", math.nan
    rows = nowt.summary(model, show=False)
    left = [r.name for r in rows if r.rule == "bp" and rule != "bp"]
    never = [r.name for r in rows if r.reads.startswith("nothing: never ran")]
    finite = all(math.isfinite(v) for v in (before, after, norm)) and all(
        torch.isfinite(p).all() for p in model.parameters())
    if left:
        return f"LEFT ON BP: {', '.join(left[:3])}", norm
    if never:
        return f"NEVER RAN: {', '.join(never[:3])}", norm
    if not finite:
        return "NOT FINITE", norm
    return (f"ok {norm / bp_norm:.3g}x" if bp_norm else "ok"), norm


def run(suites: list[str], rules: list[str]) -> dict[str, dict[str, str]]:
    numbers: dict[str, dict[str, str]] = {}
    for suite in suites:
        for name, (spec, shape) in MODELS[suite].items():
            start = time.perf_counter()
            cell, bp_norm = check(name, spec, shape, "bp", None)
            row = {"bp": cell}
            for rule in (r for r in rules if r != "bp"):
                row[rule] = check(name, spec, shape, rule, bp_norm if math.isfinite(bp_norm) else None)[0]
            numbers[f"{suite}: {name}"] = row
            print(f"{suite}: {name} ({time.perf_counter() - start:.0f} s)", row, flush=True)
    return numbers


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", choices=["all", "torchvision", "timm", "nowt"], default="all")
    p.add_argument("--rules", nargs="+", default=RULES, choices=RULES)
    p.add_argument("--no-record", action="store_true", help="print only")
    args = p.parse_args()
    suites = ["torchvision", "timm"] if args.suite == "all" else [args.suite]
    missing = [s for s in suites if s != "nowt" and importlib.util.find_spec(s) is None]
    if missing:
        sys.exit(f"{', '.join(missing)} not installed: this benchmark needs them (see the docstring); "
                 f"`--suite nowt` checks the script itself")
    numbers = run(suites, args.rules)
    if args.suite == "nowt" or args.no_record or set(args.rules) != set(RULES):
        return  # a self-check or a partial run is not the table
    versions = {s: importlib.import_module(s).__version__ for s in suites}
    record("real_models", numbers, **versions)


if __name__ == "__main__":
    main()
