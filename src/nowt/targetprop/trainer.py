"""`TargetPropTrainer`: the one object that trains a network by target propagation, one batch at a time."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nowt.distributed import average_gradients, shard_weight
from nowt.lc import LocallyConnected2d
from nowt.metrics import angle, preserved_state
from nowt.optim import make_optimizer
from nowt.rules import WholeNetworkRule
from nowt.rules.base import Option, check_option, declare
from nowt.targetprop.algorithms import (
    get_algorithm,
    gradient_target,
    hidden_targets,
    idle_without_inverses,
    inverse_layers,
    inverse_loss,
    propagate,
    squared_error,
)
from nowt.targetprop.networks import AuxiliaryFeatures, make_inverse, weight_layer

SCHEDULES = ("parallel", "alternating")
#: Target propagation's options, declared once: the defaults of `TargetPropTrainer`, the options of its four
#: rules (sdtp and ao-sdtp leave out alpha: their top target comes through g_L) and their `nowt train` flags.
OPTIONS: dict[str, Option] = declare(
    Option("schedule", "parallel", "target propagation: train inverses with the forward weights "
           "(parallel) or alternate by epoch (or --alternate-every)", choices=SCHEDULES),
    Option("alternate_every", 0, "target propagation, alternating schedule: switch every N batches instead "
           "of every epoch (0)", min=0, what="a number of batches", metavar="N"),
    Option("inverse_lr", 1e-4, "target propagation: Adam lr of the inverses g", gt=0.0),
    Option("inverse_betas", (0.9, 0.999), "target propagation: Adam betas of the inverses",
           kind=tuple[float, ...], min=0.0, lt=1.0, length=2, metavar="B1,B2"),
    Option("inverse_eps", 1e-8, "target propagation: Adam epsilon of the inverses", gt=0.0),
    Option("sigma", 0.1, "target propagation: std of the noise that corrupts h in the inverse loss", min=0.0),
    Option("alpha", 0.1, "target propagation (tp, dtp): step size of the penultimate layer's target", gt=0.0),
)
_D = {name: option.default for name, option in OPTIONS.items()}
_SHAPE_MODULES = (nn.Flatten, nn.Unflatten)
_WEIGHT_LAYERS = (nn.Linear, LocallyConnected2d)


def _leaves(module: nn.Module) -> Iterator[nn.Module]:
    for child in module.children():
        if isinstance(child, nn.Sequential):
            yield from _leaves(child)
        else:
            yield child


def split_blocks(network: nn.Module) -> list[nn.Sequential]:
    """The layers f_1..f_L of a (possibly nested) `nn.Sequential`: each Linear/LocallyConnected2d with the
    reshapes just before it and the activations after it. The blocks share the network's modules."""
    if not isinstance(network, nn.Sequential):
        raise ValueError(f"target propagation needs an nn.Sequential network, got {type(network).__name__}")
    blocks: list[list[nn.Module]] = []
    prefix: list[nn.Module] = []
    for m in _leaves(network):
        if isinstance(m, _WEIGHT_LAYERS):
            blocks.append([*prefix, m])
            prefix = []
        elif any(True for _ in m.parameters()):
            raise ValueError(f"target propagation trains Linear and LocallyConnected2d layers only; the "
                             f"network holds a {type(m).__name__}")
        elif isinstance(m, _SHAPE_MODULES) or not blocks:
            prefix.append(m)
        else:
            blocks[-1].append(m)  # an activation (or dropout) of the current layer
    if prefix and blocks:
        blocks[-1].extend(prefix)
    if len(blocks) < 2:
        raise ValueError(f"target propagation needs at least one hidden layer and a readout; "
                         f"found {len(blocks)} weight layer(s)")
    return [nn.Sequential(*b) for b in blocks]


def _step(optimizer: torch.optim.Optimizer) -> None:
    """An optimizer step on gradients averaged over ranks under torch.distributed (a no-op average alone)."""
    average_gradients(p for group in optimizer.param_groups for p in group["params"])
    optimizer.step()


class TargetPropTrainer:
    """Trains an `nn.Sequential` tanh network by TP, DTP, SDTP or AO-SDTP (Bartunov et al. 2018).

    Usage (the same data and metrics as every other rule)::

        net = nowt.targetprop.mnist_fc()              # or nowt.models.mlp(784, (256,) * 5, 10, "tanh")
        tp = TargetPropTrainer(net, algorithm="dtp", schedule="alternating", lr=1e-4, inverse_lr=1e-4,
                               sigma=0.1, alpha=0.1, seed=0)
        for epoch in range(epochs):
            for x, y in nowt.train.TensorLoader(x_train, y_train, 128, shuffle=True):
                record = tp.train_step(x, y)          # {"loss", "accuracy" (%), "inverse_loss"}
            test = nowt.train.evaluate(tp.model, test_loader)   # tp.model(x) gives the logits
            tp.end_epoch()                            # the alternating schedule switches phase here
        checkpoint = {"trainer": tp.state_dict()}     # plain tensors and numbers: weights_only loading
        tp.load_state_dict(checkpoint["trainer"])     # on a trainer built with the same arguments

    Arguments:
      network: an `nn.Sequential` (nesting allowed) of Linear / `nowt.LocallyConnected2d` layers with their
        activations; the last weight layer gives the logits. Layer l is its l-th weight layer with the
        reshapes before it and the activation after it (see `split_blocks`). Trained in place.
      algorithm: "tp", "dtp", "sdtp" or "ao-sdtp" (formulas in `nowt.targetprop.algorithms`).
      schedule: "parallel" (forward and inverse weights learn on every batch) or "alternating" (inverse
        weights only during even epochs, starting with epoch 0, forward weights only during odd ones;
        `end_epoch()` switches). `phase` says which.
      alternate_every: under "alternating", switch every this many batches instead of every epoch (0).
      lr: Adam learning rate of the forward weights.
      inverse_lr: Adam learning rate of the inverse weights (a separate optimizer).
      betas: the forward optimizer's Adam betas (Bartunov et al. tune every Adam setting).
      eps: the forward optimizer's Adam epsilon.
      inverse_betas: the inverse optimizer's Adam betas.
      inverse_eps: the inverse optimizer's Adam epsilon.
      sigma: std of the noise that corrupts h_{l-1} in the inverse loss.
      alpha: the step size of the DTP/TP penultimate target.
      aux_size: number of AO-SDTP auxiliary features z.
      denoise: reconstruct the clean h_{l-1} instead of the corrupted one (None: the algorithm's own, True
        for SDTP and AO-SDTP).
      inverses: {l: module} to use as g_l in place of a learned tanh(V h + c) (tests: exact inverses).
      seed: seeds the inverses' init, the auxiliary features and the noise (the network is the caller's).

    Inverses exist for layers 2..L-1, and for the readout L under SDTP/AO-SDTP; they are built on the
    network's device and dtype. Where there is none (TP, DTP on one hidden layer), the inverses' options
    other than their defaults and the alternating schedule are refused (`idle_without_inverses`).
    Diagnostics: `targets(x, y)`, `update_angles(x, y)`, `reconstruction_errors(x)`; layer names are those
    of the weight layers in `model.named_modules()`.
    """

    def __init__(
        self,
        network: nn.Module,
        algorithm: str = "dtp",
        schedule: str = _D["schedule"],
        *,
        alternate_every: int = _D["alternate_every"],
        lr: float = 1e-4,
        inverse_lr: float = _D["inverse_lr"],
        betas: tuple[float, ...] = (0.9, 0.999),
        eps: float = 1e-8,
        inverse_betas: tuple[float, float] = _D["inverse_betas"],
        inverse_eps: float = _D["inverse_eps"],
        sigma: float = _D["sigma"],
        alpha: float = _D["alpha"],
        aux_size: int = 512,
        denoise: bool | None = None,
        inverses: Mapping[int, nn.Module] | None = None,
        seed: int = 0,
    ) -> None:
        self.algorithm = get_algorithm(algorithm)
        given = dict(schedule=schedule, alternate_every=alternate_every, inverse_lr=inverse_lr,
                     inverse_betas=inverse_betas, inverse_eps=inverse_eps, sigma=sigma, alpha=alpha)
        for name, value in given.items():
            check_option(OPTIONS[name], value)
        if alternate_every and schedule != "alternating":
            raise ValueError(f"alternate_every applies to schedule='alternating' only, not {schedule!r}")
        if not lr > 0:
            raise ValueError(f"need lr > 0, got lr={lr}")
        if self.algorithm.auxiliary and not (isinstance(aux_size, int) and aux_size > 0):
            raise ValueError(f"aux_size must be a positive int, got {aux_size!r}")
        self.schedule, self.alternate_every, self.sigma, self.alpha = schedule, alternate_every, sigma, alpha
        self.denoise = self.algorithm.denoise if denoise is None else denoise
        self.model = network
        self.blocks = split_blocks(network)
        self.epoch = self.steps = 0
        weights = [weight_layer(b) for b in self.blocks]
        names = {id(m): name for name, m in network.named_modules()}
        self.layer_names = [names[id(w)] for w in weights]
        param = weights[0].weight
        first = weights[0]
        in_shape = ((first.in_features,) if isinstance(first, nn.Linear)
                    else (first.in_channels, *first.input_size))
        with torch.no_grad():
            hs, _ = self._forward(torch.zeros(1, *in_shape, device=param.device, dtype=param.dtype))
        shapes = [tuple(h.shape[1:]) for h in hs]
        depth = len(self.blocks)
        self.inverse_layers = inverse_layers(self.algorithm, depth)
        idle = idle_without_inverses(self.algorithm, depth, given)
        asked = [name for name in idle if given[name] != _D[name]]  # a default is no request
        if asked:
            shown = ", ".join(f"{name}={given[name]!r}" for name in asked)
            one = len(asked) == 1
            raise ValueError(f"{shown} {'has' if one else 'have'} no effect: {idle[asked[-1]]}; give the "
                             f"network two hidden layers or leave {'it' if one else 'them'} at the default")
        inverses = dict(inverses or {})
        if set(inverses) - set(self.inverse_layers):
            raise ValueError(f"inverses given for layers {sorted(set(inverses) - set(self.inverse_layers))}; "
                             f"{self.algorithm.name} uses inverses of layers {self.inverse_layers}")
        self.num_classes = math.prod(shapes[-1])
        with torch.random.fork_rng(devices=[param.device] if param.device.type == "cuda" else []):
            torch.manual_seed(seed)
            self.auxiliary = (AuxiliaryFeatures(math.prod(shapes[-2]), aux_size, param.device, param.dtype)
                              if self.algorithm.auxiliary else None)
            readout_width = self.num_classes + (aux_size if self.auxiliary is not None else 0)
            self.inverses = nn.ModuleDict({
                str(layer): inverses[layer] if layer in inverses else make_inverse(
                    self.blocks[layer - 1], shapes[layer - 1], readout_width if layer == depth else None)
                for layer in self.inverse_layers
            })
        # fused where torch has it
        self.forward_optimizer = make_optimizer("adam", network.parameters(), lr, betas=betas, eps=eps)
        inverse_params = list(self.inverses.parameters())
        self.inverse_optimizer = (make_optimizer("adam", inverse_params, inverse_lr, betas=inverse_betas,
                                                 eps=inverse_eps) if inverse_params else None)
        self.generator = torch.Generator(param.device).manual_seed(seed)

    @property
    def phase(self) -> str:
        """What trains now: "both" (parallel), else "inverse" in even epochs and "forward" in odd ones (or in
        even and odd runs of `alternate_every` batches)."""
        if self.schedule == "parallel":
            return "both"
        period = self.steps // self.alternate_every if self.alternate_every else self.epoch
        return "inverse" if period % 2 == 0 else "forward"

    def end_epoch(self, train_metrics: dict[str, float] | None = None) -> None:
        self.epoch += 1

    # -- the algorithm -------------------------------------------------------------------------------------

    def _forward(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """[h_0..h_L] (detached) and each layer's output, whose graph reaches only that layer's weights."""
        hs, outs = [x], []
        for block in self.blocks:
            out = block(hs[-1])
            outs.append(out)
            hs.append(out.detach())  # so no gradient ever flows from one layer into the one below
        return hs, outs

    def _readout_activity(self, h: Tensor, distribution: Tensor) -> Tensor:
        """What g_L sees: the output distribution, and under AO-SDTP the auxiliary features of h_{L-1}."""
        if self.auxiliary is None:
            return distribution
        return torch.cat([distribution, self.auxiliary(h)], 1)

    def _readout_map(self, h: Tensor) -> Tensor:
        return self._readout_activity(h, F.softmax(self.blocks[-1](h), 1))

    def _inverse(self, layer: int) -> nn.Module:
        return self.inverses[str(layer)]

    @torch.no_grad()
    def _targets(self, hs: list[Tensor], y: Tensor) -> dict[int, Tensor]:
        depth = len(self.blocks)
        h = hs[depth - 1]
        if self.algorithm.gradient_top:
            top = gradient_target(h, self.blocks[-1], y, self.alpha)
        else:
            label = F.one_hot(y, self.num_classes).to(h.dtype)
            top = propagate(self._inverse(depth), h, self._readout_activity(h, F.softmax(hs[depth], 1)),
                            self._readout_activity(h, label), difference=True)
        inverses = {layer: self._inverse(layer) for layer in range(2, depth)}
        return hidden_targets(hs[:depth], top, inverses, self.algorithm.difference)

    def targets(self, x: Tensor, y: Tensor) -> dict[int, Tensor]:
        """{l: target of h_l} for the hidden layers l = 1..L-1 on this batch (nothing is trained)."""
        with torch.no_grad():
            hs, _ = self._forward(x)
        return self._targets(hs, y)

    def _layer_map(self, layer: int) -> nn.Module | Callable[[Tensor], Tensor]:
        """What g_l inverts: f_l, or for the readout the map to its distribution (and features)."""
        return self._readout_map if layer == len(self.blocks) else self.blocks[layer - 1]

    def train_step(self, x: Tensor, y: Tensor) -> dict[str, float]:
        """One batch: targets from the current weights, then an inverse step and/or a forward step (as the
        phase says). Returns the batch's loss and accuracy (%) before the update, and the inverse loss
        (nan when the inverses did not train)."""
        train_forward, train_inverse = self.phase != "inverse", self.phase != "forward"
        # Under torch.distributed, each rank's losses weigh its share of the global batch (its gradients are
        # then averaged): a rank left no example runs a stand-in that weighs 0 (see distributed.weigh_shard).
        weight = shard_weight(len(y))
        if len(y) == 0:
            x, y = x.new_zeros(1, *x.shape[1:]), y.new_zeros(1)
        with torch.set_grad_enabled(train_forward):
            hs, outs = self._forward(x)
        loss = F.cross_entropy(outs[-1], y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {float(loss)} at epoch {self.epoch + 1}; lower lr")
        record = {"loss": loss.item(), "accuracy": 100.0 * (hs[-1].argmax(1) == y).float().mean().item(),
                  "inverse_loss": math.nan}
        targets = self._targets(hs, y) if train_forward else {}
        if train_inverse and self.inverse_optimizer is not None:
            inv_loss = sum(inverse_loss(self._inverse(layer), self._layer_map(layer), hs[layer - 1],
                                        self.sigma, self.generator, self.denoise)
                           for layer in self.inverse_layers)
            assert isinstance(inv_loss, Tensor)  # a sum over at least one layer
            self.inverse_optimizer.zero_grad(set_to_none=True)
            (inv_loss * weight).backward()
            _step(self.inverse_optimizer)
            record["inverse_loss"] = inv_loss.item()
        if train_forward:
            # Disjoint graphs: each layer's loss reaches only its own weights; the readout's is the task loss.
            total = loss + sum(squared_error(outs[layer - 1], t) for layer, t in targets.items())
            self.forward_optimizer.zero_grad(set_to_none=True)
            (total * weight).backward()
            _step(self.forward_optimizer)
        self.steps += 1
        return record

    # -- diagnostics ---------------------------------------------------------------------------------------

    def update_angles(self, x: Tensor, y: Tensor) -> dict[str, float]:
        """{layer: degrees between the gradient of its target-propagation loss (the direction fed to Adam)
        and the true backprop gradient of the task loss}, on one batch; nothing is changed. The readout
        trains on the task loss itself, so its angle is 0."""
        weights = [weight_layer(b).weight for b in self.blocks]
        hs, outs = self._forward(x)
        targets = self._targets(hs, y)
        local = F.cross_entropy(outs[-1], y) + sum(squared_error(outs[layer - 1], t)
                                                   for layer, t in targets.items())
        tp_grads = torch.autograd.grad(local, weights)
        bp_grads = torch.autograd.grad(F.cross_entropy(self.model(x), y), weights)
        return {name: angle(a, b) for name, a, b in zip(self.layer_names, tp_grads, bp_grads, strict=True)}

    def measure(self, x: Tensor, y: Tensor) -> dict[str, dict[str, float]]:
        """The loop's per-epoch diagnostics on a probe batch: {"update_angles": `update_angles`,
        "reconstruction_errors": `reconstruction_errors`}; buffers and the RNG are left as they were."""
        with preserved_state(self.model):
            return {"update_angles": self.update_angles(x, y),
                    "reconstruction_errors": self.reconstruction_errors(x)}

    @torch.no_grad()
    def reconstruction_errors(self, x: Tensor) -> dict[str, float]:
        """{layer l: mean squared error per unit of g_l(f_l(h_{l-1})) against h_{l-1}}, without noise."""
        hs, _ = self._forward(x)
        return {self.layer_names[layer - 1]: F.mse_loss(
                    self._inverse(layer)(self._layer_map(layer)(hs[layer - 1])), hs[layer - 1]).item()
                for layer in self.inverse_layers}

    # -- checkpoints ---------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "algorithm": self.algorithm.name, "schedule": self.schedule, "epoch": self.epoch,
            "steps": self.steps, "model": self.model.state_dict(), "inverses": self.inverses.state_dict(),
            "auxiliary": self.auxiliary.state_dict() if self.auxiliary is not None else {},
            "forward_optimizer": self.forward_optimizer.state_dict(),
            "inverse_optimizer": self.inverse_optimizer.state_dict() if self.inverse_optimizer else {},
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if (state["algorithm"], state["schedule"]) != (self.algorithm.name, self.schedule):
            raise ValueError(f"state is of {state['algorithm']}/{state['schedule']}, this trainer is "
                             f"{self.algorithm.name}/{self.schedule}")
        self.model.load_state_dict(state["model"])
        self.inverses.load_state_dict(state["inverses"])
        if self.auxiliary is not None:
            self.auxiliary.load_state_dict(state["auxiliary"])
        self.forward_optimizer.load_state_dict(state["forward_optimizer"])
        if self.inverse_optimizer is not None:
            self.inverse_optimizer.load_state_dict(state["inverse_optimizer"])
        self.generator.set_state(state["generator"])
        self.epoch = int(state["epoch"])
        self.steps = int(state.get("steps", 0))  # absent from checkpoints written before alternate_every


class TargetPropagationRule(WholeNetworkRule):
    """The registry entry of one target-propagation algorithm (its `name`): `nowt train --rule dtp` and
    `rule_class("dtp").learner(net, lr=..., seed=...)` build a `TargetPropTrainer`."""

    options: ClassVar[dict[str, Option]] = OPTIONS

    @classmethod
    def idle_options(cls, values: Mapping[str, Any], depth: int | None = None) -> dict[str, str]:
        """On a network of `depth` weight layers (where known): the inverses' options where there is no
        inverse to learn (`idle_without_inverses`)."""
        return {} if depth is None else idle_without_inverses(get_algorithm(cls.name), depth, values)

    @classmethod
    def usage(cls) -> str:
        return (f"nowt.targetprop.TargetPropTrainer(network, algorithm={cls.name!r}, "
                f"schedule='parallel'|'alternating')")

    @classmethod
    def learner(cls, model: nn.Module, *, lr: float, seed: int, betas: tuple[float, ...] = (0.9, 0.999),
                eps: float = 1e-8, **options: Any) -> TargetPropTrainer:
        return TargetPropTrainer(model, algorithm=cls.name, lr=lr, seed=seed, betas=betas, eps=eps,
                                 **cls.resolve_options(options))
