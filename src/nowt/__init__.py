"""nowt: deep learning without weight transport.

    model = nowt.convert(model, "fa", seed=0)   # any nn.Module; in place
    loss.backward(); optimizer.step()           # weights learn by the rule
    nowt.weight_angles(model)                   # degrees between feedback and forward weights
"""

from nowt import models, targetprop  # first: their registries (models, rules) are full for every import
from nowt.conversion import convert
from nowt.feedback_scale import check_feedback_scale
from nowt.inventory import summary
from nowt.layers import Conv2d, FeedbackLayer, Linear, feedback_layers, feedback_rules
from nowt.lc import LocallyConnected2d
from nowt.metrics import (
    angle,
    backprop_mode,
    output_collapsed,
    update_angles,
    weight_angles,
    weight_norm_ratios,
)
from nowt.mirroring import mirror
from nowt.noise import pretrain_noise
from nowt.rules import Rule, list_rules, make_rule, register
from nowt.targetprop import TargetPropTrainer

__version__ = "0.1.0"

# The modules keep their own names (`nowt.rules` is the package; its names are `nowt.list_rules()`), and
# Cheon et al. 2024's measures live in `nowt.noise_measures`, not here.
__all__ = [
    "Conv2d", "FeedbackLayer", "Linear", "LocallyConnected2d", "Rule", "TargetPropTrainer", "angle",
    "backprop_mode", "check_feedback_scale", "convert", "feedback_layers", "feedback_rules", "list_rules",
    "make_rule", "mirror", "models", "output_collapsed", "pretrain_noise", "register", "summary",
    "targetprop", "update_angles", "weight_angles", "weight_norm_ratios",
]
