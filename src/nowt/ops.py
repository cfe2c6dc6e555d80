"""Operations of trainable layers: forward, and one backward that pushes the output gradient to the input
through a *given* matrix (W for backprop, B for the feedback rules) while forming the usual local gradients
of the weight and bias.

Each op is a small frozen description of the layer's geometry, so it can be stored on an autograd context
without holding the layer (and so without holding its forward weight). `forward_saving` also returns what its
backward reads of the input: the input itself, or the locally connected layer's unfolded patches, which its
forward makes anyway and its weight gradient would otherwise make again.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

Grads = tuple[Tensor | None, Tensor | None, Tensor | None]


class _Op:
    def forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        raise NotImplementedError

    def forward_saving(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor]:
        """(output, what `backward` takes as its input argument): x itself by default."""
        return self.forward(x, weight, bias), x


@dataclass(frozen=True)
class LinearOp(_Op):
    def forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        out = F.linear(x, weight, bias)
        # F.linear of an N-d input returns a view of its 2-d product, and a view out of a custom autograd
        # Function may not be modified in place (a ReLU(inplace=True) after the layer raises): the same
        # memory, re-wrapped as a tensor of its own (nothing else holds the 2-d product). Always: asking
        # `_is_view()` first broke torch.compile's graph at every layer.
        return torch.ops.aten._unsafe_view(out, out.shape)

    def backward(
        self, grad_out: Tensor, x: Tensor, matrix: Tensor, needs: tuple[bool, bool, bool]
    ) -> Grads:
        grad_x = grad_out @ matrix if needs[0] else None
        g2 = grad_out.reshape(-1, grad_out.shape[-1])
        grad_w = g2.t() @ x.reshape(-1, x.shape[-1]) if needs[1] else None
        grad_b = g2.sum(0) if needs[2] else None
        return grad_x, grad_w, grad_b

    def weight_grad(self, x: Tensor, grad_out: Tensor) -> Tensor:
        return grad_out.reshape(-1, grad_out.shape[-1]).t() @ x.reshape(-1, x.shape[-1])


@dataclass(frozen=True)
class ConvOp(_Op):
    """Any N-d convolution, plain or transposed (`nn.Conv1d/2d/3d`, `nn.ConvTranspose1d/2d/3d`).

    One geometry for every case because ATen's `convolution` and `convolution_backward` take `transposed`
    and `output_padding` themselves: a transposed convolution's input gradient is the plain convolution of
    grad_out with `matrix`, and that is what ATen forms when told `transposed=True`.
    """

    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int
    transposed: bool = False
    output_padding: tuple[int, ...] = ()

    def _geometry(self) -> tuple[list[int], list[int], list[int], bool, list[int], int]:
        out_pad = list(self.output_padding) or [0] * len(self.stride)
        return (list(self.stride), list(self.padding), list(self.dilation), self.transposed, out_pad,
                self.groups)

    def forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        # The functional form torch's own layers call (not torch.convolution, which autocast leaves in fp32):
        # under autocast a converted layer gives the replaced layer's dtype and numbers.
        dims = len(self.stride)
        if self.transposed:
            return _CONV_TRANSPOSE[dims](x, weight, bias, self.stride, self.padding, self.output_padding or 0,
                                         self.groups, self.dilation)
        return _CONV[dims](x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def backward(
        self, grad_out: Tensor, x: Tensor, matrix: Tensor, needs: tuple[bool, bool, bool]
    ) -> Grads:
        # One fused ATen call, as autograd itself makes for a convolution: the input gradient goes through
        # `matrix`; the weight gradient never reads the weight, only its shape.
        bias_sizes = [grad_out.shape[1]] if needs[2] else None
        return torch.ops.aten.convolution_backward(grad_out, x, matrix, bias_sizes, *self._geometry(),
                                                   list(needs))

    def weight_grad(self, x: Tensor, grad_out: Tensor, weight_shape: torch.Size) -> Tensor:
        stand_in = grad_out.new_zeros(()).expand(weight_shape)  # only its shape is read
        grad = self.backward(grad_out, x, stand_in, (False, True, False))[1]
        assert grad is not None  # asked for
        return grad


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_TRANSPOSE = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


@dataclass(frozen=True)
class TransposedLinearOp(LinearOp):
    """y = x W + b with W stored (in, out): transformers' `Conv1D` (GPT-2). B is shaped like this W."""

    def forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        flat = x.reshape(-1, x.shape[-1])  # Conv1D's own forward: addmm (the same numbers under backprop)
        out = flat @ weight if bias is None else torch.addmm(bias, flat, weight)
        return out.view(*x.shape[:-1], weight.shape[-1])

    def backward(
        self, grad_out: Tensor, x: Tensor, matrix: Tensor, needs: tuple[bool, bool, bool]
    ) -> Grads:
        grad_x = grad_out @ matrix.t() if needs[0] else None
        grad_w = self.weight_grad(x, grad_out) if needs[1] else None
        grad_b = grad_out.reshape(-1, grad_out.shape[-1]).sum(0) if needs[2] else None
        return grad_x, grad_w, grad_b

    def weight_grad(self, x: Tensor, grad_out: Tensor) -> Tensor:
        return x.reshape(-1, x.shape[-1]).t() @ grad_out.reshape(-1, grad_out.shape[-1])


#: The 2-d case under its earlier name: `Conv2dOp(stride, padding, dilation, groups)`.
Conv2dOp = ConvOp


@dataclass(frozen=True)
class LocallyConnected2dOp(_Op):
    """A convolution's receptive fields with a separate filter at every output position (no weight sharing).

    weight: (out_h * out_w * out_channels, in_channels * kh * kw), one row per output unit, position-major,
    so each row is the fan-in of one unit (as in `nn.Linear`, which also gives random feedback drawn like
    the weight the right fan-in); bias: (out_channels, out_h, out_w). Every position is one matrix of a
    single batched matmul over the unfolded input: no Python loop over positions.
    """

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    input_size: tuple[int, int]

    @property
    def output_size(self) -> tuple[int, int]:
        (h, w), (ph, pw), (kh, kw), (sh, sw) = self.input_size, self.padding, self.kernel_size, self.stride
        return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1

    @property
    def weight_shape(self) -> tuple[int, int]:
        oh, ow = self.output_size
        kh, kw = self.kernel_size
        return oh * ow * self.out_channels, self.in_channels * kh * kw

    def _per_position(self, matrix: Tensor) -> Tensor:
        positions = self.output_size[0] * self.output_size[1]
        return matrix.view(positions, self.out_channels, -1)  # (L, O, K)

    def _columns(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != (self.in_channels, *self.input_size):
            raise ValueError(f"locally connected layer expects input (N, {self.in_channels}, "
                             f"{self.input_size[0]}, {self.input_size[1]}), got {tuple(x.shape)}")
        cols = F.unfold(x, self.kernel_size, padding=self.padding, stride=self.stride)  # (N, K, L)
        return _positions_first(cols)  # (L, N, K)

    def forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return self.forward_saving(x, weight, bias)[0]

    def forward_saving(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor]:
        """(output, the input's patches (L, N, K)): `backward` takes the patches in place of x."""
        cols = self._columns(x)
        out = torch.bmm(cols, self._per_position(weight).transpose(1, 2))  # (L, N, O)
        # (L, N, O) -> (N, O, out_h, out_w) as one contiguous copy: the permuted view has stride N*O along
        # positions, and every elementwise op after the layer (bias, tanh, target propagation's differences)
        # kept that layout and ran several times slower (a whole MNIST LC step: 10-15% faster this way).
        out = out.permute(1, 2, 0).reshape(x.shape[0], self.out_channels, *self.output_size).contiguous()
        return (out if bias is None else out + bias.to(out.dtype)), cols  # autocast: bf16 out, as a conv's

    def input_grad(self, grad_out: Tensor, matrix: Tensor) -> Tensor:
        """Sends (N, O, out_h, out_w) back through `matrix` onto the (N, C, H, W) receptive fields."""
        g = _positions_first(grad_out.flatten(2))  # (L, N, O)
        cols = torch.bmm(g, self._per_position(matrix))  # (L, N, K)
        return F.fold(cols.permute(1, 2, 0), self.input_size, self.kernel_size, padding=self.padding,
                      stride=self.stride)

    def weight_grad(self, x: Tensor, grad_out: Tensor, weight_shape: torch.Size | None = None) -> Tensor:
        # `weight_shape` is accepted so callers may treat this op like Conv2dOp; the shape is fixed here.
        return self._weight_grad(self._columns(x), grad_out)

    def _weight_grad(self, cols: Tensor, grad_out: Tensor) -> Tensor:
        g = _positions_first(grad_out.flatten(2)).transpose(1, 2)  # (L, O, N)
        return torch.bmm(g, cols.to(g.dtype)).reshape(self.weight_shape)

    def backward(
        self, grad_out: Tensor, cols: Tensor, matrix: Tensor, needs: tuple[bool, bool, bool]
    ) -> Grads:
        """As the other ops' backward, but given the input's patches (`forward_saving`), not the input."""
        grad_x = self.input_grad(grad_out, matrix) if needs[0] else None
        grad_w = self._weight_grad(cols, grad_out) if needs[1] else None
        grad_b = grad_out.sum(0) if needs[2] else None
        return grad_x, grad_w, grad_b


#: A trainable layer's op (`nowt.layers.FeedbackLayer.op`).
LayerOp = LinearOp | ConvOp | LocallyConnected2dOp


def _positions_first(t: Tensor) -> Tensor:
    """(N, C, L) -> an (L, N, C) view of a contiguous (N, L, C) copy: each position's (N, C) matrix then has
    unit stride along C, which `bmm` takes as it is; a plain permute has stride L there, and `bmm` copies
    every position's matrix apart first (MNIST LC's second layer took up to twice as long, forward and
    backward: benchmarks/lc_layer.py)."""
    return t.transpose(1, 2).contiguous().transpose(0, 1)


SECOND_DERIVATIVE = (b"nowt: a second derivative through a rule-trained layer (create_graph=True, e.g. "
                     b"a gradient penalty) is not defined: its backward sends the error through feedback, "
                     b"not the derivative of its forward; leave such layers on backprop (rule 'bp', or "
                     b"convert(..., exclude=[...]))")


def exporting() -> bool:
    """Whether `torch.export` is tracing: an inference graph, where a rule's backward bookkeeping (DFA's
    pass over the model) has no place and the layers' plain forward is the whole story."""
    return getattr(torch.compiler, "is_exporting", lambda: False)()


def refuse_under_transforms(rule: str, why: str) -> None:
    """Raises inside a `torch.func` transform (grad, vmap), naming the rule and why it cannot run there. (Not
    `peek_interpreter_stack() is not None`: dynamo wraps that None as an object, never None, so a compiled
    forward raised while tracing and fell back to eager frame by frame.)"""
    if torch._C._are_functorch_transforms_active():
        raise RuntimeError(f"{rule}: {why}, which torch.func transforms (grad, vmap) cannot do; train "
                           f"it with loss.backward()")


def eager_when_compiled(method: Callable[..., Any]) -> Callable[..., Any]:
    """`method` as is in eager; traced by dynamo (torch.compile), it runs eagerly instead, as one graph break:
    DFA's pass is Python state written in one node's backward and read in another's, and its forward reads
    buffers on the host (B's seed and shape), which a graph would bake in (a stale seed: another B)."""
    disabled = torch.compiler.disable(method, reason="dfa: the pass's Python state runs eagerly")

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_compiling():
            return disabled(*args, **kwargs)
        return method(*args, **kwargs)

    return wrapper


class _Refused(torch.autograd.Function):
    """Passes a rule's backward outputs on (copies) under create_graph; differentiating them raises."""

    generate_vmap_rule = True

    @staticmethod
    def forward(anchor: Tensor, *outputs: Tensor) -> tuple[Tensor, ...]:
        return tuple(o.clone() for o in outputs)

    @staticmethod
    def setup_context(ctx, inputs: tuple, output: Any) -> None:
        pass

    @staticmethod
    def backward(ctx, *grads: Any) -> Any:
        raise RuntimeError(SECOND_DERIVATIVE.decode())


def first_order_only(backward: Callable[..., Any]) -> Callable[..., Any]:
    """torch's `once_differentiable`, saying why: differentiated under create_graph, a rule's backward would
    give B (kp's, a parameter) and the rest gradients of no defined quantity, silently; this raises when the
    second backward reaches it. (A Function of its own, not `requires_grad_()`: `torch.func.grad` always
    builds the graph, and refuses `requires_grad_()`.)"""

    @functools.wraps(backward)
    def wrapper(ctx, *grads: Any) -> Any:
        with torch.no_grad():
            outputs = backward(ctx, *grads)
        anchor = next((g for g in grads if isinstance(g, Tensor) and g.requires_grad), None)
        if not torch.is_grad_enabled() or anchor is None:
            return outputs
        tensors = [o for o in outputs if isinstance(o, Tensor)]
        refused = iter(_Refused.apply(anchor, *tensors))
        return tuple(next(refused) if isinstance(o, Tensor) else o for o in outputs)

    return wrapper


class FeedbackFunction(torch.autograd.Function):
    """y = op(x, W, b); in backward the input gradient goes through `feedback` in place of W.

    Only x (or what the op's backward reads of it) and the feedback matrix are saved: W itself is never read
    in backward (no weight transport). When `feedback` requires grad (Kolen-Pollack) it receives exactly W's
    gradient. Written in `setup_context` form so that `torch.func` transforms (`grad`, `vmap`: per-example
    gradients) apply; an op that saves something other than x (the locally connected layer's patches)
    returns it as a second, non-differentiable output, as `torch.func` requires.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor | None, feedback: Tensor, op) -> Any:
        out, saved = op.forward_saving(x, weight, bias)
        return out if saved is x else (out, saved)

    @staticmethod
    def setup_context(ctx, inputs: tuple, output: Any) -> None:
        x, _, _, feedback, ctx.op = inputs
        saved = output[1] if isinstance(output, tuple) else x
        if saved is not x:
            ctx.mark_non_differentiable(saved)
        ctx.save_for_backward(saved, feedback)

    @staticmethod
    @first_order_only
    def backward(ctx, grad_out: Tensor, *_: Any):
        x, feedback = ctx.saved_tensors
        need_x, need_w, need_b, need_fb = ctx.needs_input_grad[:4]
        grad_x, grad_w, grad_b = ctx.op.backward(
            grad_out, x, feedback.to(grad_out.dtype), (need_x, need_w or need_fb, need_b)
        )
        return grad_x, (grad_w if need_w else None), grad_b, (grad_w if need_fb else None), None


_UNBOUND_APPLY = super(torch.autograd.Function, FeedbackFunction).apply  # torch._C._FunctionBase's


def autocast_apply(function, x: Tensor, weight: Tensor, bias: Tensor | None, *args) -> Tensor:
    """`function(x, weight, bias, *args)` as a built-in layer runs under autocast: the inputs cast to the
    autocast dtype, then autocast off inside, so a custom autograd Function sees one dtype throughout."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        x, weight = x.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
        with torch.autocast(device_type, enabled=False):
            return function(x, weight, bias, *args)
    return function(x, weight, bias, *args)


def feedback_forward(op, x: Tensor, weight: Tensor, bias: Tensor | None, feedback: Tensor) -> Tensor:
    """Applies `op` with `feedback` in the backward pass, honouring autocast like a built-in layer."""
    # torch's `apply` binds forward's signature on every call of a setup_context Function (a tenth of a
    # millisecond a layer); only torch.func transforms and dynamo need its path (no defaults to bind)
    plain = not (torch._C._are_functorch_transforms_active() or torch.compiler.is_compiling())
    out = autocast_apply(_UNBOUND_APPLY if plain else FeedbackFunction.apply, x, weight, bias, feedback, op)
    return out[0] if isinstance(out, tuple) else out
