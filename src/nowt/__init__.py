"""nowt: deep learning without weight transport.

    model = nowt.convert(model, "fa", seed=0)   # any nn.Module; in place
    loss.backward(); optimizer.step()           # weights learn by the rule
    nowt.weight_angles(model)                   # degrees between feedback and forward weights
"""

from nowt import models, targetprop
from nowt.convert import convert
from nowt.feedback_scale import check_feedback_scale
from nowt.inventory import summary
from nowt.layers import Conv2d, FeedbackLayer, Linear, feedback_layers, feedback_rules
from nowt.lc import LocallyConnected2d
from nowt.measures import (
    accuracy_and_loss,
    affine_images,
    area_under_curve,
    effective_rank,
    effective_ranks,
    generalization_gap,
    mean_neuron_angles,
    neuron_angles,
    ood_images,
)
from nowt.metrics import angle, backprop_mode, output_collapsed, update_angles, weight_angles
from nowt.mirror import mirror
from nowt.noise import noise_batches, pretrain_noise
from nowt.rules import Rule, make_rule, register, rules
from nowt.targetprop import TargetPropTrainer

__version__ = "0.1.0"

__all__ = [
    "Conv2d", "FeedbackLayer", "Linear", "LocallyConnected2d", "Rule", "TargetPropTrainer", "angle",
    "backprop_mode", "check_feedback_scale", "convert", "feedback_layers", "feedback_rules", "make_rule",
    "mirror", "models",
    "output_collapsed", "register", "rules", "summary", "targetprop", "update_angles", "weight_angles",
    # random-noise pretraining (Cheon et al. 2024) and its measures
    "accuracy_and_loss", "affine_images", "area_under_curve", "effective_rank", "effective_ranks",
    "generalization_gap", "mean_neuron_angles", "neuron_angles", "noise_batches", "ood_images",
    "pretrain_noise",
]
