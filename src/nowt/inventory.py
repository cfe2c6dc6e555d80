"""Where every weight of a model stands: trained by a rule, on backprop by design, excluded by the user, or
unknown to nowt (an error at `nowt.convert`, so that no weight matrix keeps weight transport silently); and
`summary`, the table of it."""

from __future__ import annotations

import fnmatch
import sys
import warnings
from dataclasses import dataclass
from typing import TextIO

from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.utils.hooks import RemovableHandle

from nowt.layers import CONVERTIBLE, FeedbackLayer

#: Modules whose weights stay on backprop by design: looked up (embeddings) or elementwise (norms, PReLU);
#: their backward multiplies no error by a weight matrix.
BY_DESIGN: tuple[type[nn.Module], ...] = (
    nn.Embedding, nn.EmbeddingBag, nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm,
    nn.LocalResponseNorm, nn.PReLU,
)
#: Parameter names taken as added or looked up, not multiplied (class tokens, position embeddings, relative
#: position bias tables): their gradient is the error itself, no transport.
ADDITIVE_NAMES = ("*token*", "cls*", "*pos*", "*embed*", "*table*", "*latent*")
#: Subclasses (by class path) whose own forward computes the base layer's op, and how nowt matches it:
#: timm's Linear (a dtype cast under TorchScript only), Conv2dSame (TensorFlow "SAME" padding first: the
#: layer's `pad_same`), StdConv2d and ScaledStdConv2d (a standardised weight: `layers.StandardizedConv2d`).
SAME_OP: dict[str, str] = {
    "timm.layers.linear.Linear": "", "timm.layers.conv2d_same.Conv2dSame": "pad_same",
    **{f"timm.layers.std_conv.{name}": "standardize"
       for name in ("StdConv2d", "StdConv2dSame", "ScaledStdConv2d", "ScaledStdConv2dSame")},
}
#: Subclasses (by class path) refused by name, with why (none at present).
REFUSED: dict[str, str] = {}


def class_path(t: type) -> str:
    return f"{t.__module__}.{t.__qualname__}"


def conversion(m: nn.Module) -> tuple[type[nn.Module] | None, str]:
    """(the layer type in CONVERTIBLE that `m` converts as, a variant: "" or "pad_same"), or (None, why it
    cannot be converted; "" when it is no layer nowt knows at all)."""
    hooks = [type(h).__name__ for h in m._forward_pre_hooks.values()]
    if "WeightNorm" in hooks or "SpectralNorm" in hooks:
        return None, ("its weight is recomputed by an old-style nn.utils.weight_norm/spectral_norm hook; use "
                      "torch.nn.utils.parametrizations.weight_norm (which nowt converts) instead")
    t = type(m)
    if t in CONVERTIBLE:
        return t, ""
    base = next((b for b in t.__mro__[1:] if b in CONVERTIBLE), None)
    path = class_path(t)
    if base is None:
        return None, ""
    if path in REFUSED:
        return None, REFUSED[path]
    if path in SAME_OP:
        return base, SAME_OP[path]
    if any(getattr(t, f, None) is not getattr(base, f, None) for f in ("forward", "_conv_forward")):
        return None, f"a subclass of {class_path(base)} with its own forward"
    extra = [n for n in (*m._parameters, *m._buffers, *m._modules)
             if n not in ("weight", "bias", "parametrizations")]
    if extra and isinstance(m, nn.Linear | nn.modules.conv._ConvNd):  # unused by forward, but in its state
        return None, f"a subclass of {class_path(base)} holding {extra[0]!r}, which conversion would drop"
    return base, ""  # e.g. torchvision's Conv3DSimple, or a parametrized layer (weight norm)


def is_matrix(name: str, p: Tensor) -> bool:
    """Whether a parameter is a weight matrix that would carry errors backwards: two or more dimensions
    larger than 1, not broadcast over the batch (a leading 1), not named like a token, position embedding
    or table."""
    return (sum(s > 1 for s in p.shape) >= 2 and p.shape[0] != 1
            and not any(fnmatch.fnmatchcase(name.lower(), pat) for pat in ADDITIVE_NAMES))


def unknown_weights(model: nn.Module, accounted: set[int], excluded) -> list[str]:
    """'<class path> at <name>' for each weight matrix of `model` in a module that is neither in `accounted`
    (ids of modules converted or refused already), nor backprop by design, nor excluded (`excluded(name,
    module)`, also asked with the parameter's qualified name)."""
    found = []
    for name, m in model.named_modules():
        if (id(m) in accounted or isinstance(m, (*BY_DESIGN, parametrize.ParametrizationList))  # owner's
                or excluded(name, m)):
            continue
        params = m.parametrizations.items() if parametrize.is_parametrized(m) else ()
        own = [*m.named_parameters(recurse=False), *((n, getattr(m, n)) for n, _ in params)]
        for pname, p in own:
            full = f"{name}.{pname}" if name else pname
            if is_matrix(pname, p) and not excluded(full, m):
                found.append(f"{class_path(type(m))} at {name!r} (weight {pname!r}, {tuple(p.shape)})")
    return found


def watch(model: nn.Module, layers: dict[str, FeedbackLayer], unknown: str = "error") -> None:
    """One-shot checks that no converted layer is bypassed, for a model that calls `F.linear(x,
    layer.weight)` itself (timm's BEiT, EVA, Swin V2): its converted layer never runs and the weight trains
    by backprop. At the model's first forward, layers that did not run are marked `skipped` (a warning);
    at the first backward that reaches a weight, a layer that never ran raises (`unknown="warn"`: warns).
    Both hooks remove themselves at their first call: nothing is left on the training step's path."""
    watched = {n: m for n, m in layers.items() if m.rule.name != "bp"}
    # A weight tied to another module (GPT-2's lm_head and its token embedding) gets that module's gradient
    # whether the layer ran or not: only the forward check applies to it.
    others = (m for m in model.modules() if not isinstance(m, FeedbackLayer) and not hasattr(m, "rule_parts"))
    tied = {id(p) for m in others for p in m.parameters(recurse=False)}
    for name, layer in watched.items():
        w = layer.weight
        if isinstance(w, nn.Parameter) and w.requires_grad and id(w) not in tied:
            hook = _FirstGradient(name, layer, unknown)
            hook.handle = w.register_hook(hook)
    if watched and not isinstance(model, FeedbackLayer):
        first_forward = _FirstForward(watched)
        first_forward.handle = model.register_forward_hook(first_forward)


class _FirstGradient:
    __torch_unserializable__ = True  # not saved with the weight: the check is for this process's first step
    handle: RemovableHandle

    def __init__(self, name: str, layer: FeedbackLayer, unknown: str) -> None:
        self.name, self.layer, self.unknown = name, layer, unknown

    def __call__(self, grad: Tensor) -> None:
        self.handle.remove()
        if self.layer.last_input_shape is not None:
            return
        self.layer.skipped = True
        kind = class_path(type(self.layer))
        message = (f"converted layer {self.name!r} ({kind}) never ran, but its weight got a gradient: the "
                   f"model uses the weight itself (as F.linear(x, {self.name}.weight)), "
                   f"so it trains by backprop with weight transport; exclude=[{self.name!r}] to say so")
        if self.unknown == "error":
            raise RuntimeError(message)
        warnings.warn(message, stacklevel=2)


class _FirstForward:
    handle: RemovableHandle

    def __init__(self, layers: dict[str, FeedbackLayer]) -> None:
        self.layers = layers

    def __call__(self, module: nn.Module, args: tuple, output) -> None:
        self.handle.remove()
        idle = [n for n, m in self.layers.items() if m.last_input_shape is None]
        for n in idle:
            self.layers[n].skipped = True
        if idle:
            names = ", ".join(map(repr, idle[:5])) + (" ..." if len(idle) > 5 else "")
            warnings.warn(f"converted layer(s) {names} did not run in the model's first forward, so the rule "
                          f"does not train them (or, if the model uses their weights itself, backprop does); "
                          f"nowt.summary(model) lists them", stacklevel=2)


@dataclass
class Row:
    """One line of `summary`: a module holding parameters, and what its backward reads."""

    name: str
    type: str
    rule: str
    feedback: str
    reads: str


def _layer_row(name: str, layer: FeedbackLayer) -> Row:
    rule = layer.rule
    fb = layer._parameters.get("feedback", layer._buffers.get("feedback"))
    shape = layer._buffers.get("feedback_shape")
    if rule.name == "bp":
        feedback, reads = "= W", "W"
    else:
        feedback = (str(tuple(fb.shape)) if fb is not None else
                    str(tuple(shape.tolist())) if shape is not None else "at the first forward")
        reads = "B, from W's signs" if rule.name in ("usf", "frsf", "brsf") else "B"
        reads = "B; W inside its block" if getattr(layer, "dfa_block", None) is not None else reads
    if layer.skipped and layer.last_input_shape is None:
        reads = "nothing: never ran"
    return Row(name, class_path(type(layer)), rule.name, feedback, reads)


def summary(model: nn.Module, show: bool = True, file: TextIO | None = None) -> list[Row]:
    """Each module of `model` that holds parameters: its name, type, rule, feedback shape, and what its
    backward reads to send the error on (B, W, or nothing). Printed (to `file`, default stdout) if `show`."""
    rows = [_layer_row(n, m) for n, m in model.named_modules() if isinstance(m, FeedbackLayer)]
    # A converted layer is one row (its parametrizations inside it too); attention's rows are its projections.
    inside = tuple(n + "." for n, m in model.named_modules() if isinstance(m, FeedbackLayer) and n)
    for name, m in model.named_modules(remove_duplicate=False):
        own = list(m.named_parameters(recurse=False))
        if (isinstance(m, FeedbackLayer) or hasattr(m, "rule_parts") or not own or name.startswith(inside)
                or any(r.name == name for r in rows)):
            continue
        matrices = [n for n, p in own if is_matrix(n, p)]
        kind = class_path(type(m))
        if isinstance(m, nn.Embedding | nn.EmbeddingBag):
            rows.append(Row(name, kind, "bp (by design)", "-", "nothing: a lookup"))
        elif isinstance(m, BY_DESIGN):
            rows.append(Row(name, kind, "bp (by design)", "-", "W, elementwise"))
        elif not matrices:
            rows.append(Row(name, kind, "bp (by design)", "-", "elementwise or added only"))
        else:
            rows.append(Row(name, class_path(type(m)), "bp", "-", f"W ({', '.join(matrices)})"))
    if show:
        print(format_rows(rows), file=file or sys.stdout)
    return rows


def format_rows(rows: list[Row]) -> str:
    table = [("layer", "type", "rule", "feedback", "backward reads")]
    table += [(r.name or "(model)", r.type, r.rule, r.feedback, r.reads) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(5)]
    lines = ("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table)
    return "\n".join(lines)
