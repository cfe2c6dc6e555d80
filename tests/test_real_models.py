"""The real-client check (issue 27, item 7): a fixed list of Hugging Face transformers models, built from tiny
random configurations (nothing downloaded), converted with every per-layer rule in the registry
(`nowt.list_rules()` less the whole-network ones: a rule added later is checked here without a line changed).
For each pair: conversion either succeeds with every weight accounted for (each parameter belongs to a
converted layer or to a module left on backprop by design; no weight matrix left on plain backprop; every
converted layer ran) and one SGD step gives finite losses and weights, or it is one of the refusals listed
in REFUSED, which must be a ValueError saying why.

Skipped where transformers is not installed (`pip install nowt[hf]`); CI has it (the dev extra). The whole
module takes about 10 s on one CPU thread. torchvision and timm (CUDA builds only on this project's
machines) are checked by `benchmarks/real_models.py` instead.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

import nowt
from nowt.rules import WholeNetworkRule, rule_class

transformers = pytest.importorskip("transformers")
T = transformers

RULES = [r for r in nowt.list_rules() if not issubclass(rule_class(r), WholeNetworkRule)]
V = 64  # vocabulary
IDS = torch.randint(0, V, (2, 8), generator=torch.Generator().manual_seed(0))
SMALL = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)


def _lm(model: nn.Module, **extra) -> tuple[nn.Module, dict, torch.Tensor, None]:
    return model, {"input_ids": IDS, **extra}, IDS, None


#: name -> () -> (model, inputs, labels or None, the output DFA takes its error from when not the logits).
#: Labels: the loss is cross-entropy of the logits against them, computed outside the model (as DFA needs:
#: its error is taken at the model's output); None: the mean square of `last_hidden_state`.
MODELS = {
    "gpt2": lambda: _lm(T.GPT2LMHeadModel(T.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=V,
                                                       n_positions=16, bos_token_id=0, eos_token_id=0))),
    "bert": lambda: _lm(T.BertForMaskedLM(T.BertConfig(vocab_size=V, **SMALL))),
    "distilbert": lambda: _lm(T.DistilBertForMaskedLM(T.DistilBertConfig(
        vocab_size=V, dim=32, n_layers=1, n_heads=2, hidden_dim=64))),
    "t5": lambda: _lm(T.T5ForConditionalGeneration(T.T5Config(
        vocab_size=V, d_model=32, d_kv=16, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2,
        decoder_start_token_id=0)), decoder_input_ids=IDS),
    "roberta": lambda: _lm(T.RobertaForMaskedLM(T.RobertaConfig(vocab_size=V, max_position_embeddings=20,
                                                                **SMALL))),
    "llama": lambda: _lm(T.LlamaForCausalLM(T.LlamaConfig(vocab_size=V, num_key_value_heads=2, **SMALL))),
    "opt": lambda: _lm(T.OPTForCausalLM(T.OPTConfig(
        vocab_size=V, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, ffn_dim=64,
        word_embed_proj_dim=32, max_position_embeddings=16))),
    "gpt_neo": lambda: _lm(T.GPTNeoForCausalLM(T.GPTNeoConfig(
        vocab_size=V, hidden_size=32, num_layers=2, num_heads=2, attention_types=[[["global", "local"], 1]],
        max_position_embeddings=16, window_size=4))),
    "clip_text": lambda: (T.CLIPTextModel(T.CLIPTextConfig(vocab_size=V, max_position_embeddings=16,
                                                           bos_token_id=0, eos_token_id=1, **SMALL)),
                          {"input_ids": IDS}, None, "last_hidden_state"),
    "vit": lambda: (T.ViTForImageClassification(T.ViTConfig(image_size=8, patch_size=4, num_labels=3,
                                                            **SMALL)),
                    {"pixel_values": torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))},
                    torch.tensor([0, 2]), None),
    "wav2vec2": lambda: (T.Wav2Vec2Model(T.Wav2Vec2Config(
        conv_dim=(8, 8), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=2, **SMALL)),
        {"input_values": torch.randn(2, 400, generator=torch.Generator().manual_seed(0))}, None,
        "last_hidden_state"),
}

#: (rule, model or "*") -> what the refusal's message says. Everything else must convert and step.
REFUSED = {
    ("ifa", "*"): "ifa supports nn.Sequential MLPs",  # by design: IFA is defined for MLPs
    # OPT runs its MLP on [N*T, C] (the batch folded into the positions); DFA needs the batch on dim 0 and
    # says which layers to exclude.
    ("dfa", "opt"): "dfa needs every converted layer to see the model's batch along dim 0",
}


def _refusal(rule: str, model: str) -> str | None:
    return REFUSED.get((rule, model), REFUSED.get((rule, "*")))


def _loss(out, labels: torch.Tensor | None) -> torch.Tensor:
    if labels is None:
        return out.last_hidden_state.float().pow(2).mean()
    logits = out.logits
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1))


def _owned(model: nn.Module, row: nowt.inventory.Row) -> list[nn.Parameter]:
    """The parameters a summary row stands for: a converted layer's, with those inside it; another
    module's own."""
    m = model.get_submodule(row.name)
    return list(m.parameters(recurse=isinstance(m, nowt.FeedbackLayer) or hasattr(m, "rule_parts")))


def check_accounted(model: nn.Module, rule: str) -> None:
    """Every parameter is in a summary row; no weight matrix is on plain backprop under a rule that is
    not bp; every converted layer ran."""
    rows = nowt.summary(model, show=False)
    covered = {id(p) for row in rows for p in _owned(model, row)}
    missed = [n for n, p in model.named_parameters() if id(p) not in covered]
    assert not missed, f"parameters in no summary row: {missed}"
    plain = [(r.name, r.type) for r in rows if r.rule == "bp" and rule != "bp"]
    assert not plain, f"weight matrices left on backprop under {rule}: {plain}"
    never = [r.name for r in rows if r.reads.startswith("nothing: never ran")]
    assert not never, f"converted layers that never ran: {never}"
    kinds = {r.rule for r in rows}
    assert rule in kinds and kinds <= {rule, "bp (by design)"}, kinds


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("rule", RULES)
def test_real_model_converts_completely_and_steps(name, rule):
    torch.manual_seed(0)
    model, inputs, labels, output = MODELS[name]()
    options = {"output": output} if rule in ("dfa",) and output else {}
    refusal = _refusal(rule, name)
    if refusal is not None:
        with pytest.raises(ValueError, match=refusal):
            model = nowt.convert(model, rule, seed=0, **options)
            model(**inputs)  # some refusals come at the first forward, where shapes are known
        return
    model = nowt.convert(model, rule, seed=0, **options)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the first-forward check's "did not run" included
        warnings.filterwarnings("ignore", module="transformers")
        loss = _loss(model(**inputs), labels)
    loss.backward()
    optimizer.step()
    check_accounted(model, rule)
    after = _loss(model(**inputs), labels)
    assert math.isfinite(loss.item()) and math.isfinite(after.item()), (loss, after)
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    assert not bad, f"non-finite weights after one step: {bad}"
    no_grad = [f"{n}.{k}" for n, m in nowt.feedback_layers(model).items()
               for k, p in m.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"converted layers' parameters that got no update: {no_grad}"


def test_every_per_layer_rule_is_checked():
    """The rule list is the registry's, not a copy: a new per-layer rule is checked here automatically."""
    assert set(RULES) == {r for r in nowt.list_rules() if not issubclass(rule_class(r), WholeNetworkRule)}
    assert {"fa", "kp", "wm", "dfa"} <= set(RULES) and not any(
        issubclass(rule_class(r), WholeNetworkRule) for r in RULES)


def test_a_weight_matrix_left_on_backprop_is_caught():
    """The accounting check itself: a model holding an unconverted matrix (excluded by the user) fails it."""
    model, inputs, labels, _ = MODELS["bert"]()
    model = nowt.convert(model, "fa", seed=0, exclude=["cls.predictions.transform.dense"])
    _loss(model(**inputs), labels).backward()
    with pytest.raises(AssertionError, match="left on backprop"):
        check_accounted(model, "fa")
