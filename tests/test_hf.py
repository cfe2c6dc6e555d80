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


SMALL = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
OTHERS = {
    "bert": (lambda: transformers.BertModel(transformers.BertConfig(vocab_size=50, **SMALL)),
             {"input_ids": IDS}),
    "llama": (lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(vocab_size=50, **SMALL)),
              {"input_ids": IDS}),
    # its positional convolution is weight-normed through torch.nn.utils.parametrizations
    "wav2vec2": (lambda: transformers.Wav2Vec2Model(transformers.Wav2Vec2Config(
        conv_dim=(8, 8), conv_kernel=(4, 4), conv_stride=(2, 2), num_conv_pos_embeddings=4,
        num_conv_pos_embedding_groups=2, hidden_dropout=0.0, activation_dropout=0.0, attention_dropout=0.0,
        feat_proj_dropout=0.0, layerdrop=0.0, mask_time_prob=0.0, **SMALL)),
        {"input_values": torch.randn(2, 64)}),
}


def _out(out):
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("name", OTHERS)
def test_other_models_convert_whole_and_equal_autograd_under_bp(name):
    import warnings
    make, inputs = OTHERS[name]
    torch.manual_seed(0)
    plain = make()
    converted = nowt.convert(copy.deepcopy(plain), "bp")
    for model in (plain, converted):
        torch.manual_seed(1)  # the same dropout masks
        _out(model(**inputs)).square().sum().backward()
    for (n, p), q in zip(plain.named_parameters(), converted.parameters(), strict=True):
        assert (p.grad is None and q.grad is None) or torch.equal(p.grad, q.grad), n
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # every converted layer runs
        model = nowt.convert(make(), "fa", seed=0)
        _out(model(**inputs)).sum().backward()
    assert all(r.rule in ("fa", "bp (by design)") for r in nowt.summary(model, show=False))


def test_a_tied_converted_head_does_not_trip_the_bypass_check():
    """lm_head shares its weight with the token embedding: the embedding's gradient reaches that weight when
    only the transformer runs, which is no bypass of the converted head."""
    model = nowt.convert(gpt2(), "fa", seed=0)
    model.transformer(IDS).last_hidden_state.sum().backward()
    assert model.transformer.wte.weight.grad is not None
