"""Training-step time of every per-layer rule against plain PyTorch autograd, in the same run, as a ratio.

    python benchmarks/step_time.py [--threads N] [--rounds R] [--run NAME]
    python benchmarks/step_time.py --device cuda --workload resnet18 --amp
    python benchmarks/step_time.py --workload vit
    python benchmarks/step_time.py --workload gpt

Each run adds a line to benchmarks/step_time.jsonl (ratios to autograd, the mirror's share, autograd's ms,
with date, commit, machine and command) and rebuilds the table benchmarks/step_time.md (`history.py`);
`--out FILE` also writes the run's raw timings there.

A step is forward, backward and an SGD step (nowt's `make_optimizer`, fused where torch has it, for every
column alike). Models: the MLP 784-1000-1000-10 at batch 128 and a small
ConvNet on 32x32x3 at batch 64; `--workload vit`: nowt's `vit` on 28x28x1 at batch 128 (its attention
projections, MLPs, patch embedding and head rule-trained). Timings are interleaved in rounds (every
variant once per round, in an order that rotates) and the median per-step time over rounds is reported,
so that load drifting during the run hits all variants alike.
The weight-mirror row times one mirror step as `nowt train` makes it (a noise batch as large as the training
batch, every MIRROR_EVERY-th step) and reports its amortised cost per training step as a fraction of one.
BioTorch's fa, usf, brsf and frsf are timed too when `biotorch` is importable
(`pip install --no-deps biotorch==0.0.16`).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from datetime import date

import history
import torch
import torch.nn.functional as F

import nowt
from nowt import provenance
from nowt.optim import make_optimizer
from nowt.rules.wm import MIRROR_BATCH_DIVISOR, MIRROR_EVERY

RULES = ["bp", "fa", "usf", "brsf", "frsf", "kp", "wm"]
#: per workload, DFA's forms timed too: name -> convert options (a sequence: one B shared by the tokens)
DFA = {"gpt": {"dfa": {"position_feedback": "shared"},
               "dfa blocks": {"blocks": ("blocks.*",), "position_feedback": "shared"}}}


def workloads(name: str, device: str, batch: int | None):
    if name == "resnet18":  # the GPU workload: ImageNet-sized ResNet-18
        n = batch or 256
        model = nowt.models.resnet18(num_classes=1000).to(device, memory_format=torch.channels_last)
        x = torch.randn(n, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last)
        return {f"resnet18 224x224, batch {n}": (model, x, torch.randint(0, 1000, (n,), device=device))}
    if name == "vit":  # a transformer: attention through the rule, softmax(QK^T)V by autograd
        n = batch or 128
        x = torch.randn(n, 1, 28, 28, device=device)
        return {f"vit 28x28x1, batch {n}": (nowt.models.vit().to(device), x,
                                            torch.randint(0, 10, (n,), device=device))}
    if name == "gpt":  # a byte-level language model: a loss per token
        n = batch or 32
        x = torch.randint(0, 256, (n, 128), device=device)
        return {f"gpt 2 blocks dim 128, context 128, batch {n}": (nowt.models.gpt((128,)).to(device), x,
                                                                 torch.roll(x, -1, 1))}
    mlp = nowt.models.mlp(784, (1000, 1000), 10).to(device)
    conv = nowt.models.convnet(3, 10, 32, 32).to(device)
    return {
        "mlp 784-1000-1000-10, batch 128": (mlp, torch.randn(128, 784, device=device),
                                            torch.randint(0, 10, (128,), device=device)),
        "convnet 32x32x3, batch 64": (conv, torch.randn(64, 3, 32, 32, device=device),
                                      torch.randint(0, 10, (64,), device=device)),
    }


def make_step(model, x, y, amp: bool = False):
    opt = make_optimizer("sgd", model.parameters(), lr=1e-3, momentum=0.9)  # nowt train's (fused) SGD

    def step():
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(x).float()
            if out.dim() == 3:  # a loss per token
                out, y_ = out.flatten(0, -2), y.flatten()
            else:
                y_ = y
            loss = F.cross_entropy(out, y_)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


#: the rules BioTorch has too (its DFA needs the targets in forward, a different step, so it is left out)
BIOTORCH_RULES = ("fa", "usf", "brsf", "frsf")


def biotorch(model, rule: str):
    """BioTorch's conversion of `model` for `rule`, or None when BioTorch is not installed."""
    try:
        from biotorch.module.biomodule import BioModule
    except Exception:
        return None
    return BioModule(copy.deepcopy(model), mode=rule)


def time_it(fn, steps: int) -> float:
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20, help="steps per variant per round")
    parser.add_argument("--out", default=None, help="also write the raw timings (ms and ratios) here")
    parser.add_argument("--run", default=None, help="the run's name in the table (default DATE-COMMIT)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workload", default="small", choices=["small", "resnet18", "vit", "gpt"],
                        help="small: the MLP and ConvNet; resnet18: ImageNet-sized (for a GPU); "
                             "vit: nowt's vit; gpt: nowt's byte-level gpt (with DFA per token and by block)")
    parser.add_argument("--batch", type=int, default=None,
                        help="resnet18 / vit / gpt batch (default 256 / 128 / 32)")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = {}
    for wname, (base, x, y) in workloads(args.workload, args.device, args.batch).items():
        variants = {"autograd": make_step(copy.deepcopy(base), x, y, args.amp)}
        models = {}
        for rule in RULES:
            models[rule] = nowt.convert(copy.deepcopy(base), rule, seed=0)
            variants[rule] = make_step(models[rule], x, y, args.amp)
        for label, options in DFA.get(args.workload, {}).items():
            variants[label] = make_step(nowt.convert(copy.deepcopy(base), "dfa", seed=0, **options), x, y,
                                        args.amp)
        models["wm"](x)
        # the default pattern: every MIRROR_EVERY-th step, a noise batch of
        # MIRROR_EVERY / MIRROR_BATCH_DIVISOR of the training batch (8 / 8: a whole batch)
        noise_batch = max(1, len(x) * MIRROR_EVERY // MIRROR_BATCH_DIVISOR)
        variants["wm mirror step"] = lambda m=models["wm"], n=noise_batch: nowt.mirror(m, 1, batch_size=n)
        for rule in BIOTORCH_RULES:
            bio = biotorch(base, rule)
            if bio is None:
                continue
            step = make_step(bio, x, y, args.amp)
            try:
                step()
            except RuntimeError as e:  # BioTorch's layers take 2-d (Linear) / 4-d (Conv2d) inputs only
                print(f"  biotorch {rule}: cannot train this model ({str(e).splitlines()[0]})")
                continue
            variants[f"biotorch {rule}"] = step
        for fn in variants.values():  # warm-up
            time_it(fn, 3)
        times: dict[str, list[float]] = {k: [] for k in variants}
        names = list(variants)
        for r in range(args.rounds):  # the order rotates each round, so no variant always runs first
            for k in names[r % len(names):] + names[:r % len(names)]:
                times[k].append(time_it(variants[k], args.steps))
        med = {k: statistics.median(v) for k, v in times.items()}
        rows = {k: {"ms": 1e3 * t, "ratio_to_autograd": t / med["autograd"]} for k, t in med.items()}
        # nowt train mirrors once every MIRROR_EVERY steps: the cost per training step is the amortised one
        rows["wm mirror step"]["fraction_of_wm_train_step"] = med["wm mirror step"] / MIRROR_EVERY / med["wm"]
        results[wname] = rows
        print(f"\n{wname}")
        for k, r in rows.items():
            frac = r.get("fraction_of_wm_train_step")
            extra = f"  ({100 * frac:.1f}% of a wm step, amortised)" if frac is not None else ""
            print(f"  {k:16s} {r['ms']:8.2f} ms  {r['ratio_to_autograd']:5.2f}x{extra}")
    meta = {"date": date.today().isoformat(), "torch": torch.__version__, "threads": args.threads,
            "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
            "amp": args.amp,
            "cpu": provenance.machine(), "rounds": args.rounds, "steps": args.steps}
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=1)
    numbers = {}
    for workload, rows in results.items():
        numbers[workload] = {k: r["ratio_to_autograd"] for k, r in rows.items() if k != "wm mirror step"}
        if "wm mirror step" in rows:
            numbers[workload]["wm mirror share"] = rows["wm mirror step"]["fraction_of_wm_train_step"]
        numbers[workload]["autograd ms"] = rows["autograd"]["ms"]
    history.record("step_time", numbers, run=args.run, threads=args.threads, device=meta["device"],
                   amp=args.amp, rounds=args.rounds, steps=args.steps)
    print("recorded in benchmarks/step_time.jsonl and benchmarks/step_time.md")


if __name__ == "__main__":
    main()
