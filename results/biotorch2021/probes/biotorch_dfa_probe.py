"""BioTorch's own DFA (or FA, `--rule fa`) against nowt's on BioTorch's MNIST LeNet recipe, Glorot W and B.

`nowt reproduce biotorch-mnist --runs dfa` diverged at lr 0.01 once B was Glorot uniform, as the recipe
says. This trains the same LeNet, data and recipe (32 x 32 standardised MNIST, SGD momentum 0.9, weight
decay 1e-3, batch 64) once with BioTorch 0.0.16's DFA (`BioModule(mode="dfa")`: a convolution's input
gets e spread over the output positions and passed back through a B of classes x in_channels x k x k)
once with nowt's (`rule="dfa"`, `init="xavier"`: B over the whole input) and once with nowt's
`conv_feedback="kernel"` (BioTorch's form), at each lr asked for, and logs the running loss every 100
steps and the test accuracy after every epoch. A run stops once its loss is not finite or above
--max-loss (1e6).
The runs of 2026-12-02 (written to /tmp, copied to results/biotorch2021/probes/dfa_probe_*.json; the first
two also trained BioTorch with an earlier build of its model, those rows are dropped from the copy):

    pip install --no-deps biotorch==0.0.16
    # nowt, full B (dfa_probe_full_B.json)
    PROBE=results/biotorch2021/probes/biotorch_dfa_probe.py
    python $PROBE --lrs 0.01,0.001 --epochs 2 --out /tmp/dfa_probe.json
    python $PROBE --lrs 0.0001,0.0003 --epochs 3 --out /tmp/dfa_probe2.json
    # nowt, conv_feedback="kernel" (dfa_probe_kernel.json)
    python $PROBE --lrs 0.0001,0.0003,0.001 --epochs 3 --impls nowt-kernel \
        --out /tmp/dfa_probe3.json
    # both at low lr (dfa_probe_low_lr.json), BioTorch at higher lr (dfa_probe_biotorch.json)
    python $PROBE --lrs 0.0001,0.00003 --epochs 3 --impls biotorch,nowt-kernel \
        --out /tmp/dfa_probe4.json
    python $PROBE --lrs 0.01,0.001,0.0003 --epochs 3 --impls biotorch \
        --out /tmp/dfa_probe5.json

(each with OMP_NUM_THREADS=1). FA (2026-12-02, `results/biotorch2021/probes/fa_probe_*.json`): the row's
recipe
to the end (lr 0.01, x0.1 after epochs 50 and 75, 100 epochs; no stop on a large loss: FA's running loss
reaches 1e4-1e13 here, and most runs recover), BioTorch's FA and nowt's, seeds 0-3, and a first
3-epoch look at both:

    python $PROBE --rule fa --lrs 0.01 --epochs 100 --milestones 50,75 \
        --max-loss inf --impls biotorch --seed 0 --out fa_probe_biotorch_seed0.json   # and seeds 1-3
    python $PROBE --rule fa --lrs 0.01 --epochs 100 --milestones 50,75 \
        --max-loss inf --impls nowt --seed 0 --out fa_probe_nowt_seed0.json           # and seeds 1-3
    python $PROBE --rule fa --lrs 0.01 --epochs 3 --impls biotorch,nowt \
        --out fa_probe_3_epochs.json

With BioTorch in `--impls`, the script first checks that BioTorch's rule
and nowt's (for DFA its kernel form) give the same gradients on one batch from the same W, b and B.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time

import torch
from torch import nn

import nowt
from nowt.data import load_dataset
from nowt.models import lenet
from nowt.train import TrainConfig
from nowt.train.factories import build_model


def make(impl: str, seed: int, rule: str = "dfa") -> nn.Module:
    if impl.startswith("nowt"):
        cfg = TrainConfig(dataset="mnist", model="lenet", activation="relu", image_size=32, init="xavier",
                          rule=rule, seed=seed, conv_feedback="kernel" if impl == "nowt-kernel" else "full")
        return build_model(cfg, (1, 32, 32), 10)
    from biotorch.module.biomodule import BioModule

    torch.manual_seed(seed)
    # as BioTorch's benchmark builds it (create_le_net_biomodel): its layers draw Glorot W and B, zero biases
    extra = {"output_dim": 10} if rule == "dfa" else {}
    return BioModule(lenet(), mode=rule, copy_weights=False, **extra)


def gradient_check(rule: str = "dfa", batch: int = 64) -> float:
    """Largest relative difference between the gradients of BioTorch's rule and nowt's (for dfa, its
    conv_feedback="kernel") on one batch, with BioTorch's W, b and B copied into nowt's LeNet."""
    data = load_dataset("mnist", image_size=32)
    x, y = data.train[0][:batch], data.train[1][:batch]
    bio, ours = make("biotorch", 0, rule), make("nowt-kernel" if rule == "dfa" else "nowt", 1, rule)
    ours(x[:1])  # draws nowt's B, replaced below
    pairs = list(zip([m for m in bio.modules() if isinstance(m, nn.Conv2d | nn.Linear)],
                     nowt.feedback_layers(ours).values(), strict=True))
    with torch.no_grad():
        for theirs, mine in pairs:
            mine.weight.copy_(theirs.weight)
            mine.bias.copy_(theirs.bias)
            mine.feedback.copy_(theirs.weight_backward)
    loss_fn = nn.CrossEntropyLoss()
    extra = {"targets": y, "loss_function": loss_fn} if rule == "dfa" else {}
    loss_fn(bio(x, **extra), y).backward()
    loss_fn(ours(x), y).backward()
    worst = 0.0
    for theirs, mine in pairs:
        for a, b in ((theirs.weight.grad, mine.weight.grad), (theirs.bias.grad, mine.bias.grad)):
            worst = max(worst, float((a - b).abs().max() / a.abs().max()))
    print(f"largest relative gradient difference, BioTorch {rule} vs nowt: {worst:.2e}")
    return worst


def run(impl: str, lr: float, epochs: int, rule: str = "dfa", seed: int = 0, milestones: tuple[int, ...] = (),
        max_loss: float = 1e6, log_every: int = 100) -> dict:
    data = load_dataset("mnist", image_size=32)
    (x, y), (x_test, y_test) = data.train, data.test
    model = make(impl, seed, rule)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-3)
    # the recipe's lr x0.1 after given epochs (BioTorch's MNIST LeNet: 50 and 75 of 100)
    schedule = torch.optim.lr_scheduler.MultiStepLR(opt, list(milestones), gamma=0.1)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    log: dict = {"impl": impl, "rule": rule, "lr": lr, "seed": seed, "step": [], "loss": [],
                 "test_accuracy": [],
                 "seconds": []}
    running, count, step, start = 0.0, 0, 0, time.perf_counter()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x) - 63, 64):  # drop_last, as the recipe
            idx = order[i:i + 64]
            # BioTorch's DFA needs the targets and the loss at the forward, to broadcast e
            needs_targets = impl == "biotorch" and rule == "dfa"
            extra = {"targets": y[idx], "loss_function": loss_fn} if needs_targets else {}
            out = model(x[idx], **extra)
            loss = loss_fn(out, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            running, count, step = running + loss.item(), count + 1, step + 1
            if step % log_every == 0:
                log["step"].append(step)
                log["loss"].append(running / count)
                running, count = 0.0, 0
                if not math.isfinite(log["loss"][-1]) or log["loss"][-1] > max_loss:
                    print(f"{impl} lr {lr}: loss {log['loss'][-1]:.3g} at step {step}, stopped", flush=True)
                    return log
        schedule.step()
        model.eval()
        with torch.no_grad():
            correct = sum(int((model(x_test[i:i + 1000]).argmax(1) == y_test[i:i + 1000]).sum())
                          for i in range(0, len(x_test), 1000))
        log["test_accuracy"].append(100.0 * correct / len(x_test))
        log["seconds"].append(time.perf_counter() - start)
        print(f"{impl} lr {lr}: epoch {len(log['test_accuracy'])} loss {log['loss'][-1]:.4f} "
              f"test {log['test_accuracy'][-1]:.2f}%", flush=True)
    log["best_test_error"] = 100.0 - max(log["test_accuracy"])
    return log


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lrs", default="0.01,0.001")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--impls", default="biotorch,nowt")
    p.add_argument("--rule", default="dfa", choices=("dfa", "fa"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--milestones", default="", help="epochs after which the lr drops x0.1, e.g. 50,75")
    p.add_argument("--max-loss", type=float, default=1e6,
                   help="stop a run whose running loss passes this (inf: only a non-finite loss stops it)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    check = gradient_check(args.rule) if "biotorch" in args.impls else None
    milestones = tuple(int(m) for m in args.milestones.split(",") if m)
    runs = [run(impl, float(lr), args.epochs, args.rule, args.seed, milestones, args.max_loss)
            for lr in args.lrs.split(",") for impl in args.impls.split(",")]
    result = {"command": "python " + " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"),
              "machine": f"{platform.machine()}, torch {torch.__version__}, "
                         f"{torch.get_num_threads()} threads",
              "gradient_check": check, "runs": runs}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
