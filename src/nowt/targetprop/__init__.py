"""Target propagation (TP, DTP, SDTP, AO-SDTP) on fully and locally connected networks (Bartunov et al. 2018).

    net = nowt.targetprop.mnist_fc()
    tp = nowt.targetprop.TargetPropTrainer(net, algorithm="dtp", schedule="alternating")
    tp.train_step(x, y); tp.end_epoch(); nowt.train.evaluate(tp.model, loader)
"""

from nowt.rules import register
from nowt.targetprop.algorithms import ALGORITHMS, Algorithm, get_algorithm
from nowt.targetprop.networks import (
    NETWORKS,
    build_network,
    cifar_fc,
    cifar_lc,
    create_network,
    imagenet_lc,
    mnist_fc,
    mnist_lc,
)
from nowt.targetprop.trainer import SCHEDULES, TargetPropagationRule, TargetPropTrainer, split_blocks

# The names `nowt.list_rules()` lists after the per-layer ones: tp, dtp, sdtp, ao-sdtp. alpha (the step of
# the gradient target) is an option only of those that take one, so `--alpha` with sdtp is refused.
for _name, _algorithm in ALGORITHMS.items():
    _options = {k: v for k, v in TargetPropagationRule.options.items()
                if k != "alpha" or _algorithm.gradient_top}
    register(type(f"TargetPropagation_{_name.replace('-', '_')}", (TargetPropagationRule,),
                  {"name": _name, "options": _options}))

__all__ = [
    "ALGORITHMS", "NETWORKS", "SCHEDULES", "Algorithm", "TargetPropTrainer", "TargetPropagationRule",
    "build_network", "cifar_fc", "cifar_lc", "create_network", "get_algorithm", "imagenet_lc", "mnist_fc",
    "mnist_lc", "split_blocks",
]
