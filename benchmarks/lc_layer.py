"""Forward + backward time of the locally connected layers of Bartunov et al.'s MNIST LC network alone.

    OMP_NUM_THREADS=1 python benchmarks/lc_layer.py [--rounds 15]

Batch 128, layer 1: 1 -> 32 channels, 3x3 stride 2 on 28x28; layer 2: 32 -> 64, 3x3 stride 2 on 14x14.
`bp`: the layer as built (autograd through its forward); `fa`: converted to feedback alignment (the op's
own backward through B). Rounds interleaved, median in ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import nowt

LAYERS = {"lc1": (1, 32, (28, 28)), "lc2": (32, 64, (14, 14))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    torch.manual_seed(0)
    cases = {}
    for name, (cin, cout, size) in LAYERS.items():
        layer = nowt.LocallyConnected2d(cin, cout, 3, stride=2, padding=1, input_size=size)
        x = torch.randn(128, cin, *size, requires_grad=cin > 1)  # the first layer's input needs no grad
        g = torch.randn(128, cout, *layer.output_size)
        cases[f"{name}_bp"] = (layer, x, g)
        cases[f"{name}_fa"] = (nowt.convert(torch.nn.Sequential(layer), "fa", seed=0), x, g)
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.rounds + 1):  # the first round warms up
        for k, (layer, x, g) in cases.items():
            start = time.perf_counter()
            layer(x).backward(g)
            times[k].append(time.perf_counter() - start)
    print(json.dumps({k: round(statistics.median(v[1:]) * 1e3, 2) for k, v in times.items()}))


if __name__ == "__main__":
    main()
