"""Block-level DFA (Launay et al. 2020's "macro" DFA): a whole block's output gets `e @ B.flatten(1)` in place
of the gradient from downstream, and backprop runs inside the block.

`nowt.convert(model, "dfa", blocks=["blocks.*"])`: each outermost module whose qualified name matches a
pattern (exact, or `fnmatch` glob) is a block. Its output must be one tensor with the batch on dim 0; its B
is `(n_out, *output.shape[1:])`, drawn and stored as every DFA layer's (`storage`), seeded by the first
converted layer inside it. Converted layers inside a block compute backprop's gradients (they read their own
weights: no weight transport across blocks, but within one as in backprop); layers outside every block stay
per-layer DFA. Per-layer DFA on every projection of a transformer learns poorly (`results/vit-rules/`);
Launay et al. feed DFA to each transformer block instead. What the edge cases mean:
- A block after which no converted layer runs in the forward (one holding the output layer, say) has no B:
  its output gets the gradient that arrives from downstream, through no converted layer, as per-layer DFA's
  output layer learns from e itself (e when the block's output is the model's output).
- A block that is one converted layer is the same as that layer wrapped in a module: its output gets `B e`,
  its input the gradient back through its W.
- A block must run as a module, or its layers would train by plain backprop unnoticed: a container that is
  never called (`nn.ModuleList`, `nn.ModuleDict`) is refused at conversion, and a converted layer of a block
  that runs while its block is not running (a model calling a block's parts) is an error at that forward.
"""

from __future__ import annotations

import fnmatch
from typing import Protocol

import torch
from torch import Tensor, nn

from nowt.ops import first_order_only
from nowt.rules.base import RuleLayer, is_rule_layer
from nowt.rules.dfa.state import adopt_buffers


class BlockedRule(Protocol):
    """What `find_blocks` reads of the rule (`DirectFeedback`; a Protocol, so that this module, which the
    rule imports, need not import it back)."""

    blocks: tuple[str, ...]

    @property
    def name(self) -> str: ...


class ErrorSource(Protocol):
    """What a block's backward reads of the forward pass it ran in (`capture.Pass`)."""

    def check_error(self) -> None: ...

    def input_grad(self, slot: int) -> Tensor | None: ...


class BlockFeedbackFunction(torch.autograd.Function):
    """Identity on a block's output; backward returns the pass's e projected by the block's B, whatever
    gradient arrived from downstream."""

    @staticmethod
    def forward(ctx, output: Tensor, pass_: ErrorSource | None, slot: int) -> Tensor:
        ctx.pass_, ctx.slot, ctx.shape = pass_, slot, output.shape
        # The same memory under a tensor of its own, not a view: code after a block may work in place on
        # it (a ReLU(inplace=True)), which autograd refuses on a view out of a custom Function.
        return torch.ops.aten._unsafe_view(output, output.shape)

    @staticmethod
    @first_order_only
    def backward(ctx, grad: Tensor):
        if ctx.pass_ is None:
            raise RuntimeError("dfa: this block ran outside its converted model's forward, so it has no "
                               "output error e; call the model given to nowt.convert")
        ctx.pass_.check_error()
        projected = ctx.pass_.input_grad(ctx.slot)
        if projected is None:  # the last block: no converted layer downstream, so the true gradient
            return grad, None, None
        return projected.view(ctx.shape).to(grad.dtype), None, None


def find_blocks(rule: BlockedRule, model: nn.Module) -> list[tuple[str, nn.Module, RuleLayer]]:
    """(name, block, the first layer converted by `rule` inside it) for the outermost modules of `model`
    matching `rule.blocks`. Marks every converted layer in a block (`dfa_block`: the block's name) to run
    backprop, and gives each block the first one's seed."""
    named = [(n, m) for n, m in model.named_modules() if n]
    unmatched = [p for p in rule.blocks if not any(n == p or fnmatch.fnmatchcase(n, p) for n, _ in named)]
    if unmatched:
        raise ValueError(f"{rule.name}: blocks {unmatched} match(es) no module of {type(model).__name__}; "
                         f"module names: {', '.join(n for n, _ in named)[:300]}")
    blocks: dict[str, nn.Module] = {}
    for name, module in named:
        inside = any(name.startswith(b + ".") for b in blocks)
        if not inside and any(name == p or fnmatch.fnmatchcase(name, p) for p in rule.blocks):
            blocks[name] = module
    found = []
    for name, block in blocks.items():
        if isinstance(block, (nn.ModuleList, nn.ModuleDict)):
            raise ValueError(f"{rule.name}: block {name!r} is a {type(block).__name__}, a container the "
                             f"model never calls, so its layers would train by plain backprop; name the "
                             f"modules it holds ({name + '.*'!r})")
        layers = [m for m in block.modules() if is_rule_layer(m) and m.rule is rule]
        if not layers:
            raise ValueError(f"{rule.name}: block {name!r} holds no layer converted by {rule.name}; a block "
                             f"must contain a trained layer (its seed draws the block's B)")
        for layer in layers:
            layer.dfa_block = name
        # a block that is itself a converted layer is both (`has_feedback`); torch types Module.__setattr__'s
        # value as Tensor | Module, though any value is stored
        block.dfa_is_block = True  # type: ignore[assignment]
        if "feedback_seed" not in block._buffers:
            block.register_buffer("feedback_seed", layers[0].feedback_seed.clone())
            block.register_load_state_dict_pre_hook(adopt_buffers(("feedback", "feedback_shape")))
        found.append((name, block, layers[0]))
    return found
