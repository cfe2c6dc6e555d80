"""Where every weight of a model stands: trained by a rule, on backprop by design, excluded by the user, or
unknown to nowt (an error at `nowt.convert`, so that no weight matrix keeps weight transport silently); and
`summary`, the table of it."""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.overrides import TorchFunctionMode, resolve_name
from torch.utils.hooks import RemovableHandle
from torch.utils.weak import WeakIdKeyDictionary

from nowt.layers import CONVERTIBLE, FeedbackLayer

#: Modules whose weights stay on backprop by design: looked up (embeddings) or elementwise (norms, PReLU);
#: their backward multiplies no error by a weight matrix.
BY_DESIGN: tuple[type[nn.Module], ...] = (
    nn.Embedding, nn.EmbeddingBag, nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm,
    nn.LocalResponseNorm, nn.PReLU,
)
#: Whole words of parameter names taken as added or looked up, not multiplied (class tokens, position
#: embeddings, relative position bias tables, latents): their gradient is the error itself, no transport. A
#: name only vouches until the first forward, which refuses such a parameter used as a matrix (`watch`).
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


#: Parameters the first forward saw multiplied as a matrix although named or shaped as added (`watch`).
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


def _loose(model: nn.Module, accounted: set[int], excluded: Excluded) -> Iterator[Owned]:
    """The parameters of modules neither in `accounted` nor excluded, and not excluded themselves."""
    for name, m in model.named_modules():
        if id(m) in accounted or isinstance(m, parametrize.ParametrizationList) or excluded(name, m):
            continue  # a ParametrizationList's tensors are its owner's
        params = m.parametrizations.items() if parametrize.is_parametrized(m) else ()
        for pname, p in (*m.named_parameters(recurse=False), *((n, getattr(m, n)) for n, _ in params)):
            if not excluded(f"{name}.{pname}" if name else pname, m):
                yield name, m, pname, p


def unknown_weights(model: nn.Module, accounted: set[int], excluded: Excluded) -> list[str]:
    """'<class path> at <name>' for each weight matrix of `model` in a module that is neither in `accounted`
    (ids of modules converted or refused already), nor backprop by design, nor excluded (`excluded(name,
    module)`, also asked with the parameter's qualified name)."""
    return [f"{class_path(type(m))} at {name!r} (weight {pname!r}, {tuple(p.shape)})"
            for name, m, pname, p in _loose(model, accounted, excluded)
            if not isinstance(m, BY_DESIGN) and is_matrix(pname, p)]


Unproven = dict[str, tuple[str, str, Tensor]]


def unproven(model: nn.Module, accounted: set[int], excluded: Excluded) -> Unproven:
    """What the first forward checks is not used as a matrix (`watch`): embedding tables (a tied head may
    multiply by one) and parameters taken as added: qualified name -> (kind, what to exclude, parameter)."""
    found: Unproven = {}
    for name, m, pname, p in _loose(model, accounted, excluded):
        full = f"{name}.{pname}" if name else pname
        if isinstance(m, nn.Embedding | nn.EmbeddingBag) and pname == "weight":
            found[full] = ("the table of embedding " + repr(name), name, p)
        elif not isinstance(m, BY_DESIGN) and looks_additive(pname, p):
            found[full] = ("taken as added, by its name or shape", full, p)
    return found


def watch(model: nn.Module, layers: dict[str, FeedbackLayer], unknown: str = "error",
          tables: Unproven | None = None) -> None:
    """One-shot checks that no weight crosses errors by backprop behind the rule's back. At the model's first
    forward: a converted layer's weight used outside the layer's own forward (a tied decoder's
    `F.linear(h, enc.weight.t())`, timm BEiT's `F.linear(x, qkv.weight)`), or a parameter of `tables`
    (`unproven`: an embedding table, a parameter taken as added) multiplied as a matrix, raises a ValueError
    naming it; layers that did not run are marked `skipped` (a warning). At the first backward that reaches
    a weight, a layer that never ran raises a RuntimeError. `unknown="warn"`: all of them warn. The hooks
    remove themselves: nothing is left on the training step's path."""
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
        first_forward = _FirstForward(watched, tables or {}, unknown)
        # prepend: the watch ends with the model's forward, before the rule's own hooks (DFA's) run
        first_forward.handles = [model.register_forward_pre_hook(first_forward.begin),
                                 model.register_forward_hook(first_forward, prepend=True, always_call=True)]


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


def _leaf_weights(layer: FeedbackLayer) -> list[Tensor]:
    """The tensors a layer's `.weight` is made of: the Parameter, its parametrization's originals, or
    StandardizedConv2d's raw weight and gain (attention's Projection holds none: its owner's weight)."""
    if parametrize.is_parametrized(layer, "weight"):
        return list(layer.parametrizations.weight.parameters())
    own: list[Tensor] = [p for n, p in layer._parameters.items()
                         if n in layer.own_state and n != "bias" and p is not None]
    return own or [layer.weight]


class _FirstForward:
    handles: list[RemovableHandle]

    def __init__(self, layers: dict[str, FeedbackLayer], tables: Unproven, unknown: str) -> None:
        self.layers, self.tables, self.unknown = layers, tables, unknown
        self.uses: _Uses | None = None
        self.inner: list[RemovableHandle] = []  # on every converted layer, for this forward only

    def begin(self, model: nn.Module, args: tuple) -> None:
        if torch.compiler.is_compiling():
            return  # dynamo would trace the mode: a compiled first forward gets the other checks only
        watched = {id(p): (name, kind, fix, p) for name, (kind, fix, p) in self.tables.items()}
        for name, layer in self.layers.items():  # also an embedding's table (GPT-2's lm_head): the layer's
            watched |= {id(w): (f"{name}.weight", f"the weight of converted layer {name!r}", name, w)
                        for w in _leaf_weights(layer)}
        uses = self.uses = _Uses(watched)
        for m in model.modules():
            if isinstance(m, FeedbackLayer):
                self.inner += [m.register_forward_pre_hook(uses.enter, prepend=True),
                               m.register_forward_hook(uses.leave, always_call=True)]
        uses.__enter__()

    def __call__(self, module: nn.Module, args: tuple, output: Any) -> None:
        uses, self.uses = self.uses, None
        if uses is not None:
            uses.__exit__(None, None, None)
        for handle in self.inner:
            handle.remove()
        self.inner = []
        if sys.exc_info()[0] is not None:
            return  # the forward raised: the next one is checked
        for handle in self.handles:
            handle.remove()
        idle = [n for n, m in self.layers.items() if m.last_input_shape is None]
        for n in idle:
            self.layers[n].skipped = True
        if idle:
            names = ", ".join(map(repr, idle[:5])) + (" ..." if len(idle) > 5 else "")
            warnings.warn(f"converted layer(s) {names} did not run in the model's first forward, so the rule "
                          f"does not train them (or, if the model uses their weights itself, backprop does); "
                          f"nowt.summary(model) lists them", stacklevel=2)
        if uses is not None and uses.found:
            self.refuse(uses.found)

    def refuse(self, found: dict[str, tuple[str, str, str, Tensor]]) -> None:
        converted = {id(w) for m in self.layers.values() for w in _leaf_weights(m)}
        for _, _, _, p in found.values():
            if id(p) not in converted:
                PROVED_MATRICES[p] = True  # `summary` shows it on backprop, reading W
        uses = "; ".join(f"{name!r} ({kind}) is used by {op} outside any converted layer's forward"
                         for name, (op, kind, _, _) in list(found.items())[:3])
        fixes = ", ".join(dict.fromkeys(repr(fix) for _, _, fix, _ in found.values()))
        message = (f"{uses}{' (and more)' if len(found) > 3 else ''}: errors cross it there by backprop "
                   f"(weight transport). Give that use a layer nowt converts (an nn.Linear of its own; a "
                   f"tied LM head's nn.Linear may share the embedding's weight), or exclude=[{fixes}] to "
                   f"leave it on backprop on purpose")
        if self.unknown == "error":
            raise ValueError(message)
        warnings.warn(message, stacklevel=3)


#: Ops that multiply by a tensor as a matrix: for a parameter in one, the backward sends errors through it.
MATRIX_OPS: frozenset[Any] = frozenset({
    torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.__rmatmul__, torch.linalg.matmul,
    torch.mm, torch.Tensor.mm, torch.bmm, torch.Tensor.bmm, torch.mv, torch.Tensor.mv, torch.addmm,
    torch.Tensor.addmm, torch.addbmm, torch.Tensor.addbmm, torch.baddbmm, torch.Tensor.baddbmm, torch.addmv,
    torch.Tensor.addmv, torch.einsum, torch.tensordot, torch.inner, torch.Tensor.inner, torch.chain_matmul,
    torch.linalg.multi_dot, F.linear, F.bilinear, F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d,
    F.conv_transpose2d, F.conv_transpose3d, F.scaled_dot_product_attention,
})
#: Of these, the ops with an argument that is only added (a bias, addmm's input, an attention mask): the
#: positions and names of those multiplied. A table added as a mask sends no error through itself.
MULTIPLIED: dict[Any, tuple[tuple[int, ...], tuple[str, ...]]] = {
    **dict.fromkeys((F.linear, F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d,
                     F.conv_transpose3d), ((0, 1), ("input", "weight"))),
    **dict.fromkeys((torch.addmm, torch.Tensor.addmm, torch.baddbmm, torch.Tensor.baddbmm, torch.addbmm,
                     torch.Tensor.addbmm), ((1, 2), ("mat1", "mat2", "batch1", "batch2"))),
    **dict.fromkeys((torch.addmv, torch.Tensor.addmv), ((1, 2), ("mat", "vec"))),
    F.bilinear: ((0, 1, 2), ("input1", "input2", "weight")),
    F.scaled_dot_product_attention: ((0, 1, 2), ("query", "key", "value")),
}
#: Lookups of rows: no error crosses the table (a tied LM head's embedding).
LOOKUPS: frozenset[Any] = frozenset({F.embedding, F.embedding_bag, torch.embedding, torch.embedding_bag})
#: Ops whose other tensor arguments lend only a dtype, device or shape.
SELF_ONLY: frozenset[Any] = frozenset({torch.Tensor.to, torch.Tensor.type_as, torch.Tensor.view_as,
                                       torch.Tensor.reshape_as, torch.Tensor.expand_as})


def _tensors(tree: Any) -> list[Tensor]:
    if isinstance(tree, Tensor):
        return [tree]
    if isinstance(tree, list | tuple | dict):
        return [t for x in (tree.values() if isinstance(tree, dict) else tree) for t in _tensors(x)]
    return []


class _Uses(TorchFunctionMode):
    """Active for the model's first forward: notes each op outside converted layers' forwards that multiplies
    by a watched parameter (a converted layer's weight, an embedding table, a parameter taken as added) or by
    a tensor made from it alone (`w.t()`, `w[0]`, `torch.cat([wq, wk])`): its backward would send errors
    through that parameter. Other uses (`w.dtype`, `x.to(w)`, a lookup, an addition) send none."""

    def __init__(self, watched: dict[int, tuple[str, str, str, Tensor]]) -> None:
        super().__init__()
        self.watched = watched  # id -> (name, kind, what to exclude, parameter), for derived tensors too
        self.made: list[Tensor] = []  # tensors made from watched ones, held so that their ids stay theirs
        self.inside = 0  # converted layers' forwards under way: the rule decides their backward
        self.found: dict[str, tuple[str, str, str, Tensor]] = {}  # name -> (op, kind, what to exclude, param)

    def enter(self, module: nn.Module, args: tuple) -> None:
        self.inside += 1

    def leave(self, module: nn.Module, args: tuple, output: Any) -> None:
        self.inside -= 1

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.inside or func in LOOKUPS:
            return out
        tensors = _tensors((args, kwargs))
        hits = [self.watched[id(t)] for t in tensors if id(t) in self.watched]
        if hits and func in MATRIX_OPS:
            positions, names = MULTIPLIED.get(func, (range(len(args)), tuple(kwargs)))
            multiplied = _tensors(([args[i] for i in positions if i < len(args)],
                                   [v for k, v in kwargs.items() if k in names]))
            for name, kind, fix, p in (self.watched[id(t)] for t in multiplied if id(t) in self.watched):
                self.found.setdefault(name, (resolve_name(func) or repr(func), kind, fix, p))
        if not hits or func in MATRIX_OPS:
            return out
        floats = [t for t in tensors if t.is_floating_point()]
        if floats and id(floats[0]) in self.watched and (
                func in SELF_ONLY or all(id(t) in self.watched for t in floats)):
            for t in _tensors(out):  # made from the watched tensor alone: still that parameter
                if t.is_floating_point() and id(t) not in self.watched:
                    self.watched[id(t)] = self.watched[id(floats[0])]
                    self.made.append(t)
        return out


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
        matrices = [n for n, p in own if p in PROVED_MATRICES or (not design and is_matrix(n, p))]
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
