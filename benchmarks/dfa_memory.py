"""DFA feedback memory and step time: ResNet-18 at ImageNet scale per storage, and DFA against backprop.

    python benchmarks/dfa_memory.py [--threads 1] [--steps 2] [--dense] [--rounds 5]
    python benchmarks/dfa_memory.py --device cuda --batch 256 --steps 5 --dense   # on a GPU

Part 1: nowt.models.resnet18(num_classes=1000), 224x224 inputs, batch 8 (--batch), one SGD step = forward,
backward, step. For `bp`, each DFA storage and DFA's `conv_feedback="kernel"` (BioTorch's conv DFA: a B of
1000 x in_channels x kernel per convolution), in a fresh subprocess (so the peak memory is its own): the
feedback it stores, the process's peak RSS (on a GPU: the peak memory torch allocated there), and the
median step time after one warm-up step. Dense feedback needs ~8 GiB for this network, so it runs only
with --dense.
Part 2: the step-time ratio DFA / backprop on the MLP 784-1000-1000-10 (batch 128) and the ConvNet
(32x32x3, batch 64) of benchmarks/step_time.py, timed in interleaved rounds, median over rounds.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from step_time import make_step, time_it, workloads  # benchmarks/ is on sys.path

import nowt


def feedback_bytes(model: torch.nn.Module) -> int:
    """Bytes of stored feedback matrices (not the seeds and shapes, a few bytes per layer)."""
    return sum(b.numel() * b.element_size() for n, b in model.named_buffers()
               if n.split(".")[-1] in ("feedback", "dfa_feedback"))


def resnet_case(variant: str, steps: int, chunk: int, device: str, batch: int) -> dict:
    torch.manual_seed(0)
    model = nowt.models.resnet18(num_classes=1000).to(device)
    if variant == "kernel":
        nowt.convert(model, "dfa", seed=0, conv_feedback="kernel")
    elif variant != "bp":
        nowt.convert(model, "dfa", seed=0, storage=variant, chunk=chunk)
    x, y = torch.randn(batch, 3, 224, 224, device=device), torch.randint(0, 1000, (batch,), device=device)
    cuda = torch.device(device).type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    times = []
    for _ in range(steps + 1):  # the first step (which creates the feedback) is not timed
        sync()
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()
        times.append(time.perf_counter() - t0)
    d_total = sum(math.prod(m.feedback_shape.tolist()[1:]) for m in nowt.feedback_layers(model).values()
                  ) if variant != "bp" else 0
    return {"variant": variant, "feedback_MiB": feedback_bytes(model) / 2**20,
            "dense_equivalent_MiB": 1000 * d_total * 4 / 2**20,
            "chunk_MiB": 1000 * chunk * 4 / 2**20 if variant != "bp" else 0.0,
            "peak_MiB": (torch.cuda.max_memory_allocated() / 2**20 if cuda
                         else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "step_s": statistics.median(times[1:]), "first_step_s": times[0]}


def ratios(rounds: int, steps: int, device: str) -> dict:
    out = {}
    for wname, (base, x, y) in workloads("mlp+convnet", device, None).items():
        variants = {"bp": make_step(nowt.convert(copy.deepcopy(base), "bp"), x, y),
                    "dfa": make_step(nowt.convert(copy.deepcopy(base), "dfa", seed=0), x, y),
                    "dfa kernel": make_step(nowt.convert(copy.deepcopy(base), "dfa", seed=0,
                                                         conv_feedback="kernel"), x, y)}
        for fn in variants.values():
            time_it(fn, 3)
        times: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(rounds):
            for k, fn in variants.items():
                times[k].append(time_it(fn, steps))
        med = {k: statistics.median(v) for k, v in times.items()}
        out[wname] = {"bp_ms": 1e3 * med["bp"], "dfa_ms": 1e3 * med["dfa"], "dfa/bp": med["dfa"] / med["bp"],
                      "dfa kernel/bp": med["dfa kernel"] / med["bp"]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2, help="timed ResNet-18 steps per variant")
    parser.add_argument("--chunk", type=int, default=4096)
    parser.add_argument("--dense", action="store_true", help="also run dense feedback (~8 GiB)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8, help="ResNet-18 batch")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # one ResNet-18 variant, in a subprocess
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.case:
        print(json.dumps(resnet_case(args.case, args.steps, args.chunk, args.device, args.batch)))
        return
    where = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "CPU"
    print(f"torch {torch.__version__}, {where}, {args.threads} thread(s)")
    print(f"\nResNet-18, 1000 classes, 224x224, batch {args.batch}")
    peak = "peak GPU MiB" if where != "CPU" else "peak RSS MiB"
    print(f"| variant | stored feedback MiB | dense equivalent MiB | {peak} | step s | first step s |")
    print("|---|---|---|---|---|---|")
    for variant in ["bp", "kernel", "seeded", "shared"] + (["dense"] if args.dense else []):
        cmd = [sys.executable, __file__, "--case", variant, "--threads", str(args.threads),
               "--steps", str(args.steps), "--chunk", str(args.chunk), "--device", args.device,
               "--batch", str(args.batch)]
        r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        print(f"| {variant} | {r['feedback_MiB']:.1f} | {r['dense_equivalent_MiB']:.0f} | "
              f"{r['peak_MiB']:.0f} | {r['step_s']:.2f} | {r['first_step_s']:.2f} |", flush=True)
    print(f"\nDFA / backprop step time ({args.rounds} interleaved rounds, median)")
    for wname, r in ratios(args.rounds, 10, args.device).items():
        print(f"  {wname}: bp {r['bp_ms']:.2f} ms, dfa {r['dfa_ms']:.2f} ms, ratio {r['dfa/bp']:.2f}; "
              f"kernel form {r['dfa kernel/bp']:.2f}")


if __name__ == "__main__":
    main()
