"""`nowt.convert`: one call turns any PyTorch model into one trained by a learning rule."""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Iterable
from typing import Any, cast

import torch
from torch import nn
from torch.nn.utils import parametrize

from nowt import attention
from nowt.first_use import watch
from nowt.inventory import (
    advances_on_read,
    class_path,
    conversion,
    own_parameter_names,
    unknown_weights,
    unproven,
)
from nowt.layers import CONVERTIBLE, VARIANTS, FeedbackLayer, _Conv, register_transformers
from nowt.rules import Rule, make_rule

#: Layers whose weights also carry errors backwards but that no rule converts yet. Converting a model that
#: holds one raises, rather than silently leaving those weights on backprop.
UNSUPPORTED: tuple[type[nn.Module], ...] = (nn.Bilinear, nn.RNNBase, nn.RNNCellBase)
UNKNOWN = ("error", "warn")

Selector = str | type[nn.Module]


def _matches(name: str, module: nn.Module, selectors: Iterable[Selector]) -> bool:
    for s in selectors:
        if isinstance(s, type) and isinstance(module, s):
            return True
        if isinstance(s, str) and (name == s or fnmatch.fnmatchcase(name, s) or name.startswith(s + ".")):
            return True
    return False


def _excluded(name: str, module: nn.Module, selectors: Iterable[Selector]) -> bool:
    """Whether a layer nowt converts is excluded: by its name or type, or by the name of one of its parameters
    (its weight and bias train together, so a pattern naming either leaves the whole layer on backprop)."""
    own = own_parameter_names(module)
    if parametrize.is_parametrized(module):  # `fc.weight` and `fc.parametrizations.weight.original0`
        parametrizations = cast(nn.ModuleDict, module.parametrizations)
        own += [f"parametrizations.{n}" for n, _ in parametrizations.named_parameters()]
    return _matches(name, module, selectors) or any(
        _matches(f"{name}.{n}" if name else n, module, selectors) for n in own)


def _selectors(exclude: Iterable[Selector]) -> tuple[Selector, ...]:
    """`exclude` as a tuple of names and module types; anything else (an index, a module instance) would
    match no layer without a word, and a bare string would be read letter by letter: both refused."""
    if isinstance(exclude, str):
        raise ValueError(f"exclude={exclude!r} is one string: pass a list, exclude=[{exclude!r}]")
    selectors = tuple(exclude)
    for s in selectors:
        if not (isinstance(s, str) or isinstance(s, type) and issubclass(s, nn.Module)):
            raise ValueError(f"exclude takes layer names (glob patterns allowed) or module types, got {s!r} "
                             f"({type(s).__name__})")
    return selectors


def convert(
    model: nn.Module,
    rule: str | Rule,
    *,
    seed: int | None = None,
    exclude: Iterable[Selector] = (),
    unknown: str = "error",
    **options: Any,
) -> nn.Module:
    """Swaps every `nn.Linear`, convolution (1-3d, plain or transposed) and `nn.MultiheadAttention` of
    `model`, in place, for a layer trained by `rule` (torchvision's Swin window attention too, whose qkv and
    proj it calls through `F.linear`: see `nowt.attention.RoutedAttention`; transformers' GPT-2 `Conv1D`;
    subclasses that keep their base's forward, parametrized weights such as weight norm).

    Weights, biases, devices and dtypes are kept (the very same Parameter objects, so an optimizer built
    earlier still holds them; rules that add parameters, like `kp`, need them added to it).
    `seed` makes the random feedback reproducible (None draws one from torch's global RNG).
    `exclude`: layers to leave on backprop, by qualified name (glob patterns allowed, a prefix covers a
    submodule) or by type; converted layers among them become `bp` layers. A name that matches a parameter
    (`"fc.weight"`, `"*.bias"`) excludes the whole layer that holds it (a layer's weight and bias train
    together), or, in a module nowt does not convert, that parameter only.
    Every weight is accounted for: a weight matrix nowt would leave on backprop without being told (a layer
    it cannot convert, such as `nn.LSTM`, or a matrix in a module type it does not know) raises a
    ValueError naming it, unless excluded; `unknown="warn"` warns instead. Embedding lookups, norms, added
    parameters (class tokens, position embeddings) and attention's activation products stay on backprop by
    design (`nowt.summary` shows all of it). At the model's first forward, a converted layer's weight used
    outside the layer (a tied decoder's `F.linear(h, enc.weight.t())`, `F.linear(x, layer.weight)`), or an
    embedding table or added parameter multiplied as a matrix (a tied LM head's `F.linear(h, emb.weight)`),
    raises a ValueError naming it (warns with `unknown="warn"`); so does, at the first backward, a converted
    layer that never ran but whose weight got a gradient. `options` go to the rule (see each rule's
    `options`).
    Returns the model; a bare `nn.Linear`/`nn.Conv2d` is returned converted, not in place.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"nowt.convert takes a torch.nn.Module, got {type(model).__name__} (a model by name: "
                        f"nowt.models.create_model)")
    if unknown not in UNKNOWN:
        raise ValueError(f"unknown={unknown!r}: choose {' or '.join(UNKNOWN)}")
    attention.register_torchvision()  # Swin's window attention, if torchvision made this model
    register_transformers()  # GPT-2's Conv1D, if transformers made this model
    rule = make_rule(rule, **options)
    backprop = make_rule("bp")
    exclude = _selectors(exclude)
    if seed is not None and not (isinstance(seed, int) and not isinstance(seed, bool)
                                 and -2**63 <= seed < 2**64):  # what torch.manual_seed takes
        raise ValueError(f"seed must be an integer from -2**63 to 2**64 - 1, or None; got {seed!r}")
    every = list(model.named_modules(remove_duplicate=False))
    # a name matches a module or one of its parameters (`_excluded`: a weight-normed layer's `fc.weight` too)
    unmatched = [s for s in exclude
                 if isinstance(s, str) and not any(_excluded(n, m, (s,)) for n, m in every)]
    if unmatched:
        raise ValueError(f"exclude: {unmatched} match(es) no layer of {type(model).__name__}; layer names: "
                         f"{', '.join(n for n, _ in every if n)[:300]}")
    if seed is None:
        seed = int(torch.randint(0, 2**62, ()))
    # Every name of every module: a layer registered twice (`m.b = m.a`) must be converted under both.
    named = list(model.named_modules(remove_duplicate=False))
    done = [n or type(model).__name__ for n, m in named if isinstance(m, FeedbackLayer)]
    if done:
        raise ValueError(f"model is already converted (layer {done[0]!r}); convert a fresh model instead")
    plan = {id(m): conversion(m) for _, m in named}
    refused = [(n, m, plan[id(m)][1] or "nowt has no rule-trained version of it") for n, m in named
               if not _matches(n, m, exclude)
               and (isinstance(m, UNSUPPORTED) or (plan[id(m)][0] is None and plan[id(m)][1]))]
    refused_prefixes = tuple(n + "." for n, _, _ in refused)
    names: dict[int, list[str]] = {}  # id(module) -> its names, modules in first-seen order
    modules: dict[int, nn.Module] = {}
    for n, m in named:
        if plan[id(m)][0] is not None and not (n + ".").startswith(refused_prefixes):
            names.setdefault(id(m), []).append(n)
            modules[id(m)] = m
    problems = [f"{class_path(type(m))} at {n!r}: {why}" for n, m, why in refused]
    accounted = set(modules) | {id(m) for _, m, _ in refused}
    problems += unknown_weights(model, accounted, lambda n, m: _matches(n, m, exclude))
    tables = unproven(model, accounted, lambda n, m: _matches(n, m, exclude))  # checked at the first forward
    if problems:
        message = (f"cannot convert {'; '.join(problems[:3])}{' (and more)' if len(problems) > 3 else ''}: "
                   f"its weights would stay on backprop; pass exclude=[name] to leave them on backprop on "
                   f"purpose, or unknown='warn'")
        if unknown == "error":
            raise ValueError(message)
        warnings.warn(message, stacklevel=2)
    if not names:
        bases = [t for t in CONVERTIBLE if not set(t.__mro__[1:]) & set(CONVERTIBLE)]  # not MHA's Linear
        kinds = ", ".join(sorted(t.__name__ for t in bases))
        raise ValueError(f"nothing to convert: {type(model).__name__} has no layer nowt trains by a rule "
                         f"({kinds})")
    _check_targets(names, modules, exclude, rule)
    seeds = torch.randint(0, 2**62, (len(names),), generator=torch.Generator().manual_seed(seed))
    layers: dict[str, FeedbackLayer] = {}
    tied: dict[tuple[int, ...], FeedbackLayer] = {}  # weight Parameters -> the first part drawn for them
    for (key, layer_names), layer_seed in zip(names.items(), seeds.tolist(), strict=True):
        module = modules[key]
        layer_rule = backprop if _excluded(layer_names[0], module, exclude) else rule
        base, variant = plan[key]
        assert base is not None  # `modules` holds only what converts
        layer = VARIANTS.get(variant, CONVERTIBLE[base]).from_module(module, layer_rule)
        _carry_hooks(module, layer)
        if variant == "pad_same":
            assert isinstance(layer, _Conv)  # timm's Conv2dSame
            layer.pad_same = True
        generator = torch.Generator().manual_seed(layer_seed)
        one = [cast(FeedbackLayer, layer)]  # any replacement but attention (its projections) is one layer
        parts: list[FeedbackLayer] = getattr(layer, "rule_parts", lambda: one)()  # noqa: B023
        for part in parts:
            part.draw_state = generator.get_state()  # to redraw the same B after `to_empty`
            layer_rule.setup(part, generator)
            _share_tied_state(part, tied)
            _tag_rule(part)
            layers[".".join(filter(None, (layer_names[0], _child_name(layer, part))))] = part
        if layer_names == [""]:
            model = layer
            continue  # a composite root (attention) still has its children to convert
        for name in layer_names:  # the same converted layer under every name of the module
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, layer)
    attention.keep_dense(model)
    rule.setup_model(model)  # once, with every layer in place (DFA hooks the model's output)
    watch(model, layers, unknown, tables)
    return model


def _share_tied_state(part: FeedbackLayer, tied: dict[tuple[int, ...], FeedbackLayer]) -> None:
    """Gives a layer whose weight Parameter an earlier converted layer also uses (`b.weight = a.weight`)
    that layer's rule state named by `tied_state`, the very same tensors: kp's B then gets the summed
    gradient W gets, and both draw and redraw (`draw_state`) the same B."""
    if not part.rule.tied_state:
        return
    leaves = [w for w in part.leaf_weights() if isinstance(w, nn.Parameter)]
    if not leaves:  # attention's projections: their owner's weight, shared by nothing else
        return
    first = tied.setdefault((id(part.rule), *map(id, leaves)), part)
    if first is part:
        return
    for name in part.rule.tied_state:
        setattr(part, name, getattr(first, name))
    part.draw_state = first.draw_state


def _child_name(layer: nn.Module, part: nn.Module) -> str:
    return "" if part is layer else next(n for n, m in layer.named_children() if m is part)


#: A module's hook tables (torch's own attributes): the converted layer takes them over, so hooks keep
#: acting and their handles keep removing them.
HOOK_TABLES = ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks",
               "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_backward_pre_hooks",
               "_backward_hooks")


def _carry_hooks(module: nn.Module, layer: nn.Module) -> None:
    """Gives `layer` the hooks registered on `module` (a mask, a probe), ahead of any of its own: the same
    tables, so that a handle the user holds still removes its hook."""
    for table in HOOK_TABLES:
        theirs, ours = getattr(module, table), getattr(layer, table)
        if theirs is not ours:
            theirs.update(ours)
            setattr(layer, table, theirs)
    if module._backward_hooks:
        layer._is_full_backward_hook = module._is_full_backward_hook


def _check_targets(names: dict[int, list[str]], modules: dict[int, nn.Module],
                   exclude: tuple[Selector, ...], rule: Rule) -> None:
    """Refuses what convert cannot do right: a shared layer excluded under one name only, layers on the
    meta device (their feedback would be drawn into memory that `to_empty()` leaves uninitialised), and a
    rule reading a weight whose parametrization steps at every read (spectral norm)."""
    for key, layer_names in names.items():
        excluded = {n: _excluded(n, modules[key], exclude) for n in layer_names}
        if len(set(excluded.values())) > 1:
            off = [n for n, e in excluded.items() if e]
            on = [n for n, e in excluded.items() if not e]
            raise ValueError(f"layer {on[0]!r} is the same module as excluded {off[0]!r}: one layer "
                             f"cannot be both trained by the rule and left on backprop; "
                             f"exclude all its names or none")
    meta = [ns[0] for key, ns in names.items()
            if any(t.is_meta for t in (*modules[key].parameters(), *modules[key].buffers()))]
    if meta:
        raise ValueError(f"cannot convert layer {meta[0]!r}: it is on the meta device, and its random "
                         f"feedback would not be redrawn when the model is materialised; materialise the "
                         f"model first (model.to_empty(device=...), then reset_parameters() "
                         f"or load_state_dict), then convert")
    if rule.name == "bp":
        return
    for key, layer_names in names.items():
        tensor = advances_on_read(modules[key])
        if tensor is not None and not _excluded(layer_names[0], modules[key], exclude):
            raise ValueError(f"cannot convert layer {layer_names[0]!r} for rule {rule.name!r}: its {tensor} "
                             f"is spectral-normed, whose power iteration steps at every read in training, "
                             f"and the rule reads the weight beyond the forward (to make or apply its "
                             f"feedback), so the forward would drift from the original's; "
                             f"exclude=[{layer_names[0]!r}] "
                             f"(backprop) or remove the parametrization")


RULE_KEY = "rule"  # state_dict key (under each layer's prefix) naming the rule that wrote the layer's state


def _encode(name: str) -> torch.Tensor:
    return torch.tensor(list(name.encode()), dtype=torch.uint8)


def _tag_rule(layer: FeedbackLayer) -> None:
    """A layer whose rule keeps state beyond W and b (fa's B, kp's learned B, ...) writes its rule's name
    into the state dict, and refuses to load the state another rule wrote: fa's B loaded as kp's would
    otherwise be taken silently (same key, same shape). State dicts without the name (written by older
    versions of nowt) load as before. (Module-level hooks: a converted model pickles whole.)"""
    register = getattr(layer, "register_state_dict_post_hook", None) or layer._register_state_dict_hook
    register(_write_rule_name)
    layer.register_load_state_dict_pre_hook(_check_rule_name)


def _write_rule_name(module, state_dict, prefix, local_metadata) -> None:
    if any(k.startswith(prefix) and k[len(prefix):] not in module.own_state for k in state_dict):
        state_dict[prefix + RULE_KEY] = _encode(module.rule.name)


def _check_rule_name(module, state_dict, prefix, *args) -> None:
    stored = state_dict.pop(prefix + RULE_KEY, None)
    if stored is None:
        _keep_feedback(module, state_dict, prefix)
        return
    writer = bytes(stored.tolist()).decode(errors="replace")
    if writer != module.rule.name:
        layer = prefix[:-1] or type(module).__name__
        raise ValueError(f"state_dict of layer {layer!r} was written by rule {writer!r}, but this layer "
                         f"is trained by {module.rule.name!r}: load it into a model converted with "
                         f"rule={writer!r}")


def _keep_feedback(module: FeedbackLayer, state_dict: dict, prefix: str) -> None:
    """A plain model's state dict (a pretrained checkpoint) holds none of the rule's state: the layer keeps
    its own, and the weights load under strict checking of everything else. Partly present state is left
    to the strict check."""
    own = {n: t for n, t in (*module._parameters.items(), *module._buffers.items())
           if t is not None and n not in module.own_state and n not in module._non_persistent_buffers_set}
    if own and not any(prefix + n in state_dict for n in own):
        state_dict.update({prefix + n: t.detach() for n, t in own.items()})
