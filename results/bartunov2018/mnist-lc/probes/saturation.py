"""Why a target-propagation row of Bartunov et al.'s MNIST LC column stops learning: reads the row's last
checkpoint (`ROW/seed0/checkpoint.pt`, written by `nowt reproduce bartunov2018-mnist-lc`, git-ignored) and,
on the first N training images as the run saw them (standardised), measures per layer the share of saturated
units (|h| > 0.99), and per inverse g_l its output's saturation, its reconstruction error (mean squared error
per unit, without noise), its training loss on that batch and the norm of that loss's gradient (0: the
inverse can no longer learn), and per hidden layer how far its target lies from its activity (root mean
square of t_l - h_l per unit: 0 gives that layer no error to learn from). Nothing is trained or written but
the JSON.

    OMP_NUM_THREADS=1 python results/bartunov2018/mnist-lc/probes/saturation.py \
        results/bartunov2018/mnist-lc/sdtp-alternating/seed0 --out sdtp_alternating_saturation.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from nowt.checkpoint import load_checkpoint
from nowt.targetprop.algorithms import inverse_loss
from nowt.train import TrainConfig
from nowt.train.factories import build_model, load_data
from nowt.train.learners import make_learner


def saturated(h: torch.Tensor) -> float:
    return round((h.abs() > 0.99).float().mean().item(), 4)


def rms(d: torch.Tensor) -> float:
    return d.pow(2).mean().sqrt().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", help="a row's seed folder holding checkpoint.pt and config.json")
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    run = Path(args.run)
    state = load_checkpoint(run / "checkpoint.pt", ("config", "epoch", "learner"))
    cfg = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    data = load_data(cfg)
    x, y = data.train[0][:args.examples], data.train[1][:args.examples]
    trainer = make_learner(cfg, build_model(cfg, tuple(x.shape[1:]), 10), 1)
    trainer.load_state_dict(state["learner"])
    with torch.no_grad():
        hs, _ = trainer._forward(x)
    result = {"run": str(run), "epoch": int(state["epoch"]), "examples": args.examples,
              "saturated_units": {trainer.layer_names[i]: saturated(h) for i, h in enumerate(hs[1:-1])},
              "target_displacement": {trainer.layer_names[layer - 1]: rms(t - hs[layer])
                                      for layer, t in trainer.targets(x, y).items()},
              "reconstruction_errors": trainer.reconstruction_errors(x), "inverses": {}}
    generator = torch.Generator().manual_seed(0)
    for layer in trainer.inverse_layers:
        inverse, layer_map = trainer._inverse(layer), trainer._layer_map(layer)
        inverse.zero_grad()
        loss = inverse_loss(inverse, layer_map, hs[layer - 1], trainer.sigma, generator, trainer.denoise)
        loss.backward()
        grad = sum(float(p.grad.pow(2).sum()) for p in inverse.parameters() if p.grad is not None) ** 0.5
        with torch.no_grad():
            output = inverse(layer_map(hs[layer - 1]))
        result["inverses"][trainer.layer_names[layer - 1]] = {
            "output_saturated": saturated(output), "loss": round(loss.item(), 4), "grad_norm": grad}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
