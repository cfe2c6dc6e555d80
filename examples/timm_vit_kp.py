"""A vision transformer trained with Kolen-Pollack (`kp`) in a plain PyTorch loop: a timm ViT where timm
is installed, nowt's own small ViT (`nowt.models.vit`) as a stand-in where it is not.

Run here with timm (below) and without it. timm needs torchvision, which this project's machines offer only
inside a CUDA build of PyTorch, so the timm run used a venv of its own (the recipe is in
benchmarks/real_models.py's docstring). nowt converts timm's ViT like any model (its `Linear`s, the patch
embedding's `Conv2d`; `nowt.summary` lists what stays on backprop by design: norms, the class token, position
embeddings).

Data: MNIST as shipped inside nowt (no download), 28x28, patches of 7. KP learns B with W's own gradient,
so B must be in the optimizer with W's learning rate and weight decay: build the optimizer after
`nowt.convert`, from `model.parameters()`.

    .venv/bin/python examples/timm_vit_kp.py            # --steps, --threads, --rule bp for the baseline
    /tmp/tvenv/bin/python examples/timm_vit_kp.py       # the timm model, where timm is installed

Measured here (2026-12-03; 1 CPU thread of a shared 2-core machine; batch 64, AdamW lr 1e-3, weight
decay 1e-4). timm 1.0.31 on torch 2.14.1 (CPU):

    timm vit_tiny_patch16_224 (img 28, patch 7, depth 4): 18 layers on kp; test accuracy before 13.8%
    step 1000: loss 0.202, mean B-W angle 57.5 deg, 164 s
    step 2000: loss 0.258, mean B-W angle 50.2 deg, 310 s
    step 3000: loss 0.094, mean B-W angle 44.7 deg, 449 s
    test accuracy after 3000 steps: 94.2% (first 2000 test images); 451 s

    --rule bp: test accuracy after 3000 steps: 93.8%; 452 s

The stand-in, nowt.models.vit (dim 64, depth 2, 4 heads), on torch 2.13 CPU:

    nowt.models.vit (stand-in: timm is not installed): 10 layers on kp; test accuracy before 10.4%
    step 1000: loss 0.184, mean B-W angle 68.4 deg, 15 s
    step 2000: loss 0.250, mean B-W angle 63.8 deg, 31 s
    step 3000: loss 0.180, mean B-W angle 60.6 deg, 43 s
    test accuracy after 3000 steps: 93.9% (first 2000 test images); 43 s

    --rule bp: test accuracy after 3000 steps: 94.7%; 35 s

B moves from 90 degrees towards W throughout: W and B take the same updates, so their shared part grows
as training moves W, while weight decay shrinks the random difference W0 - B0 (slowly: lr x decay = 1e-7 a
step here). With the stand-in KP is 0.8 points behind backprop at this length; with timm's ViT, one seed
each, KP ends 0.4 points ahead (one seed: no claim of a difference either way).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import nowt
from nowt.data.datasets import load_mnist, mnist_normalize


def vision_transformer() -> tuple[nn.Module, str]:
    try:
        import timm
    except ImportError:
        return nowt.models.vit(in_channels=1, num_classes=10, image_size=28, patch=7), "nowt.models.vit " \
            "(stand-in: timm is not installed)"
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=28,
                              patch_size=7, in_chans=1, depth=4)
    return model, "timm vit_tiny_patch16_224 (img 28, patch 7, depth 4)"


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    correct = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in zip(x.split(500), y.split(500),
                                                                          strict=True))
    model.train()
    return 100.0 * correct / len(y)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rule", default="kp")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x, y = load_mnist("train")
    xt, yt = load_mnist("test")
    x, xt = mnist_normalize(x), mnist_normalize(xt)[:2000]
    yt = yt[:2000]
    model, name = vision_transformer()
    model = nowt.convert(model, args.rule, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)  # after convert: B too
    rules = nowt.feedback_rules(model)
    generator = torch.Generator().manual_seed(0)
    batch, step, start = 64, 0, time.perf_counter()
    print(f"{name}: {len(nowt.feedback_layers(model))} layers on {args.rule}; test accuracy before "
          f"{accuracy(model, xt, yt):.1f}%")
    model(x[:batch])  # one forward, then the rules' start hook (wm's warm-up; nothing for kp)
    for rule in rules:
        rule.begin_training(model, batch)
    while step < args.steps:
        for idx in torch.randperm(len(x), generator=generator).split(batch):
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            for rule in rules:
                rule.after_step(model, step)
            if step % 1000 == 0 or step == args.steps:
                angles = list(nowt.weight_angles(model).values())
                print(f"step {step}: loss {loss.item():.3f}, mean B-W angle {sum(angles) / len(angles):.1f} "
                      f"deg, {time.perf_counter() - start:.0f} s")
            if step == args.steps:
                break
    print(f"test accuracy after {args.steps} steps: {accuracy(model, xt, yt):.1f}% "
          f"(first 2000 test images); {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
