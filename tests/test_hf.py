"""Hugging Face transformers models convert completely (GPT-2's `Conv1D` included): tiny random-init
configurations, nothing downloaded. Skipped where transformers is not installed (`pip install nowt[hf]`)."""

import copy
import io

import pytest
import torch

import nowt

transformers = pytest.importorskip("transformers")


def gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50, n_positions=16,
                                  bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0,
                                  attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(cfg)


IDS = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(0))


def test_gpt2_conv1d_projections_are_converted_and_every_weight_is_accounted_for():
    model = nowt.convert(gpt2(), "fa", seed=0)
    rows = {r.name: r for r in nowt.summary(model, show=False)}
    conv1d = [n for n, m in model.named_modules() if isinstance(m, transformers.pytorch_utils.Conv1D)]
    assert len(conv1d) == 8 and all(isinstance(model.get_submodule(n), nowt.FeedbackLayer) for n in conv1d)
    attn = model.transformer.h[0].attn.c_attn
    assert attn.feedback.shape == attn.weight.shape == (32, 96)  # B shaped like the weight the forward uses
    assert all(rows[n].rule == "fa" and rows[n].reads == "B" for n in conv1d)
    assert {r.reads for r in rows.values() if r.rule == "bp"} == set()  # nothing left on backprop unmarked
    assert rows["transformer.wte"].reads == "nothing: a lookup"
    model(IDS, labels=IDS).loss.backward()
    assert attn.weight.grad is not None
    assert 60 < nowt.weight_angles(model)["transformer.h.0.attn.c_attn"] < 120


def test_gpt2_under_bp_is_plain_autograd_exactly():
    plain = gpt2()
    converted = nowt.convert(copy.deepcopy(plain), "bp")
    a, b = plain(IDS, labels=IDS).loss, converted(IDS, labels=IDS).loss
    a.backward()
    b.backward()
    assert torch.equal(a, b)
    for (name, p), q in zip(plain.named_parameters(), converted.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad), name


@pytest.mark.parametrize("rule", ["fa", "kp", "wm", "bp"])
def test_gpt2_upstream_updates_do_not_depend_on_downstream_weights(rule):
    """As tests/test_no_transport.py: every converted layer after the first changed between forward and
    backward; under a rule without weight transport the first Conv1D's update does not move."""

    def first_grads(tamper: bool):
        model = nowt.convert(gpt2(), rule, seed=0)
        loss = model(IDS, labels=IDS).loss
        layers = list(nowt.feedback_layers(model).values())
        if tamper:
            for layer in layers[1:]:
                layer.weight.data.mul_(-3.0).add_(1.0)
        loss.backward()
        return layers[0].weight.grad.clone(), layers[0].bias.grad.clone()

    clean, tampered = first_grads(False), first_grads(True)
    same = all(torch.equal(a, b) for a, b in zip(clean, tampered, strict=True))
    assert same == (rule != "bp")


def test_a_converted_gpt2_pickles_and_loads_its_pretrained_weights():
    pretrained = gpt2()
    model = nowt.convert(gpt2(), "fa", seed=0)
    for p in pretrained.parameters():
        p.data.add_(1.0)
    feedback = model.transformer.h[1].mlp.c_fc.feedback.clone()
    model.load_state_dict(pretrained.state_dict())
    assert torch.equal(model.transformer.h[1].mlp.c_fc.weight, pretrained.transformer.h[1].mlp.c_fc.weight)
    assert torch.equal(model.transformer.h[1].mlp.c_fc.feedback, feedback)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert torch.equal(loaded(IDS).logits, model(IDS).logits)


def test_bert_and_llama_convert_without_unknown_weights():
    import warnings
    bert = transformers.BertModel(transformers.BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64))
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        for model in (bert, llama):
            model = nowt.convert(model, "fa", seed=0)
            out = model(IDS)
            (out.last_hidden_state if hasattr(out, "last_hidden_state") else out.logits).sum().backward()


def test_a_tied_converted_head_does_not_trip_the_bypass_check():
    """lm_head shares its weight with the token embedding: the embedding's gradient reaches that weight when
    only the transformer runs, which is no bypass of the converted head."""
    model = nowt.convert(gpt2(), "fa", seed=0)
    model.transformer(IDS).last_hidden_state.sum().backward()
    assert model.transformer.wte.weight.grad is not None
