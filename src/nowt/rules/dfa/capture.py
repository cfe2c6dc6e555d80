"""Capture of the output error e inside one ordinary backward pass.

`DirectFeedback.setup_model` puts a forward pre-hook and a forward hook on the converted model (a `Context`'s
bound methods, so deepcopy keeps model, layers and context consistent). Each forward opens a `Pass`; the
converted layers that run in it register there. The forward hook passes the output tensor (`outputs.pick`)
through `RecordError`, an identity whose backward records `e = dL/d(output)` on the pass. Autograd reaches
that node before any layer (every layer lies upstream of the output), so `e` is known when the layers'
backward needs it.

With `error_at=NAME` the error point is that module's input instead (a forward pre-hook passes it through
`RecordError`, and the pass resolves there): what runs after it (that module, the converted layers after it)
learns by backprop, so e is the loss's gradient there, and every block before it gets B e, the last one too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from nowt.ops import eager_when_compiled, exporting
from nowt.rules.base import LayerLike, RuleLayer
from nowt.rules.dfa import outputs
from nowt.rules.dfa.blocks import BlockFeedbackFunction
from nowt.rules.dfa.storage import AnyProjection


class CapturingRule(Protocol):
    """What a pass and its context read of the rule (`DirectFeedback`; a Protocol, so that this module,
    which the rule imports, need not import it back)."""

    output: Any
    error_at: str | None
    position_feedback: str

    @property
    def name(self) -> str: ...

    def new_pass(self) -> Pass: ...

    def note_shape(self, layer: LayerLike, shape: torch.Size) -> None: ...

    def shares_positions(self, module: LayerLike, shape: torch.Size) -> bool: ...

    def projection(self, model: nn.Module, layer: LayerLike, shape: torch.Size,
                   tokens: int | None = None) -> AnyProjection | None: ...


@contextlib.contextmanager
def normal_tensors() -> Iterator[None]:
    """No inference mode (and no grad) for the buffers the first forward creates (B, its shape): made under
    torch.inference_mode (Lightning's validation), they would be inference tensors, which the next training
    forward cannot use (they track no version)."""
    with torch.inference_mode(False), torch.no_grad():
        yield


class Pass:
    """One forward pass of a converted model: the layers it ran and, once backward reaches the output, e."""

    def __init__(self, rule: CapturingRule) -> None:
        self.rule = rule
        self.error: Tensor | None = None
        self.error_task = -1  # the backward (autograd graph task) that recorded `error`
        self.past_error = False  # error_at's point has run: later layers learn by backprop
        self.pending: list[tuple[LayerLike, torch.Size]] | None = []  # a layer's input, a block's output
        self.projections: list[AnyProjection | None] = []

    def register(self, layer: LayerLike, x: Tensor | torch.Size) -> int:
        """Records a layer's input (or a block's output), or its shape, as the next slot."""
        if self.pending is None:
            raise RuntimeError("dfa: a converted layer ran after the model's forward returned")
        self.pending.append((layer, x if isinstance(x, torch.Size) else x.shape))
        return len(self.pending) - 1

    def resolve(self, model: nn.Module, output: Tensor) -> None:
        """Called when the forward returns: now n_out is known, so every layer's B can be settled. A
        sequence output `(N, T, n_out)` gives per-token errors (`DirectFeedback.follows_tokens`)."""
        n, n_out = output.shape[0], output.shape[-1]
        tokens = output.shape[1] if output.dim() == 3 else None
        fed = self.pending
        assert fed is not None  # resolved once, when the forward returns (or at error_at's point)
        # A block after which no converted layer ran has no B: nothing downstream of it reads a converted
        # weight, so it keeps the gradient from downstream (e itself at the output), as an output layer does.
        # Before an error point (error_at) every block gets its B, as Launay et al. feed the last block too.
        last_block = (bool(fed) and getattr(fed[-1][0], "dfa_is_block", False)
                      and self.rule.error_at is None)
        if last_block:
            fed = fed[:-1]
        shapes = [torch.Size((n_out, *shape[1:])) for _, shape in fed]
        for (layer, shape), fb_shape in zip(fed, shapes, strict=True):
            if shape[0] != n:
                name = next((k for k, m in model.named_modules() if m is layer), "?")
                raise ValueError(f"dfa: layer {name!r}'s input has batch size {shape[0]} but the output has "
                                 f"{n}; dfa needs every converted layer to see the model's batch along dim 0 "
                                 f"(nowt.convert(..., exclude=[{name!r}]) leaves a layer that does not, such "
                                 f"as one computing a position bias, on backprop)")
            with normal_tensors():
                self.rule.note_shape(layer, fb_shape)  # all shapes first: the shared matrix spans the widest
        # (a pass that registered nothing, under nowt.metrics.backprop_mode, or blocks under no_grad, which
        # skip registering, proves nothing: only a training pass is checked)
        if self.rule.position_feedback == "shared" and fed and torch.is_grad_enabled() and not any(
                self.rule.shares_positions(layer, s) for (layer, _), s in zip(fed, shapes, strict=True)):
            raise ValueError(f"{self.rule.name}: position_feedback='shared' (--position-feedback shared) "
                             f"shares one B across the positions of a sequence (N, T, C) fed to a Linear "
                             f"layer or a block, but this model has none; drop it")
        with normal_tensors():
            self.projections = [self.rule.projection(model, layer, s, tokens)
                                for (layer, _), s in zip(fed, shapes, strict=True)]
        if last_block:
            self.projections.append(None)
        self.pending = None  # drop the layers: backward needs only the projections

    def check_error(self) -> None:
        if self.error is None:
            raise RuntimeError(
                "dfa: backward reached a converted layer before the output error e was recorded; the loss "
                "must be computed from the output of the converted model (the module given to nowt.convert)")
        # A second backward of the same graph (retain_graph) that does not pass through the output (an
        # auxiliary loss on a hidden activation) would otherwise take the first one's e as its own.
        if self.error_task != torch._C._current_graph_task_id():
            raise RuntimeError(
                "dfa: this backward did not pass through the model's output, so it has no output error e "
                "of its own (the e of an earlier backward would be reused); a loss on a hidden activation "
                "must be added to the output's loss and backpropagated with it")

    def input_grad(self, slot: int) -> Tensor | None:
        """The gradient for the input of the layer that registered as `slot`: e projected by its B."""
        project = self.projections[slot]
        if project is None:
            return None
        assert self.error is not None  # `check_error` came first
        return project(self.error)


class RecordError(torch.autograd.Function):
    """Identity on the model's output; its backward stores e = dL/d(output) on the pass."""

    @staticmethod
    def forward(ctx, output: Tensor, pass_: Pass) -> Tensor:
        ctx.pass_ = pass_
        return output.view_as(output)

    @staticmethod
    def backward(ctx, grad: Tensor):
        ctx.pass_.error, ctx.pass_.error_task = grad, torch._C._current_graph_task_id()
        return grad, None


class Context:
    """Per converted model: the pass in progress. The hooks are its bound methods."""

    def __init__(self, rule: CapturingRule, model: nn.Module) -> None:
        self.rule, self.model = rule, model  # the model holds the shared matrix
        self.current: Pass | None = None
        # block -> a converted layer inside it (keyed by the module, so that deepcopy maps both)
        self.block_layers: dict[nn.Module, RuleLayer] = {}
        self.block_names: dict[nn.Module, str] = {}
        self.running: set[str] = set()  # the blocks whose forward is under way

    def add_block(self, block: nn.Module, layer: RuleLayer, name: str) -> None:
        self.block_layers[block], self.block_names[block] = layer, name
        block.register_forward_pre_hook(self.block_begin)
        block.register_forward_hook(self.block_end)

    def check_in_block(self, layer: RuleLayer) -> None:
        """A layer of a block runs backprop: only right while its block runs, whose output then gets B e."""
        if layer.dfa_block not in self.running:
            name = next((n for n, m in self.model.named_modules() if m is layer), "?")
            raise ValueError(f"{self.rule.name}: layer {name!r} of block {layer.dfa_block!r} ran while that "
                             f"block was not running (the model calls its parts, not the block), so it would "
                             f"train by plain backprop; name modules that the model calls as blocks")

    def add_error_point(self, module: nn.Module) -> None:
        """error_at: e is the loss's gradient at `module`'s input (its first argument)."""
        module.register_forward_pre_hook(self.error_point)

    @eager_when_compiled
    def error_point(self, module: nn.Module, args: Any) -> Any:
        pass_ = self.current
        if pass_ is None or pass_.past_error or not args or not isinstance(args[0], Tensor):
            return None
        if self.running:
            raise ValueError(f"{self.rule.name}: error_at={self.rule.error_at!r} runs inside block(s) "
                             f"{sorted(self.running)}; the error point must lie after every block")
        hidden = args[0]
        if hidden.dim() not in (2, 3):
            raise ValueError(f"{self.rule.name}: error_at={self.rule.error_at!r}'s input must be [N, C] or a "
                             f"sequence [N, T, C] (e is the loss's gradient there); got shape "
                             f"{tuple(hidden.shape)}")
        pass_.resolve(self.model, hidden)
        pass_.past_error = True
        if torch.is_grad_enabled() and hidden.requires_grad:
            return (RecordError.apply(hidden, pass_), *args[1:])
        return None

    @eager_when_compiled
    def block_begin(self, block: nn.Module, args: Any) -> None:
        self.running.add(self.block_names[block])

    @eager_when_compiled
    def block_end(self, block: nn.Module, args: Any, output: Any) -> Any:
        """A block's output passes through `BlockFeedbackFunction` (registered with the pass like a layer's
        input), except where the true gradient is asked for (`nowt.metrics.backprop_mode`)."""
        self.running.discard(self.block_names[block])
        if self.block_layers[block].backprop_only or not torch.is_grad_enabled() or exporting():
            return output
        # A tuple (a Hugging Face layer's): the hidden state first gets B e; the other entries (a position
        # bias, attention weights, caches) keep the gradients autograd gives them.
        hidden = output[0] if isinstance(output, (tuple, list)) and output else output
        if not isinstance(hidden, Tensor) or hidden.dim() < 2:
            name = next(n for n, m in self.model.named_modules() if m is block)
            got = f"shape {tuple(hidden.shape)}" if isinstance(hidden, Tensor) else type(hidden).__name__
            raise ValueError(f"{self.rule.name}: block {name!r} must return a tensor with the batch on dim 0 "
                             f"(or a tuple with one first); got {got}")
        if not hidden.requires_grad:
            return output
        slot = self.current.register(block, hidden) if self.current is not None else -1
        fed = BlockFeedbackFunction.apply(hidden, self.current, slot)
        return outputs.put(output, [("item", 0)], fed) if hidden is not output else fed

    @eager_when_compiled
    def begin(self, model: nn.Module, args: Any) -> None:
        self.current = None if exporting() else self.rule.new_pass()
        self.running.clear()  # a forward that raised inside a block left it marked

    @eager_when_compiled
    def end(self, model: nn.Module, args: Any, output: Any) -> Any:
        """e is the gradient of the loss with respect to one tensor of the output (`outputs.pick`)."""
        pass_, self.current = self.current, None
        if pass_ is None:  # torch.export: no pass was opened
            return output
        if self.rule.error_at is not None:
            if not pass_.past_error and torch.is_grad_enabled():
                raise ValueError(f"{self.rule.name}: error_at={self.rule.error_at!r} did not run in this "
                                 f"forward, so there is no error point to take e at")
            return output
        try:
            picked, path = outputs.pick(output, self.rule.output, self.rule.name)
        except ValueError:
            if torch.is_grad_enabled():
                raise
            return output  # no backward follows (evaluation, a detector's boxes): nothing to take e of
        if picked.dim() not in (2, 3):
            raise ValueError(f"{self.rule.name}: the model's output must be one [N, n_out] tensor or a "
                             f"sequence [N, T, n_out] (the error e is the loss's gradient with respect to "
                             f"it); got a tensor of shape {tuple(picked.shape)}")
        pass_.resolve(model, picked)
        if torch.is_grad_enabled() and picked.requires_grad:
            return outputs.put(output, path, RecordError.apply(picked, pass_))
        return output
