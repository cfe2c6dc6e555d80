"""The weight mirror's cost against training: the warm-up (fixed 300 x 256 against sized per layer,
`mirror_warmup_batch=0`) and the training schedule's mirror share of a step.

    python benchmarks/mirror_cost.py [--out benchmarks/mirror_cost.md] [--big]

For each model: a training step (forward, backward, SGD) at the given batch; one mirror step of each layer
at its warm-up batch, times its warm-up steps, summed (the warm-up's time, estimated per layer from one
timed step, as the steps are alike); the fixed warm-up's batch 256 timed at 64 and scaled by 4 where
`--big`; and the default schedule's mirror (a training batch of noise every 8th step) amortised over 8
steps, as a share of the training step. Writes a markdown table with date, machine, torch and the command.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import nowt
from nowt import provenance
from nowt.rules.wm import MIRROR_EVERY, MIRROR_WARMUP_BATCH, mirror_layers


def models(big: bool):
    out = [("mlp 784-1000-10, batch 32 (nowt train's default)", nowt.models.mlp(784, (1000,), 10),
            (32, 784)),
           ("convnet 32x32x3, batch 64", nowt.models.convnet(3, 10, 32, 32), (64, 3, 32, 32)),
           ("vit 28x28x1, batch 128", nowt.models.vit(), (128, 1, 28, 28)),
           ("gpt bytes, context 128, batch 32 (gpt-rules)", nowt.models.gpt((128,)), (32, 128))]
    if big:
        out += [("resnet18 64x64x3, batch 32", nowt.models.resnet18(num_classes=10), (32, 3, 64, 64)),
                ("resnet18 128x128x3, batch 16", nowt.models.resnet18(num_classes=10), (16, 3, 128, 128)),
                ("ViT-B/16-width stand-in (2 of 12 blocks, 197 tokens), batch 8", vit_b_blocks(2),
                 (8, 197, 768))]
    return out


def vit_b_blocks(depth: int) -> nn.Module:
    """vit_b_16's encoder blocks (width 768, MLP 3072, 12 heads) on 197 tokens, and a head."""
    layer = nn.TransformerEncoderLayer(768, 12, 3072, dropout=0.0, batch_first=True, norm_first=True)
    return nn.Sequential(nn.TransformerEncoder(layer, depth, enable_nested_tensor=False), nn.Flatten(),
                         nn.Linear(197 * 768, 10))


def timed(fn, repeat: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure(name: str, base: nn.Module, shape: tuple[int, ...], big: bool) -> list[str]:
    torch.manual_seed(0)
    if name.startswith("gpt"):  # bytes in, the next byte at every position out
        x = y = torch.randint(0, 256, shape)
    else:
        x, y = torch.randn(shape), torch.randint(0, 10, (shape[0],))
    model = nowt.convert(copy.deepcopy(base), "wm", seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step():
        opt.zero_grad()
        F.cross_entropy(model(x).flatten(0, -2), y.flatten()).backward()
        opt.step()

    t_step = timed(step)
    rule = nowt.feedback_rules(model)[0]
    layers = rule.layers(model)
    plan = rule.warmup_plan(layers)
    fixed_batch = 64 if big else MIRROR_WARMUP_BATCH  # a big model's: scaled to 256 below
    sized = fixed = 0.0
    for n, layer in layers.items():
        steps, batch = plan[n]
        one = {n: layer}
        sized += steps * timed(lambda one=one, b=batch: mirror_layers(one, 1, batch_size=b))
        t = timed(lambda one=one: mirror_layers(one, 1, batch_size=fixed_batch))
        fixed += 300 * t * MIRROR_WARMUP_BATCH / fixed_batch
    t_mirror = timed(lambda: mirror_layers(layers, 1, batch_size=shape[0] * MIRROR_EVERY // 8))
    share = t_mirror / MIRROR_EVERY / t_step
    return [name, f"{1e3 * t_step:.1f}", f"{fixed:.1f}", f"{fixed / t_step:.0f}", f"{sized:.2f}",
            f"{sized / t_step:.0f}", f"{fixed / sized:.1f}x", f"{100 * share:.1f}%"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).with_name("mirror_cost.md")))
    parser.add_argument("--big", action="store_true", help="also resnet18 and a ViT-B-width stand-in")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name, base, shape in models(args.big):
        rows.append(measure(name, base, shape, big=name.startswith(("resnet18", "ViT-B"))))
        print(" | ".join(rows[-1]), flush=True)
    head = ["model", "train step ms", "fixed warm-up s", "in steps", "sized warm-up s", "in steps",
            "saving", "mirror share of training"]
    lines = [
        "# Weight mirror: warm-up (fixed 300 x 256 vs sized per layer) and the training mirror's share", "",
        f"{date.today()}, {provenance.machine()}, torch "
        f"{torch.__version__}, CPU.", "",
        "Command: `" + " ".join(["python", f"benchmarks/{Path(__file__).name}", *sys.argv[1:]]) + "`", "",
        "Warm-ups estimated per layer from one timed mirror step times its steps (fixed: 300 steps of 256"
        ", on resnet18 and the ViT-B stand-in timed at 64 and scaled by 4; sized: "
        "`WeightMirror.warmup_plan`). The machine was shared with other jobs: timings vary by up to 2x "
        "between runs. "
        "Mirror share: one mirror step of a training batch of noise every 8th step (the default schedule), "
        "amortised, over the training step.", "",
        "| " + " | ".join(head) + " |", "|" + "---|" * len(head),
        *("| " + " | ".join(r) + " |" for r in rows), "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
