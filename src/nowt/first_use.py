"""The checks, at a converted model's first forward and first backward, that no weight sends errors by
backprop behind the rule's back: a converted layer's weight, an embedding table or a parameter taken as added,
used as a matrix outside a converted layer's forward (`watch`). The hooks remove themselves after it."""

from __future__ import annotations

import sys
import warnings
import weakref
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.overrides import TorchFunctionMode, resolve_name
from torch.utils.hooks import RemovableHandle

from nowt.inventory import PROVED_MATRICES, Unproven, class_path, conversion
from nowt.layers import FeedbackLayer


def watch(model: nn.Module, layers: dict[str, FeedbackLayer], unknown: str = "error",
          tables: Unproven | None = None) -> None:
    """One-shot checks that no weight crosses errors by backprop behind the rule's back. At the model's first
    forward: a converted layer's weight used outside the layer's own forward (a tied decoder's
    `F.linear(h, enc.weight.t())`, timm BEiT's `F.linear(x, qkv.weight)`), or a parameter of `tables`
    (`unproven`: an embedding table, a parameter taken as added, a vector or single row or column left on
    backprop as elementwise) multiplied as a matrix, raises a ValueError naming it; layers that did not run
    are marked `skipped` (a warning). At the first backward that reaches a weight, a layer that never ran
    raises a RuntimeError. `unknown="warn"`: all of them warn. The hooks
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
    if watched:
        _guard(model, unknown)
    if watched and not isinstance(model, FeedbackLayer):
        first_forward = _FirstForward(watched, tables or {}, unknown)
        # prepend: the watch ends with the model's forward, before the rule's own hooks (DFA's) run
        first_forward.handles = [model.register_forward_pre_hook(first_forward.begin),
                                 model.register_forward_hook(first_forward, prepend=True, always_call=True)]
        # A layer run outside the model's forward before it (model.encode(x), model.decoder(h)): said once
        layers_once = {id(m): m for m in watched.values()}.values()
        first_forward.outside = [m.register_forward_pre_hook(first_forward.ran_outside) for m in layers_once]


#: Every module of a converted model, weakly: a layer put into one of them later (a new head for fine-tuning,
#: after the first forward's checks are gone) must come converted. The value: convert's `unknown`.
_MEMBERS: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()
_ASSIGNMENT_HOOK: list[RemovableHandle] = []  # torch's global hook on module assignment, installed once


def _guard(model: nn.Module, unknown: str) -> None:
    if not _ASSIGNMENT_HOOK:
        _ASSIGNMENT_HOOK.append(nn.modules.module.register_module_module_registration_hook(_on_assignment))
    for m in model.modules():
        _MEMBERS[m] = unknown


def _on_assignment(parent: nn.Module, name: str, module: nn.Module | None) -> None:
    """torch calls this before `parent.name = module` (setattr, add_module, Sequential's []) takes effect:
    raising leaves the model as it was."""
    unknown = _MEMBERS.get(parent)
    if unknown is None or module is None:
        return
    added = unconverted(module)
    if added:
        path = ".".join(filter(None, (name, added[0])))
        _refuse_or_warn(joined_message(path, module.get_submodule(added[0]), type(parent).__name__), unknown,
                        ValueError, stacklevel=4)
    for m in module.modules():
        _MEMBERS[m] = unknown


def unconverted(module: nn.Module) -> list[str]:
    """The names (within `module`) of the layers in it that nowt converts but that are not converted."""
    return [n for n, m in module.named_modules() if not isinstance(m, FeedbackLayer) and conversion(m)[0]]


def joined_message(path: str, layer: nn.Module, parent: str = "") -> str:
    where = f" (put into a {parent} of it)" if parent else ""
    return (f"layer {path!r} ({class_path(type(layer))}) joined the model after nowt.convert{where} and "
            f"trains by backprop (weight transport): convert it before use "
            f"(model.{path} = nowt.convert(layer, rule)), or convert the changed model afresh")


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
        _refuse_or_warn(message, self.unknown, RuntimeError, stacklevel=3)


def _refuse_or_warn(message: str, unknown: str, error: type[Exception], stacklevel: int) -> None:
    """`unknown="error"`: raise `error(message)`; "warn": warn it (at the caller's `stacklevel`)."""
    if unknown == "error":
        raise error(message)
    warnings.warn(message, stacklevel=stacklevel)


class _FirstForward:
    handles: list[RemovableHandle]
    outside: list[RemovableHandle]

    def __init__(self, layers: dict[str, FeedbackLayer], tables: Unproven, unknown: str) -> None:
        self.layers, self.tables, self.unknown = layers, tables, unknown
        self.uses: _Uses | None = None
        self.inner: list[RemovableHandle] = []  # on every converted layer, for this forward only
        self.converted: set[int] = set()  # ids of the converted layers' weights (and what they are made of)
        self.running = False  # the model's forward is under way
        self.cached: Any = None  # parametrize.cached(), entered for the first forward where a table needs it

    def ran_outside(self, layer: nn.Module, args: tuple) -> None:
        """A converted layer runs before the model's first forward, outside it: the checks of that forward
        cannot see what the caller does with the weights (a method decoding by `F.linear(h, enc.weight.t())`
        runs no module at all), so it is said, once, rather than the model passing as checked."""
        if self.running or torch.compiler.is_compiling():
            return
        self.remove(self.outside)
        name = next(n for n, m in self.layers.items() if m is layer)
        warnings.warn(f"converted layer {name!r} ran outside the model's forward (a method such as "
                      f"model.encode, or a submodule called on its own) before the model's first forward, "
                      f"where nowt checks that no weight sends errors by backprop behind the rule (a tied "
                      f"decoder, an embedding table or a vector multiplied as a matrix): that check has not "
                      f"run; call the model itself once first, on a batch that uses every weight as training "
                      f"will", stacklevel=2)

    @staticmethod
    def remove(handles: list[RemovableHandle]) -> None:
        for handle in handles:
            handle.remove()
        handles.clear()

    def begin(self, model: nn.Module, args: tuple) -> None:
        self.running = True
        if torch.compiler.is_compiling():
            return  # dynamo would trace the mode: a compiled first forward gets the other checks only
        watched = {id(p): (name, kind, fix, p) for name, (kind, fix, p) in self.tables.items()}
        owners = {n: n.rpartition(".") for n in self.tables}
        recomputed = [n for n, (owner, _, p) in owners.items()
                      if parametrize.is_parametrized(model.get_submodule(owner), p)]
        if recomputed:  # a parametrized table is a new tensor at every use; cached, one for the forward
            self.cached = parametrize.cached()
            self.cached.__enter__()
            for n in recomputed:
                owner, _, p = owners[n]
                t = getattr(model.get_submodule(owner), p)
                watched[id(t)] = (n, *self.tables[n][:2], t)
        for name, layer in self.layers.items():  # also an embedding's table (GPT-2's lm_head): the layer's
            converted = {id(w): (f"{name}.weight", f"the weight of converted layer {name!r}", name, w)
                         for w in layer.leaf_weights()}
            watched |= converted
            self.converted |= converted.keys()
        uses = self.uses = _Uses(watched, {id(t) for t in (*model.parameters(), *model.buffers())})
        for m in model.modules():
            if isinstance(m, FeedbackLayer):
                self.inner += [m.register_forward_pre_hook(uses.enter, prepend=True),
                               m.register_forward_hook(uses.leave, always_call=True)]
        uses.__enter__()

    def __call__(self, module: nn.Module, args: tuple, output: Any) -> None:
        uses, self.uses, self.running = self.uses, None, False
        if uses is not None:
            uses.__exit__(None, None, None)
        if self.cached is not None:
            self.cached.__exit__(None, None, None)
            self.cached = None
        self.remove(self.inner)
        if sys.exc_info()[0] is not None:
            return  # the forward raised: the next one is checked
        self.remove(self.handles)
        self.remove(self.outside)
        idle = [n for n, m in self.layers.items() if m.last_input_shape is None]
        for n in idle:
            self.layers[n].skipped = True
        if idle:
            names = ", ".join(map(repr, idle[:5])) + (" ..." if len(idle) > 5 else "")
            warnings.warn(f"converted layer(s) {names} did not run in the model's first forward, so the rule "
                          f"does not train them (or, if the model uses their weights itself, backprop does); "
                          f"nowt.summary(model) lists them", stacklevel=2)
        added = unconverted(module)
        if added:  # put in without an assignment torch sees (model._modules[...] = layer)
            message = joined_message(added[0], module.get_submodule(added[0]))
            _refuse_or_warn(message, self.unknown, ValueError, stacklevel=3)
        if uses is not None and uses.found:
            self.refuse(uses.found)

    def refuse(self, found: dict[str, tuple[str, str, str, Tensor]]) -> None:
        for _, _, _, p in found.values():
            if id(p) not in self.converted:
                PROVED_MATRICES[p] = True  # `summary` shows it on backprop, reading W
        uses = "; ".join(f"{name!r} ({kind}) is used by {op} outside any converted layer's forward"
                         for name, (op, kind, _, _) in list(found.items())[:3])
        fixes = ", ".join(dict.fromkeys(repr(fix) for _, _, fix, _ in found.values()))
        message = (f"{uses}{' (and more)' if len(found) > 3 else ''}: errors cross it there by backprop "
                   f"(weight transport). Give that use a layer nowt converts (an nn.Linear of its own; a "
                   f"tied LM head's nn.Linear may share the embedding's weight), or exclude=[{fixes}] to "
                   f"leave it on backprop on purpose")
        _refuse_or_warn(message, self.unknown, ValueError, stacklevel=4)


#: Ops that multiply by a tensor as a matrix: for a parameter in one, the backward sends errors through it.
MATRIX_OPS: frozenset[Any] = frozenset({
    torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.__rmatmul__, torch.linalg.matmul,
    torch.mm, torch.Tensor.mm, torch.bmm, torch.Tensor.bmm, torch.mv, torch.Tensor.mv, torch.addmm,
    torch.Tensor.addmm, torch.addbmm, torch.Tensor.addbmm, torch.baddbmm, torch.Tensor.baddbmm, torch.addmv,
    torch.Tensor.addmv, torch.einsum, torch.tensordot, torch.inner, torch.Tensor.inner, torch.chain_matmul,
    torch.linalg.multi_dot, F.linear, F.bilinear, F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d,
    F.conv_transpose2d, F.conv_transpose3d, F.scaled_dot_product_attention,
    torch.dot, torch.Tensor.dot, torch.vdot, torch.Tensor.vdot, torch.linalg.vecdot, torch.outer,
    torch.Tensor.outer, torch.ger, torch.Tensor.ger, torch.kron, torch.Tensor.kron,
    # products in disguise: x.w / (|x| |w|) and |x|^2 - 2 x.w + |w|^2 (a head of prototypes, a table)
    torch.cosine_similarity, torch.cdist,
})
#: Elementwise products, and the reductions that turn one with a watched tensor into a matrix product when
#: they sum over its dims (`(h * w).sum(-1)`, `(h.unsqueeze(-1) * W).sum(1)`).
ELEMENTWISE_PRODUCTS: frozenset[Any] = frozenset({
    torch.mul, torch.multiply, torch.Tensor.mul, torch.Tensor.multiply, torch.Tensor.__mul__,
    torch.Tensor.__rmul__, torch.Tensor.mul_, torch.Tensor.__imul__})
SUMS: frozenset[Any] = frozenset({torch.sum, torch.Tensor.sum, torch.mean, torch.Tensor.mean, torch.nansum,
                                  torch.Tensor.nansum,
                                  # reductions whose backward also sends errors through every (or the
                                  # chosen) product: a soft or hard maximum of h * w over w's dims
                                  torch.logsumexp, torch.Tensor.logsumexp, torch.amax, torch.Tensor.amax,
                                  torch.amin, torch.Tensor.amin, torch.max, torch.Tensor.max, torch.min,
                                  torch.Tensor.min})
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


def _summed_dims(args: tuple, kwargs: dict) -> set[int]:
    """The dims a `sum`/`mean` call reduces (all of them where none is given), made non-negative."""
    ndim = args[0].ndim
    dim = kwargs.get("dim", kwargs.get("axis", args[1] if len(args) > 1 else None))
    if dim is None or isinstance(dim, torch.dtype) or (isinstance(dim, list | tuple) and not dim):
        return set(range(ndim))
    dims = dim if isinstance(dim, list | tuple) else (dim,)
    return {d % ndim if ndim else 0 for d in dims if isinstance(d, int)}


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

    def __init__(self, watched: dict[int, tuple[str, str, str, Tensor]], held: set[int]) -> None:
        super().__init__()
        self.watched = watched  # id -> (name, kind, what to exclude, parameter), for derived tensors too
        self.held = held  # ids of the model's own parameters and buffers (a mask W is multiplied by)
        self.made: list[Tensor] = []  # tensors made from watched ones, held so that their ids stay theirs
        self.rows: set[int] = set()  # ids of the watched tensors that are rows looked up from a table
        self.inside = 0  # converted layers' forwards under way: the rule decides their backward
        self.found: dict[str, tuple[str, str, str, Tensor]] = {}  # name -> (op, kind, what to exclude, param)
        # id -> (the watched tensor's entry, the product's dims that are its own): `h * w` before a sum
        self.products: dict[int, tuple[tuple[str, str, str, Tensor], set[int]]] = {}

    def _lookup(self, func, args: tuple, kwargs: dict, out: Any) -> None:
        """A lookup sends no error across its table, but its rows do where they are then multiplied by an
        activation (a tied head over `emb(torch.arange(V))`, a sampled softmax over `emb(ids)`), and so
        does a bag weighted by activations (`per_sample_weights`)."""
        first = func in (F.embedding, F.embedding_bag)  # (input, weight, ...); torch's: (weight, input, ...)
        table = kwargs.get("weight", args[1 if first else 0] if len(args) > (1 if first else 0) else None)
        entry = self.watched.get(id(table))
        if entry is None:
            return
        bag_weights = kwargs.get("per_sample_weights")
        if bag_weights is None and func is F.embedding_bag and len(args) > 8:  # nn.EmbeddingBag: positional
            bag_weights = args[8]
        if isinstance(bag_weights, Tensor) and bag_weights.grad_fn is not None:
            self.found.setdefault(entry[0], (f"{resolve_name(func)} with per_sample_weights", *entry[1:]))
        for t in _tensors(out):
            if t.is_floating_point():
                self.watched[id(t)], self.rows = entry, self.rows | {id(t)}
                self.made.append(t)

    def enter(self, module: nn.Module, args: tuple) -> None:
        self.inside += 1

    def leave(self, module: nn.Module, args: tuple, output: Any) -> None:
        self.inside -= 1

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.inside:
            return out
        if func in LOOKUPS:
            self._lookup(func, args, kwargs, out)
            return out
        tensors = _tensors((args, kwargs))
        if func in SUMS and args and id(args[0]) in self.products:
            (name, kind, fix, p), dims = self.products[id(args[0])]
            if dims & _summed_dims(args, kwargs):
                self.found.setdefault(name, (f"{resolve_name(func)} of an elementwise product", kind, fix, p))
        hits = [self.watched[id(t)] for t in tensors if id(t) in self.watched]
        if hits and func in MATRIX_OPS:
            positions, names = MULTIPLIED.get(func, (range(len(args)), tuple(kwargs)))
            multiplied = _tensors(([args[i] for i in positions if i < len(args)],
                                   [v for k, v in kwargs.items() if k in names]))
            # rows looked up from a table carry errors across it only to an activation they multiply
            # (`h @ emb(ids).t()`), not to a weight (`emb(ids) @ W`: W's own gradient, from their values)
            to_activation = any(t.requires_grad and t.grad_fn is not None for t in tensors
                                if id(t) not in self.watched)
            for t in multiplied:
                if id(t) in self.watched and (id(t) not in self.rows or to_activation):
                    name, kind, fix, p = self.watched[id(t)]
                    self.found.setdefault(name, (resolve_name(func) or repr(func), kind, fix, p))
        if not hits or func in MATRIX_OPS:
            return out
        floats = [t for t in tensors if t.is_floating_point()]
        source = next((t for t in floats if id(t) in self.watched), None)
        others = [t for t in floats if id(t) not in self.watched]
        rows = source is not None and id(source) in self.rows and any(t.grad_fn is not None for t in others)
        if (source is not None and func in ELEMENTWISE_PRODUCTS and isinstance(out, Tensor)
                and (out.shape != source.shape or rows) and any(t.numel() > 1 for t in others)):
            # a product with activations, broadcast over them: a sum over the watched tensor's dims makes it
            # a matrix product (errors cross it to the activations); kept as such, not as the tensor itself.
            # Looked-up rows: a sum over their features (a dot product with each row: a sampled softmax)
            offset = out.ndim - source.ndim
            dims = {out.ndim - 1} if rows else {offset + i for i, n in enumerate(source.shape) if n > 1}
            self.products[id(out)] = (self.watched[id(source)], dims)
            # not held: activation-sized (a norm's gain times every token); forgotten when freed, so that
            # an id reused by another tensor is not taken for it
            weakref.finalize(out, self.products.pop, id(out), None)
            return out
        # made from the watched tensor alone, scaled by scalars (`emb.weight * self.scale`) or masked by the
        # model's own tensors (`W * self.mask`): still it
        if source is not None and ((func in SELF_ONLY and floats[0] is source) or all(
                t.numel() == 1 or (func in ELEMENTWISE_PRODUCTS and id(t) in self.held) for t in others)):
            for t in _tensors(out):
                if t.is_floating_point() and id(t) not in self.watched:
                    self.watched[id(t)] = self.watched[id(source)]
                    self.rows |= {id(t)} if id(source) in self.rows else set()
                    self.made.append(t)
        return out
