"""Where every weight of a model stands: trained by a rule, on backprop by design, excluded by the user, or
unknown to nowt (an error at `nowt.convert`, so that no weight matrix keeps weight transport silently); and
`summary`, the table of it."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TextIO, cast

from torch import Tensor, nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.utils import parametrize, prune
from torch.utils.weak import WeakIdKeyDictionary

from nowt.layers import CONVERTIBLE, FeedbackLayer

#: Modules whose weights stay on backprop by design: looked up (embeddings) or elementwise (norms, PReLU);
#: their backward multiplies no error by a weight matrix.
BY_DESIGN: tuple[type[nn.Module], ...] = (
    nn.Embedding, nn.EmbeddingBag, nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm,
    nn.LocalResponseNorm, nn.PReLU,
)
#: The parameters of a `BY_DESIGN` module that its design vouches for: its base's own. A subclass's further
#: parameters (a projection an `nn.Embedding` subclass multiplies by) are checked as any module's.
DESIGN_NAMES = frozenset({"weight", "bias"})
#: Whole words of parameter names taken as added or looked up, not multiplied (class tokens, position
#: embeddings, relative position bias tables, latents): their gradient is the error itself, no transport. A
#: name only vouches until the first forward, which refuses such a parameter used as a matrix
#: (`first_use.watch`).
ADDITIVE_WORDS = frozenset({"cls", "class", "token", "tokens", "pos", "position", "positions", "positional",
                            "embed", "embeds", "embedding", "embeddings", "emb", "table", "latent",
                            "latents"})
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


def by_design(m: nn.Module, pname: str) -> bool:
    """Whether parameter `pname` of `m` stays on backprop by design: a lookup table, a norm's gain or bias."""
    return isinstance(m, BY_DESIGN) and pname in DESIGN_NAMES


def class_path(t: type) -> str:
    return f"{t.__module__}.{t.__qualname__}"


def conversion(m: nn.Module) -> tuple[type[nn.Module] | None, str]:
    """(the layer type in CONVERTIBLE that `m` converts as, a variant: "" or "pad_same"), or (None, why it
    cannot be converted; "" when it is no layer nowt knows at all)."""
    hooks = list(m._forward_pre_hooks.values())
    if {"WeightNorm", "SpectralNorm"} & {type(h).__name__ for h in hooks}:
        return None, ("its weight is recomputed by an old-style nn.utils.weight_norm/spectral_norm hook; use "
                      "torch.nn.utils.parametrizations.weight_norm (which nowt converts) instead")
    if any(isinstance(h, prune.BasePruningMethod) for h in hooks):
        return None, ("it is pruned by torch.nn.utils.prune (a hook remakes its weight from weight_orig and "
                      "weight_mask); call prune.remove(module, 'weight') first")
    t = type(m)
    base = t if t in CONVERTIBLE else next((b for b in t.__mro__[1:] if b in CONVERTIBLE), None)
    if base is None:
        return None, ""
    # what the new layer would not do: a forward set on the instance, a __call__ of its own
    if "forward" in m.__dict__:
        return None, "its forward is replaced on the instance (module.forward = ...), which conversion drops"
    if any(getattr(t, f) is not getattr(nn.Module, f) for f in ("__call__", "_call_impl")):
        return None, f"a {class_path(t)} with its own __call__, which conversion drops"
    if isinstance(m, LazyModuleMixin) and m.has_uninitialized_params():
        return None, "a lazy module whose parameters are not made yet: run one forward first"
    if isinstance(m, nn.MultiheadAttention) and parametrize.is_parametrized(m):
        return None, "nn.MultiheadAttention with a parametrized tensor, which nowt's attention cannot carry"
    if (isinstance(m, nn.Linear | nn.modules.conv._ConvNd) and "weight" not in m._parameters
            and not parametrize.is_parametrized(m, "weight")):
        return None, ("its weight is no Parameter of its own (a tensor set by a hook or another module: "
                      "DropConnect, a hypernetwork), which a converted layer cannot take over")
    if t in CONVERTIBLE:
        return t, ""
    path = class_path(t)
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


def advances_on_read(m: nn.Module) -> str | None:
    """The name of a tensor of `m` whose parametrization changes state each time it is read in training
    (torch's spectral_norm: a power-iteration step), else None."""
    if not parametrize.is_parametrized(m):
        return None
    parametrizations = cast(nn.ModuleDict, m.parametrizations)
    return next((name for name, plist in parametrizations.items()
                 if any(type(p).__name__ == "_SpectralNorm" for p in cast(nn.ModuleList, plist))), None)


#: Parameters the first forward saw multiplied as a matrix although named or shaped as added
#: (`first_use.watch`).
PROVED_MATRICES: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _words(name: str) -> set[str]:
    """`relative_position_bias_table` -> {relative, position, bias, table}; `posEmbed` -> {pos, embed}."""
    return set(re.split(r"[^a-z]+", re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()))


def looks_additive(name: str, p: Tensor) -> bool:
    """Whether a parameter of two or more dimensions larger than 1 is taken as added, not multiplied: by
    whole words of its name (`pos_embed`, `cls_token`) or by a leading 1 (broadcast over the batch)."""
    return sum(s > 1 for s in p.shape) >= 2 and (p.shape[0] == 1 or bool(ADDITIVE_WORDS & _words(name)))


def is_matrix(name: str, p: Tensor) -> bool:
    """Whether a parameter is a weight matrix that would carry errors backwards: two or more dimensions
    larger than 1, and not taken as added (`looks_additive`) unless the first forward multiplied by it."""
    return sum(s > 1 for s in p.shape) >= 2 and (not looks_additive(name, p) or p in PROVED_MATRICES)


Excluded = Callable[[str, nn.Module], bool]
Owned = tuple[str, nn.Module, str, Tensor]  # (module name, module, parameter name, parameter)


def own_parameter_names(m: nn.Module) -> list[str]:
    """A module's own parameters by the names its forward reads them (`weight` for a parametrized weight,
    whose tensors lie in `parametrizations.weight`)."""
    parametrized = list(cast(nn.ModuleDict, m.parametrizations)) if parametrize.is_parametrized(m) else []
    return [*(n for n, _ in m.named_parameters(recurse=False)), *parametrized]


def _loose(model: nn.Module, accounted: set[int], excluded: Excluded) -> Iterator[Owned]:
    """The parameters of modules neither in `accounted` nor excluded, and not excluded themselves."""
    for name, m in model.named_modules():
        if id(m) in accounted or isinstance(m, parametrize.ParametrizationList) or excluded(name, m):
            continue  # a ParametrizationList's tensors are its owner's
        for pname in own_parameter_names(m):
            if not excluded(f"{name}.{pname}" if name else pname, m):
                yield name, m, pname, getattr(m, pname)


def unknown_weights(model: nn.Module, accounted: set[int], excluded: Excluded) -> list[str]:
    """'<class path> at <name>' for each weight matrix of `model` in a module that is neither in `accounted`
    (ids of modules converted or refused already), nor backprop by design, nor excluded (`excluded(name,
    module)`, also asked with the parameter's qualified name)."""
    return [f"{class_path(type(m))} at {name!r} (weight {pname!r}, {tuple(p.shape)})"
            for name, m, pname, p in _loose(model, accounted, excluded)
            if not by_design(m, pname) and is_matrix(pname, p)]


Unproven = dict[str, tuple[str, str, Tensor]]


def unproven(model: nn.Module, accounted: set[int], excluded: Excluded) -> Unproven:
    """What the first forward checks is not used as a matrix (`first_use.watch`): embedding tables (a tied
    head may multiply by one), parameters taken as added, and every other parameter left on backprop that is
    not a matrix by its shape (a vector or a single row or column: a norm's gain, a layer scale, or a readout
    such as TAPAS's `einsum("bsj,j->bs", h, output_weights)`, which sends errors through it as a Linear with
    one output would): qualified name -> (kind, what to exclude, parameter). Scalars are only elementwise."""
    found: Unproven = {}
    for name, m, pname, p in _loose(model, accounted, excluded):
        full = f"{name}.{pname}" if name else pname
        if isinstance(m, nn.Embedding | nn.EmbeddingBag) and pname == "weight":
            found[full] = ("the table of embedding " + repr(name), name, p)
        elif not by_design(m, pname) and looks_additive(pname, p):
            found[full] = ("taken as added, by its name or shape", full, p)
        elif p.numel() > 1 and (by_design(m, pname) or not is_matrix(pname, p)):
            found[full] = (f"a parameter of shape {tuple(p.shape)} left on backprop as elementwise", full, p)
    return found


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
        design = isinstance(m, BY_DESIGN)  # unless the first forward saw its weight used as a matrix
        matrices = [n for n, p in own if p in PROVED_MATRICES or (not by_design(m, n) and is_matrix(n, p))]
        kind = class_path(type(m))
        if matrices:
            rows.append(Row(name, kind, "bp", "-", f"W ({', '.join(matrices)})"))
        elif isinstance(m, nn.Embedding | nn.EmbeddingBag):
            rows.append(Row(name, kind, "bp (by design)", "-", "nothing: a lookup"))
        elif design:
            rows.append(Row(name, kind, "bp (by design)", "-", "W, elementwise"))
        else:
            rows.append(Row(name, kind, "bp (by design)", "-", "elementwise or added only"))
    if show:
        print(format_rows(rows), file=file or sys.stdout)
    return rows


def format_rows(rows: list[Row]) -> str:
    table = [("layer", "type", "rule", "feedback", "backward reads")]
    table += [(r.name or "(model)", r.type, r.rule, r.feedback, r.reads) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(5)]
    lines = ("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table)
    return "\n".join(lines)
