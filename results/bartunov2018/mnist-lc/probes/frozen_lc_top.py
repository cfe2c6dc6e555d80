"""Does the readout inverse limit sdtp-parallel's FC layer? (an exploration, not a registered recipe;
write-up in frozen_lc_top.md beside this file).

The MNIST-LC network of the registered rows (`nowt.targetprop.mnist_lc`, seed S: two locally connected tanh
layers, FC layer `2.1` of 1,024 tanh units, readout `3.1`) with its two LC layers frozen at their
initialisation. Their output on the 60k training and 10k test images (standardised as the runs' data) is
computed once; the top of the network (`2.1` and `3.1`, with the same initial weights) is then trained on it
by one of

    sdtp     TargetPropTrainer(algorithm="sdtp", schedule="parallel") with sdtp-parallel's registered settings
    ao-sdtp  the same with algorithm="ao-sdtp" (the registered ao-sdtp-parallel row: identical settings)
    bp       Adam with the registered bp row's settings (lr 1.33e-4, betas (0.9, 0.99), eps 1e-8)

batch 128, shuffled (seeded by S), for --epochs epochs; per epoch the test error, the running train error
and, for sdtp/ao-sdtp, the FC layer's update angle to backprop's and the inverses' reconstruction errors on
a fixed batch of 1,000 training examples. Only the top is trained, so an epoch costs what two layers cost.

Commands (repository root, 2026-12-05; the output JSON beside this file):

    P=results/bartunov2018/mnist-lc/probes
    for S in 0 1 2; do for A in sdtp ao-sdtp; do
        OMP_NUM_THREADS=1 .venv/bin/python $P/frozen_lc_top.py --arm $A --seed $S --epochs E \\
            --out $P/frozen_lc_top/$A-seed$S.json; done; done
    (E = 15; the bp control: --arm bp --seed 0 --epochs 15; the table: --summary $P/frozen_lc_top)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nowt.data import load_dataset
from nowt.targetprop import TargetPropTrainer, mnist_lc
from nowt.train import TensorLoader

#: the registered rows' settings (results/bartunov2018/mnist-lc/{sdtp-parallel,bp}/seed0/config.json)
SDTP = dict(schedule="parallel", lr=0.000145, betas=(0.9, 0.99), eps=1e-6, inverse_lr=0.001652,
            inverse_betas=(0.9, 0.999), inverse_eps=1e-4, sigma=0.061555, alpha=0.1)
BP = dict(lr=0.000133, betas=(0.9, 0.99), eps=1e-8)


def features(seed: int) -> tuple[nn.Sequential, tuple[Tensor, Tensor], tuple[Tensor, Tensor], float]:
    """(the top of seed `seed`'s initial network, train and test LC features with labels, the largest
    difference between the top's logits on the features and the whole network's on the images)."""
    torch.manual_seed(seed)  # as `nowt.train.fit` seeds torch before building the model
    net = mnist_lc()
    data = load_dataset("mnist")
    lc, top = net[:2], nn.Sequential(net[2], net[3])
    with torch.no_grad():
        out = [(torch.cat([lc(x) for x in part[0].split(1000)]), part[1]) for part in (data.train, data.test)]
        check = (top(out[1][0][:500]) - net(data.test[0][:500])).abs().max().item()
    return top, out[0], out[1], check


def error(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return 100.0 * sum(int((model(a).argmax(1) != b).sum()) for a, b in zip(x.split(2000), y.split(2000),
                                                                                   strict=True)) / len(y)


def summary(folder: Path) -> str:
    """The write-up's table: per arm, mean ± std over its seeds' JSON files in `folder` (sample std)."""
    runs: dict[str, list[dict]] = {}
    for path in sorted(folder.glob("*-seed*.json")):
        record = json.loads(path.read_text())
        runs.setdefault(record["arm"], []).append(record)

    def cell(values: list[float], digits: int = 2) -> str:
        t = torch.tensor(values, dtype=torch.float64)
        spread = f" ± {t.std().item():.{digits}f}" if len(values) > 1 else ""
        return f"{t.mean().item():.{digits}f}{spread}"

    lines = ["| arm | seeds | epochs | best test error % | test error % at the last epoch | running train "
             "error % at the last epoch | FC update angle to bp (deg), last epoch | readout inverse "
             "reconstruction MSE, last epoch | s/epoch (median) |", "|---|---|---|---|---|---|---|---|---|"]
    for arm in ("sdtp", "ao-sdtp", "bp"):
        if arm not in runs:
            continue
        rs, lasts = runs[arm], [r["epochs"][-1] for r in runs[arm]]
        seconds = sorted(e["seconds"] for r in rs for e in r["epochs"])
        angle = cell([e["update_angles"]["0.1"] for e in lasts], 1) if "update_angles" in lasts[0] else "–"
        recon = cell([e["reconstruction_errors"]["1.1"] for e in lasts], 4) if "update_angles" in lasts[0] \
            else "–"
        lines.append(f"| {arm} | {', '.join(str(r['seed']) for r in rs)} | "
                     f"{'/'.join(sorted({str(len(r['epochs'])) for r in rs}))} | "
                     f"{cell([min(e['test_error'] for e in r['epochs']) for r in rs])} | "
                     f"{cell([e['test_error'] for e in lasts])} | "
                     f"{cell([e['running_train_error'] for e in lasts])} | "
                     f"{angle} | {recon} | {seconds[len(seconds) // 2]:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--summary", type=Path, help="print the table of the JSON files in this folder")
    parser.add_argument("--arm", choices=("sdtp", "ao-sdtp", "bp"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.summary:
        print(summary(args.summary))
        return
    if args.arm is None or args.out is None:
        parser.error("--arm and --out are needed to train (or --summary FOLDER)")
    torch.set_num_threads(1)
    top, (xtr, ytr), (xte, yte), check = features(args.seed)
    tp = None
    if args.arm == "bp":
        optimizer = torch.optim.Adam(top.parameters(), **BP)
    else:
        tp = TargetPropTrainer(top, algorithm=args.arm, seed=args.seed, **SDTP)
    probe = (xtr[:1000], ytr[:1000])
    command = f"frozen_lc_top.py --arm {args.arm} --seed {args.seed} --epochs {args.epochs}"
    record: dict = dict(arm=args.arm, seed=args.seed, logits_check=check, epochs=[], command=command)
    loader = TensorLoader(xtr, ytr, 128, shuffle=True, seed=args.seed)
    for epoch in range(1, args.epochs + 1):
        t0, wrong = time.perf_counter(), 0.0
        for x, y in loader:
            if tp is not None:  # the batch's accuracy before the update, as the runs' running error
                wrong += (100.0 - tp.train_step(x, y)["accuracy"]) * len(y) / 100.0
            else:
                logits = top(x)
                loss = F.cross_entropy(logits, y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                wrong += float((logits.argmax(1) != y).sum())
        if tp is not None:
            tp.end_epoch()
        row = dict(epoch=epoch, test_error=error(top, xte, yte), running_train_error=100.0 * wrong / len(ytr),
                   seconds=time.perf_counter() - t0)
        if tp is not None:
            row.update(update_angles=tp.update_angles(*probe), reconstruction_errors=tp.reconstruction_errors(
                probe[0]))
        record["epochs"].append(row)
        print(json.dumps(row), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
