"""Where Kolen-Pollack's extra step time goes, against FA's on the same model (issue 13).

    python benchmarks/kp_cost.py [--threads 2] [--rounds 9]   # a row of benchmarks/kp_cost.md

KP does FA's arithmetic plus two weight-sized pieces of work that FA has not: B receives W's gradient
(autograd hands one tensor to two leaves, so one of them gets a copy) and the optimizer steps B as well as
W (fused SGD with momentum: read B, its gradient and its momentum, write B and the momentum). This times,
interleaved in rounds, a full step of autograd, fa and kp on the MLP 784-1000-1000-10 at batch 128 (as
`benchmarks/step_time.py` does), and the two pieces alone: copying every B-sized gradient, and one fused
SGD step over the B tensors only. If kp - fa is about copy + B step, KP's overhead is those two memory
passes and nothing else: the floor on this machine unless B's gradient aliased W's (which in-place gradient
operations such as `clip_grad_norm_` would then apply twice).
"""

from __future__ import annotations

import argparse
import copy
import json
from datetime import date

import history
import torch
import torch.nn.functional as F
from timing import interleaved_ms

import nowt
from nowt import provenance
from nowt.optim import make_optimizer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", default=None, help="also write the run's raw numbers here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = nowt.models.mlp(784, (1000, 1000), 10)
    x, y = torch.randn(128, 784), torch.randint(0, 10, (128,))

    def training_step(model):
        opt = make_optimizer("sgd", model.parameters(), lr=1e-3, momentum=0.9)

        def step():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
        return step

    kp = nowt.convert(copy.deepcopy(base), "kp", seed=0)
    steps = {"autograd": training_step(copy.deepcopy(base)),
             "fa": training_step(nowt.convert(copy.deepcopy(base), "fa", seed=0)),
             "kp": training_step(kp)}
    feedback = [m.feedback for m in nowt.feedback_layers(kp).values()]
    grads = [torch.randn_like(b) for b in feedback]
    b_opt = make_optimizer("sgd", [torch.nn.Parameter(b.detach().clone()) for b in feedback], lr=1e-3,
                           momentum=0.9)  # as the training step's, so B's momentum is read and written too
    for param, g in zip(b_opt.param_groups[0]["params"], grads, strict=True):
        param.grad = g
    steps["copy of B's gradients"] = lambda: [g.clone() for g in grads]
    steps["fused SGD step of B alone"] = b_opt.step

    def fa_and_b_work():
        steps["fa"]()
        steps["copy of B's gradients"]()
        b_opt.step()
    # The pieces alone run with B's tensors warm in cache; after a step they are not, as in kp's own step.
    steps["fa + copy + B step"] = fa_and_b_work
    for fn in steps.values():
        fn()
    ms = interleaved_ms(steps, args.rounds, args.steps)
    auto = ms["autograd"]
    result = {
        "command": f"python benchmarks/kp_cost.py --threads {args.threads} --rounds {args.rounds} "
                   f"--steps {args.steps}",
        "date": date.today().isoformat(),
        "machine": provenance.machine(),
        "torch": torch.__version__, "B elements": sum(b.numel() for b in feedback),
        "ms": {k: round(v, 3) for k, v in ms.items()},
        "ratio to autograd": {k: round(v / auto, 3) for k, v in ms.items()},
        "kp - fa, share of autograd step": round((ms["kp"] - ms["fa"]) / auto, 3),
        "copy + B step, share of autograd step":
            round((ms["copy of B's gradients"] + ms["fused SGD step of B alone"]) / auto, 3),
        "(fa + copy + B step) - fa, share of autograd step":
            round((ms["fa + copy + B step"] - ms["fa"]) / auto, 3),
    }
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    numbers = {**{f"{k} / autograd": v for k, v in result["ratio to autograd"].items()},
               **{k.split(",")[0]: v for k, v in result.items() if k.endswith("share of autograd step")},
               "autograd ms": result["ms"]["autograd"]}
    history.record("kp_cost", {"MLP 784-1000-1000-10, batch 128": numbers}, threads=args.threads)


if __name__ == "__main__":
    main()
