"""The DFA rule: every converted layer's input gets `e @ B.flatten(1)` in place of the gradient through W.

Its W and b get the usual local gradients from whatever arrives at its output, so the output layer learns
from `e` and a hidden layer from `(B e) * f'(a)`, as in the paper. `B = layer.feedback` has shape
`(n_out, *input.shape[1:])`, fixed at the first forward, where it is created (kept in a `feedback_shape`
buffer, so inputs may not change shape). Only paths through W are replaced: parameter-free paths (identity
skips, batch norm, ReLU, pooling, additions) still carry gradients exactly, so in a residual block the block
input gets `B_conv1 e` plus, through the skip, what the block's output got. The first layer's input gets
its projection only when that input requires grad.

B is uniform in `[-1, 1] * scale / sqrt(D)`, `D = prod(input.shape[1:])`, as in Nøkland's code, or with
`feedback_init="xavier"` in `[-1, 1] * scale * sqrt(6 / (D + n_out))` (Glorot uniform, as BioTorch draws it;
`nowt train --init xavier` selects it), or with `feedback_init="normal_fan_avg"` from
`N(0, scale^2 / (D + n_out))` (Akrout et al.'s; `nowt train --init normal_fan_avg` selects it); where it is
kept: `storage.py`. `zero_init=True` zeroes every
converted layer's weight and bias (Nøkland trains tanh nets from zero).

`position_feedback="shared"` gives a Linear layer's input and a block's output of shape `(N, *positions, C)`
one `(n_out, C)` B for every position (`storage.Broadcast`), whatever the number of positions; a model with
no such tensor is refused at the first forward. `blocks` (`blocks.py`): block-level DFA.

The output: e is the loss's gradient with respect to one tensor of what the model returns, picked by
`output=` (a key, an attribute, an index or a callable; by default a tensor itself, or a dict's, a
ModelOutput's or a tuple's one logits tensor: the rule is in `outputs.py`). It is `[N, n_out]`, or a
sequence `[N, T, V]`, for which DFA is per token: e_t = dL/d(output[:, t]) `(N, V)` is position t's own
error. A Linear layer's input or a block's output `(N, T, *rest)` with the output's T positions then gets,
at position t, `e_t @ B_t.flatten(1)`: B is `(V, T, *rest)` and B_t = B[:, t] (full), or one `(V, C)` for
every t (position_feedback="shared"), never another position's error (`storage.PerToken`). Any other
module (a convolution, an input with no positions, cross-attention's memory of another length S) gets what
an `[N, V]` output's error `sum_t e_t` would give it (`storage.Summed`). A full B fixes T (and S) at the
first forward; lengths that vary between batches, and a projection that sees both queries and a memory of
another length, need "shared". B's scale is that of the same shape in the `[N, n_out]` case. `error_at=NAME`
takes e at that module's input instead (`capture.Context.error_point`): what runs after it learns by backprop.

`conv_feedback="kernel"` gives each convolution BioTorch's B instead: `n_out x in_channels x kernel`, e
spread over the output positions and sent back by the convolution's input gradient with B for W
(`n_out * in_channels * taps` numbers where the full B has `n_out * D`); fans as a convolution weight's,
`in_channels * taps` and `n_out * taps`. Other layers keep the full B.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, TypeGuard

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nowt.ops import (
    ConvOp,
    LinearOp,
    autocast_apply,
    eager_when_compiled,
    first_order_only,
    refuse_under_transforms,
)
from nowt.rules.base import LayerLike, Option, Rule, RuleLayer, declare, host_value, rule_layers
from nowt.rules.dfa import storage
from nowt.rules.dfa.blocks import find_blocks
from nowt.rules.dfa.capture import Context, Pass
from nowt.rules.dfa.state import adopt_buffers, anchor, buffer
from nowt.rules.dfa.storage import AnyProjection, Broadcast, KernelProjection, Projection


class DirectFeedbackFunction(torch.autograd.Function):
    """y = op(x, W, b); backward: local W and b gradients, and the input gets the pass's e projected by B.

    Only x (or what the op's backward reads of it) is saved; W is never read in backward (a zero-stride
    stand-in gives the op W's shape). `pads`: the padding the layer gave its input (F.pad's list) before x:
    B spans the input itself, and its projection goes to the interior of x, from where the padding's own
    backward returns it to the input unchanged (the border entries get nothing).
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, op, pass_: Pass | None,
                slot: int, pads: tuple[int, ...] = ()) -> Tensor:
        ctx.op, ctx.pass_, ctx.slot, ctx.pads = op, pass_, slot, pads
        ctx.weight_shape, ctx.input_dtype = weight.shape, x.dtype
        ctx.input_shape = unpadded(x.shape, pads)
        out, saved = op.forward_saving(x, weight, bias)
        ctx.save_for_backward(saved)
        return out

    @staticmethod
    @first_order_only
    def backward(ctx, grad_out: Tensor):
        (saved,) = ctx.saved_tensors
        if ctx.pass_ is None:
            raise RuntimeError("dfa: this layer ran outside its converted model's forward, so it has no "
                               "output error e; call the model given to nowt.convert")
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        ctx.pass_.check_error()
        grad_x = ctx.pass_.input_grad(ctx.slot) if need_x else None  # the first layer's is skipped
        if grad_x is not None:
            grad_x = grad_x.view(ctx.input_shape).to(ctx.input_dtype)
            if ctx.pads:
                grad_x = F.pad(grad_x, ctx.pads)
        stand_in = grad_out.new_zeros(()).expand(ctx.weight_shape)
        _, grad_w, grad_b = ctx.op.backward(grad_out, saved, stand_in, (False, need_w, need_b))
        return grad_x, grad_w, grad_b, None, None, None, None


def unpadded(shape: torch.Size, pads: tuple[int, ...]) -> torch.Size:
    """The shape of a tensor before `F.pad(t, pads)` made one of `shape`."""
    sizes = list(shape)
    for i in range(len(pads) // 2):
        sizes[-1 - i] -= pads[2 * i] + pads[2 * i + 1]
    return torch.Size(sizes)


class DirectFeedback(Rule):
    name = "dfa"
    FEEDBACK_INITS = ("uniform", "xavier", "normal_fan_avg")
    CONV_FEEDBACKS = ("full", "kernel")
    POSITION_FEEDBACKS = ("full", "shared")
    options: ClassVar[dict[str, Option]] = declare(
        Option("storage", "dense", "dfa: where B lives: a buffer per layer (dense), slices of one matrix "
               "(shared, as TinyDFA), or redrawn from its seed chunk by chunk in backward (seeded: no B in "
               "memory, for ImageNet-sized layers); the same gradients (`storage.py`)",
               choices=storage.STORAGES),
        Option("chunk", 4096, "columns of B per chunk", gt=0, config=False),
        Option("scale", 1.0, "a factor on B's initial draw", gt=0.0, config=False),
        Option("zero_init", False, "zero every converted layer's weight and bias", config=False),
        # nowt train sets it from --init xavier / normal_fan_avg
        Option("feedback_init", "uniform", "B's distribution", choices=FEEDBACK_INITS, config=False),
        Option("conv_feedback", "full", "dfa: a convolution's B spans its whole input (full) or is "
               "BioTorch's n_out x in_channels x kernel, e spread over the output positions (kernel)",
               choices=CONV_FEEDBACKS),
        Option("blocks", (), "dfa: modules whose output gets B e as a whole, with backprop inside them "
               "(Launay et al. 2020), by name or glob, e.g. 'blocks.*' for vit", kind=tuple[str, ...],
               metavar="NAME[,NAME...]"),
        Option("position_feedback", "full", "dfa: a sequence's B, for Linear inputs and block outputs "
               "(N, T, C): n_out x T x C (full) or one n_out x C for every position (shared, as Launay "
               "et al. 2020 for transformers)", choices=POSITION_FEEDBACKS),
        Option("output", None, "which tensor of the model's output e is taken of (`outputs.py`)", kind=Any,
               config=False),
        Option("error_at", None, "dfa: the module (by name) at whose input e is taken, e.g. a loss module "
               "inside the model; none: the model's output", kind=str | None),
    )
    transports_weights = False
    storage: str  # the options' values (set by `Rule.__init__`)
    chunk: int
    scale: float
    zero_init: bool
    feedback_init: str
    conv_feedback: str
    output: Any
    blocks: tuple[str, ...] = ()  # the defaults of the options a subclass (ifa) does not take
    position_feedback = "full"
    error_at: str | None = None

    def validate(self) -> None:
        super().validate()  # each option against its declaration: choices, chunk and scale
        if not (self.output is None or callable(self.output) or isinstance(self.output, (int, str))
                and not isinstance(self.output, bool) and self.output != ""):
            raise ValueError(f"output must be a key, an attribute name, an index or a callable picking the "
                             f"tensor e is taken of from the model's output; got {self.output!r}")
        if isinstance(self.blocks, str) or not all(isinstance(b, str) and b for b in self.blocks):
            raise ValueError(f"blocks must be a list of module names or glob patterns (e.g. ['blocks.*']), "
                             f"got {self.blocks!r}")
        self.blocks = tuple(self.blocks)
        if self.blocks:
            self.transports_weights = True  # backprop inside each block reads that block's weights
        if self.error_at is not None:
            if not (isinstance(self.error_at, str) and self.error_at):
                raise ValueError(f"error_at must name a module of the model (e takes the loss's gradient at "
                                 f"its input), got {self.error_at!r}")
            if self.output is not None:
                raise ValueError("error_at and output both say where e is taken; give one")
            self.transports_weights = True  # e reaches the error point by backprop through what follows it
        if self.conv_feedback == "kernel" and self.storage != "dense":
            raise ValueError(f"conv_feedback='kernel' keeps its small B dense; storage {self.storage!r} is "
                             f"for the full B")

    def setup(self, layer: RuleLayer, generator: torch.Generator) -> None:
        op = layer.op
        if self.kernel_form(layer) and isinstance(op, ConvOp) and (op.transposed or op.groups != 1):
            raise ValueError(f"{self.name}: conv_feedback='kernel' needs a plain convolution (groups 1, not "
                             f"transposed); got {type(layer).__name__} with groups {op.groups}"
                             f"{', transposed' if op.transposed else ''}")
        seed = int(torch.randint(0, 2**32, (), generator=generator))
        layer.dfa_block = None  # or the name of the block it is in (`blocks.find_blocks`)
        layer.register_buffer("feedback_seed", torch.tensor(seed, device=layer.weight.device))
        layer.register_load_state_dict_pre_hook(adopt_buffers(("feedback", "feedback_shape")))
        if self.zero_init:
            with torch.no_grad():
                for p in (layer.weight, layer.bias):
                    if p is not None:
                        p.zero_()

    def setup_model(self, model: nn.Module) -> None:
        layers = self.layers(model).values()
        if self.conv_feedback == "kernel" and not any(isinstance(getattr(m, "op", None), ConvOp)
                                                      for m in layers):
            raise ValueError(f"{self.name}: conv_feedback='kernel' (--conv-feedback kernel) shapes the B of "
                             f"a convolution, but this model converts none; drop it")
        ctx = Context(self, model)
        for layer in layers:
            layer.dfa_context = ctx
        for name, block, layer in find_blocks(self, model):
            ctx.add_block(block, layer, name)
        if self.error_at is not None:
            modules = dict(model.named_modules())
            if self.error_at not in modules:
                names = ", ".join(n for n in modules if n)[:300]
                raise ValueError(f"{self.name}: error_at={self.error_at!r} is no module of "
                                 f"{type(model).__name__}; module names: {names}")
            ctx.add_error_point(modules[self.error_at])
        model.register_forward_pre_hook(ctx.begin)
        model.register_forward_hook(ctx.end)
        model.register_load_state_dict_pre_hook(adopt_buffers(("dfa_feedback",)))

    def new_pass(self) -> Pass:
        """The record of one forward pass (IFA keeps more in its own)."""
        return Pass(self)

    @eager_when_compiled
    def forward(self, layer: RuleLayer, x: Tensor) -> Tensor:
        refuse_under_transforms(self.name, "the output error reaches the layers through hooks on the pass")
        if layer.dfa_block is not None:  # inside a block: backprop (the block's output gets B e)
            if torch.is_grad_enabled():
                layer.dfa_context.check_in_block(layer)
            return layer.op.forward(x, layer.weight, layer.bias)
        pass_ = layer.dfa_context.current
        if pass_ is not None and pass_.past_error:  # after error_at's point: backprop (e arrives through it)
            return layer.op.forward(x, layer.weight, layer.bias)
        # a convolution's explicit padding ("same", a padding_mode): B spans the input, not its padded copy
        # (the kernel form's B is the convolution's own, whose input gradient the padding's backward takes)
        pads = () if self.kernel_form(layer) else tuple(getattr(layer, "last_padding", ()))
        shape = unpadded(x.shape, pads)
        slot = pass_.register(layer, shape) if pass_ is not None else -1
        return autocast_apply(DirectFeedbackFunction.apply, x, layer.weight, layer.bias, layer.op, pass_,
                              slot, pads)

    def note_shape(self, layer: LayerLike, shape: torch.Size) -> None:
        """Fixes the shape of the layer's B (`stored_shape`) at its first forward."""
        shape = self.stored_shape(layer, shape)
        known = buffer(layer, "feedback_shape")
        if known is None:
            layer.register_buffer("feedback_shape", torch.tensor(shape, device=anchor(layer).device))
        elif tuple(host_value(layer, "feedback_shape")) != tuple(shape):
            fixed = tuple(host_value(layer, "feedback_shape"))
            if len(fixed) > 2 and len(shape) == 2 and (fixed[0], fixed[-1]) == tuple(shape):
                # saved when a shared B's shape was kept as (n_out, *positions, C): the same B
                layer.register_buffer("feedback_shape", torch.tensor(shape, device=known.device))
                return
            sequence = len(fixed) > 2 and isinstance(getattr(layer, "op", None), (LinearOp, type(None)))
            hint = ("; a sequence whose length varies (or attention over a memory of another length) needs "
                    "position_feedback='shared', one B for every position") if sequence else ""
            raise ValueError(f"{self.name}: a layer's feedback has shape (n_out, *input) = {fixed}, fixed at "
                             f"the first forward, but now needs {tuple(shape)}{hint}")

    def stored_shape(self, module: LayerLike, shape: torch.Size) -> torch.Size:
        """The shape of the B a module keeps, from `(n_out, *input.shape[1:])`: that, or `(n_out, C)` where
        one B serves every position (`shares_positions`)."""
        return torch.Size((shape[0], shape[-1])) if self.shares_positions(module, shape) else shape

    def follows_tokens(self, module: LayerLike, shape: torch.Size, tokens: int) -> bool:
        """Whether a module of shape `(n_out, *input.shape[1:])` takes per-token errors from a sequence
        output `(N, tokens, n_out)`: a Linear layer's input or a block's output `(N, tokens, ..., C)`."""
        op = getattr(module, "op", None)
        return len(shape) > 2 and shape[1] == tokens and (op is None or isinstance(op, LinearOp))

    def kernel_form(self, layer: LayerLike) -> TypeGuard[RuleLayer]:
        """Whether the layer's B is BioTorch's `n_out x in_channels x kernel` (a convolution, with
        conv_feedback="kernel")."""
        return self.conv_feedback == "kernel" and isinstance(getattr(layer, "op", None), ConvOp)

    def has_feedback(self, layer: LayerLike) -> bool:
        """Whether the layer's input (a block's output) gets `B e`: every dfa layer's but those in blocks;
        a block that is itself a layer has its block's B."""
        return getattr(layer, "dfa_is_block", False) or getattr(layer, "dfa_block", None) is None

    def feedback_modules(self, model: nn.Module) -> list[LayerLike]:
        """This rule's layers, then its blocks: every module that may get a B."""
        layers = list(self.layers(model).values())
        return [*layers, *layers[0].dfa_context.block_layers]

    def projection(self, model: nn.Module, layer: LayerLike, shape: torch.Size,
                   tokens: int | None = None) -> AnyProjection | None:
        """The layer's B as a projection of e, creating its stored state at the first forward; `shape` is
        `(n_out, *input.shape[1:])`, `tokens` the output's positions T where it is a sequence."""
        if not self.has_feedback(layer):
            return None
        project = self._projection(model, layer, shape)
        if tokens is None:
            return project
        if self.follows_tokens(layer, shape, tokens):
            inner = project.project if isinstance(project, Broadcast) else project
            assert isinstance(inner, Projection)  # a kernel B is a convolution's, which follows no tokens
            return storage.PerToken(inner, shape)
        return storage.Summed(project)

    def _projection(self, model: nn.Module, layer: LayerLike,
                    shape: torch.Size) -> Projection | Broadcast | KernelProjection:
        seed = int(host_value(layer, "feedback_seed"))
        full, shape = shape, self.stored_shape(layer, shape)  # (n_out, C): broadcast over the positions
        normal = self.feedback_init == "normal_fan_avg"
        if self.kernel_form(layer):  # fans as a convolution weight's
            taps = math.prod(layer.weight.shape[2:])
            scale = self._scale(layer.weight.shape[1] * taps, shape[0] * taps)
            return storage.kernel(layer, seed, shape, scale, self.chunk, normal)
        scale = self._scale(math.prod(shape[1:]), shape[0])
        project: Projection
        if self.storage == "dense":
            project = storage.dense(layer, seed, shape, scale, self.chunk, normal)
        elif self.storage == "shared":
            project = storage.shared(model, self.feedback_modules(model), shape, scale, self.chunk, self.name,
                                     normal)
        else:
            project = storage.seeded(seed, shape, scale, self.chunk, anchor(layer), normal)
        return storage.Broadcast(project, full) if shape != full else project

    def _scale(self, fan_in: int, fan_out: int) -> float:
        """The bound of B's uniform draw: `scale / sqrt(fan_in)`, or Glorot's with feedback_init="xavier";
        with "normal_fan_avg", the std of its normal draw, `scale / sqrt(fan_in + fan_out)`."""
        if self.feedback_init == "xavier":
            return self.scale * math.sqrt(6 / (fan_in + fan_out))
        if self.feedback_init == "normal_fan_avg":
            return self.scale / math.sqrt(fan_in + fan_out)
        return self.scale / math.sqrt(fan_in)

    def shares_positions(self, module: LayerLike, shape: torch.Size) -> bool:
        """Whether a module's B is one `(n_out, C)` for every position of a `(N, *positions, C)` tensor: with
        position_feedback="shared", for a Linear layer's input (C its features) and a block's output."""
        op = getattr(module, "op", None)
        return (self.position_feedback == "shared" and len(shape) > 2
                and (op is None or isinstance(op, LinearOp)))

    def materialized_feedback(self, layer: RuleLayer) -> Tensor:
        """`layer.feedback` for the shared and seeded storages (a new tensor on every access)."""
        if not self.has_feedback(layer):
            raise AttributeError(f"{self.name}: this layer has no feedback matrix; its error arrives through "
                                 f"the forward weights")
        known = buffer(layer, "feedback_shape")
        if known is None or self.storage == "dense":  # dense: the buffer, once the first forward made it
            raise AttributeError(f"{self.name}: a layer's feedback has shape (n_out, *input.shape[1:]) and "
                                 f"is created at the first forward pass; run one first")
        project = self.projection(layer.dfa_context.model, layer, torch.Size(known.tolist()))
        assert project is not None  # the layer has a B (`has_feedback`)
        return project.matrix(layer.weight)

    def alignment_pairs(self, model: nn.Module) -> dict[str, tuple[Tensor | None, Tensor | None]]:
        """B against what backprop would send instead: `e @ W_L @ ... @ W_l` without the activations'
        derivatives, so B `(n_out, in_l)` is compared with the product of the forward weights of the layer
        and every layer after it (W_L itself for the output layer). Defined for an `nn.Sequential` chain of
        Linear layers only; elsewhere (convolutions, skips, branches), before the first forward, and for
        layers without a B, the pair is (None, None)."""
        layers = rule_layers(model)
        chain = isinstance(model, nn.Sequential) and all(isinstance(m, nn.Linear) for m in layers.values())
        pairs: dict[str, tuple[Tensor | None, Tensor | None]] = {}
        product: Tensor | None = None
        for name, layer in reversed(layers.items()):
            if chain:
                w = layer.weight.detach()
                product = w if product is None else product @ w
            if layer.rule is not self:
                continue
            ready = (layer.dfa_block is None and self.has_feedback(layer)  # a block's B is at its output
                     and buffer(layer, "feedback_shape") is not None)
            pairs[name] = ((layer.feedback, product.clone()) if chain and ready and product is not None
                           else (None, None))
        return pairs
