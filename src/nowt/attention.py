"""Rule-trained `nn.MultiheadAttention`: its input projections and `out_proj` learn by the rule, while
softmax(QK^T)V keeps autograd's gradients (it multiplies activations, not weights).

The layer keeps `nn.MultiheadAttention`'s parameters and state-dict keys. Each input projection is a
`Projection` child: a `FeedbackLayer` whose `.weight`/`.bias` are the owner's (packed) parameters, so every
rule (its feedback state, KP's learned B, the mirror, DFA, angles) sees an ordinary linear layer.

Attention modules that hold `nn.Linear` children but call `F.linear` on their weights (torchvision's Swin
window attention) would leave those weights on backprop once the children are converted: `RoutedLinear`
sends such calls to the converted children (`register_torchvision`).
"""

from __future__ import annotations

import copy
import math
import sys
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from nowt.layers import CONVERTIBLE, FeedbackLayer, Replacement, convertible
from nowt.ops import LinearOp
from nowt.rules import Rule


class Projection(FeedbackLayer):
    """A linear input projection of attention: W is the owner's `weight_name` parameter (the whole packed
    `in_proj_weight`, a leaf, so angles and optimizers see the real parameter), b rows of `in_proj_bias`."""

    def __init__(self, owner: nn.MultiheadAttention, weight_name: str, rows: slice, rule: Rule) -> None:
        super().__init__()
        object.__setattr__(self, "_owner", owner)  # not a submodule: no cycle in named_modules
        self.weight_name, self.rows, self.rule, self.op = weight_name, rows, rule, LinearOp()

    @property
    def weight(self) -> Tensor:
        return getattr(self._owner, self.weight_name)

    @property
    def bias(self) -> Tensor | None:
        b = self._owner.in_proj_bias
        return None if b is None else b[self.rows]

    def extra_repr(self) -> str:
        return f"{self.weight_name}, rule={self.rule}"


@convertible(nn.MultiheadAttention)
class MultiheadAttention(nn.MultiheadAttention):
    """`nn.MultiheadAttention` whose projections go through a rule; attention itself is
    `F.scaled_dot_product_attention` (or, with `need_weights`, the same maths written out)."""

    in_proj: Projection  # packed q, k, v (`_qkv_same_embed_dim`), else q_proj, k_proj, v_proj
    q_proj: Projection
    k_proj: Projection
    v_proj: Projection

    @classmethod
    def from_module(cls, m: nn.MultiheadAttention, rule: Rule) -> MultiheadAttention:
        layer = cls(m.embed_dim, m.num_heads, m.dropout, bias=m.in_proj_bias is not None,
                    add_bias_kv=m.bias_k is not None, add_zero_attn=m.add_zero_attn, kdim=m.kdim, vdim=m.vdim,
                    batch_first=m.batch_first, device="meta")
        for name, p in m.named_parameters(recurse=False):
            setattr(layer, name, p)
        layer.out_proj = m.out_proj  # a Linear: `nowt.convert` swaps it as one
        e = m.embed_dim
        if m._qkv_same_embed_dim:
            layer.in_proj = Projection(layer, "in_proj_weight", slice(0, 3 * e), rule)
        else:
            for i, name in enumerate("qkv"):
                setattr(layer, f"{name}_proj", Projection(layer, f"{name}_proj_weight",
                                                          slice(i * e, (i + 1) * e), rule))
        # Any forward hook in a TransformerEncoderLayer turns off its fused inference path, which would read
        # in_proj_weight itself and skip these layers (the weight mirror then never sees their inputs).
        layer.register_forward_pre_hook(_keep_module_path)
        return layer.train(m.training)

    def rule_parts(self) -> list[Projection]:
        """The layers `nowt.convert` sets up with the rule (out_proj is converted on its own)."""
        return [m for m in self.children() if isinstance(m, Projection)]

    def _project(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        e = self.embed_dim
        if not self._qkv_same_embed_dim:
            return self.q_proj(query), self.k_proj(key), self.v_proj(value)
        if query is key and key is value:  # self-attention: one packed matmul, as torch does
            return self.in_proj(query).chunk(3, dim=-1)
        # Distinct inputs: the packed projection of each input, keeping its rows. The other rows get a
        # zero gradient, so W's, B's and the inputs' gradients are exactly those of the three slices.
        if key is value:
            kv = self.in_proj(key)
            return self.in_proj(query)[..., :e], kv[..., e:2 * e], kv[..., 2 * e:]
        return self.in_proj(query)[..., :e], self.in_proj(key)[..., e:2 * e], self.in_proj(value)[..., 2 * e:]

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                need_weights: bool = True, attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        """As `nn.MultiheadAttention.forward`. Inside, tensors are batch-first, so every projection sees
        the batch along dim 0 (as DFA needs)."""
        unbatched = query.dim() == 2
        if unbatched or not self.batch_first:
            query, key, value = _same_objects(
                (lambda t: t.unsqueeze(0)) if unbatched else (lambda t: t.transpose(0, 1)), query, key, value)
            if unbatched and key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint (as nn.MultiheadAttention)")
        q, k, v = self._project(query, key, value)
        for extra in (self.bias_k, self.bias_v), (k.new_zeros(()),) * 2 if self.add_zero_attn else None:
            extra_k, extra_v = extra if extra is not None else (None, None)
            if extra_k is None or extra_v is None:  # bias_k and bias_v: both or neither
                continue  # one more key and value (learned, or zeros), which no mask hides
            k, v = (torch.cat([t, e.expand(t.shape[0], 1, t.shape[2])], 1)
                    for t, e in ((k, extra_k), (v, extra_v)))
            attn_mask, key_padding_mask = (None if m is None else F.pad(m, (0, 1))
                                           for m in (attn_mask, key_padding_mask))
        n, length, s, h = q.shape[0], q.shape[1], k.shape[1], self.num_heads
        q, k, v = (t.unflatten(-1, (h, -1)).transpose(1, 2) for t in (q, k, v))
        causal = is_causal and key_padding_mask is None and not need_weights
        mask = None if causal else _merge_masks(attn_mask, key_padding_mask, n, h, length, s, q.dtype)
        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
            weights = torch.softmax(scores if mask is None else scores + mask, dim=-1)
            weights = F.dropout(weights, dropout)  # returned after dropout, as torch's own layer does
            out = weights @ v
            weights = weights.mean(1) if average_attn_weights else weights
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal)
        out = self.out_proj(out.transpose(1, 2).flatten(2))
        if unbatched:
            return out.squeeze(0), None if weights is None else weights.squeeze(0)
        return (out if self.batch_first else out.transpose(0, 1)), weights


def _keep_module_path(module: nn.Module, args: tuple) -> None:
    """A no-op forward pre-hook: its presence keeps `nn.TransformerEncoderLayer` off its fused fast path."""


def _same_objects(fn, *tensors: Tensor) -> list[Tensor]:
    """`fn` of each tensor, keeping which arguments were one object (self-attention's packed projection)."""
    done: dict[int, Tensor] = {}
    return [done.setdefault(id(t), fn(t)) if id(t) not in done else done[id(t)] for t in tensors]


def _merge_masks(attn_mask: Tensor | None, key_padding_mask: Tensor | None, n: int, h: int, length: int,
                 s: int, dtype: torch.dtype) -> Tensor | None:
    """One additive float mask broadcastable to (N, H, L, S), from torch's boolean (True: masked) or float
    attn_mask of (L, S) or (N * H, L, S) and key_padding_mask of (N, S)."""

    def additive(m: Tensor) -> Tensor:
        return torch.zeros_like(m, dtype=dtype).masked_fill_(m, float("-inf")) if m.dtype == torch.bool \
            else m.to(dtype)

    mask = None
    if attn_mask is not None:
        mask = additive(attn_mask)
        mask = mask.view(n, h, length, s) if mask.dim() == 3 else mask
    if key_padding_mask is not None:
        pad = additive(key_padding_mask).view(n, 1, 1, s)
        mask = pad if mask is None else mask + pad
    return mask


class RoutedLinear(TorchFunctionMode):
    """Within it, `F.linear(x, W, b)` with W the weight of one of `layers` runs that rule-trained layer.

    x's leading dimensions are refolded to (batch, -1) for the call (Swin's windows are batch * windows
    rows), so DFA sees the model's batch on dim 0; a linear map acts per row, so nothing else changes. A b
    other than the layer's own (Swin V2 zeroes the key bias in a copy) is swapped in by adding b - bias:
    its gradient reaches the copy's source, and the layer's own bias gets none from that term."""

    def __init__(self, layers: list[FeedbackLayer], batch: int) -> None:
        super().__init__()
        self.layers, self.batch = {id(m.weight): m for m in layers}, batch

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        layer = None
        if func is F.linear:
            layer = self.layers.get(id(args[1] if len(args) > 1 else kwargs.get("weight")))
        if layer is None:
            return func(*args, **kwargs)  # the mode is off in here: nested calls are not routed
        x, bias = args[0], args[2] if len(args) > 2 else kwargs.get("bias")
        out = layer(x.reshape(self.batch, -1, x.shape[-1])).view(*x.shape[:-1], -1)
        if bias is not layer.bias:
            out = out + ((0 if bias is None else bias) - (0 if layer.bias is None else layer.bias))
        return out


class RoutedAttention(nn.Module):
    """Mixin over an attention module whose forward calls `F.linear` on its `nn.Linear` children's weights
    (`linear_names`) and never calls those children themselves (their own F.linear would be routed again),
    input (batch, ...): its own forward runs with those calls routed to the children, which `nowt.convert`
    converts like any Linear."""

    linear_names: tuple[str, ...] = ()

    @classmethod
    def from_module(cls, m: nn.Module, rule: Rule) -> RoutedAttention:
        layer = cls.__new__(cls)
        # The same parameters and buffers, in dicts of its own: converting its children leaves m intact.
        layer.__dict__.update({k: copy.copy(v) if isinstance(v, dict) else v for k, v in vars(m).items()})
        return layer

    def rule_parts(self) -> list[FeedbackLayer]:
        return []  # nothing of its own: the Linear children are converted on their own

    def forward(self, x: Tensor, *args, **kwargs):
        linears = [getattr(self, n) for n in self.linear_names]
        if not all(isinstance(m, FeedbackLayer) for m in linears):  # not (yet) converted: plain forward
            return super().forward(x, *args, **kwargs)
        with RoutedLinear(linears, x.shape[0]):
            return super().forward(x, *args, **kwargs)


def register_torchvision() -> None:
    """Makes torchvision's Swin window attention (V1 and V2: qkv and proj by `F.linear`) convertible, once
    torchvision has defined it: nowt never imports torchvision itself. `nowt.convert` calls this."""
    swin = sys.modules.get("torchvision.models.swin_transformer")
    for name in ("ShiftedWindowAttention", "ShiftedWindowAttentionV2"):
        base = getattr(swin, name, None)
        if base is not None and base not in CONVERTIBLE:
            cls = type(base.__name__, (RoutedAttention, base),
                       {"linear_names": ("qkv", "proj"), "__module__": __name__})
            CONVERTIBLE[base] = cast(Replacement, cls)  # a class made at run time: `type` to mypy


def keep_dense(model: nn.Module) -> None:
    """Turns off `nn.TransformerEncoder`'s nested-tensor path (eval, no_grad, a padding mask) where its
    attention is converted: that path hands the layers nested tensors, which the converted projections do
    not take. Where the original would have taken it, the padded positions of the output are set to zero,
    as that path returns them (`_zero_padded`); the other positions are computed alike."""
    for m in model.modules():
        converted = any(isinstance(a, MultiheadAttention) for a in m.modules())
        if isinstance(m, nn.TransformerEncoder) and converted and m.use_nested_tensor:
            m.use_nested_tensor = False
            m.register_forward_hook(_zero_padded, with_kwargs=True)


def _zero_padded(encoder: nn.TransformerEncoder, args: tuple, kwargs: dict, output: Tensor) -> Tensor:
    """Zeros at the padded positions where torch's `TransformerEncoder.forward` would have run its
    nested-tensor path (its conditions, in its order, as of torch 2.13), whose padded output is zeros."""
    names = ("src", "mask", "src_key_padding_mask")
    given = {**dict(zip(names, args, strict=False)), **kwargs}
    src, mask, padding = given["src"], given.get("mask"), given.get("src_key_padding_mask")
    first = encoder.layers[0]
    grads = src.requires_grad or any(p.requires_grad for p in first.parameters())
    if (not torch.backends.mha.get_fastpath_enabled() or first.training or src.dim() != 3 or padding is None
            or mask is not None or src.is_nested or torch.is_autocast_enabled()
            or (torch.is_grad_enabled() and grads) or src.device.type not in ("cpu", "cuda", "xpu")):
        return output
    padded = padding != 0 if padding.dtype != torch.bool else padding  # a float mask: -inf where padded
    if getattr(encoder, "mask_check", True) and not torch._nested_tensor_from_mask_left_aligned(src, ~padded):
        return output
    return output.masked_fill(padded.unsqueeze(-1), 0.0)


__all__ = ["MultiheadAttention", "Projection", "RoutedAttention", "RoutedLinear", "keep_dense",
           "register_torchvision"]
