"""nowt.integrations.hf: the Hugging Face Trainer callback, with the real Trainer on a tiny random GPT-2
(a config, nothing downloaded; random token ids, no tokenizer). Runs in CI: transformers and accelerate are
in the dev extra. Skipped where either is absent."""

from __future__ import annotations

import math

import pytest
import torch

import nowt

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
hf = pytest.importorskip("nowt.integrations.hf")

STEPS, BATCH, LOG_EVERY = 8, 4, 4


def gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50, n_positions=16,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg)


def bert() -> torch.nn.Module:
    """Under wm: nn.Linear projections throughout (GPT-2's Conv1D: test_the_mirror_on_gpt2_conv1d)."""
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=16)
    return transformers.BertForMaskedLM(cfg)


def dataset(n: int = 32) -> list[dict[str, torch.Tensor]]:
    ids = torch.randint(0, 50, (n, 8), generator=torch.Generator().manual_seed(1))
    return [{"input_ids": x, "labels": x} for x in ids]


def trainer(model, tmp_path, callbacks=(), **args) -> transformers.Trainer:
    args = transformers.TrainingArguments(**{
        "output_dir": str(tmp_path), "max_steps": STEPS, "per_device_train_batch_size": BATCH,
        "learning_rate": 1e-3, "logging_steps": LOG_EVERY, "report_to": [], "save_strategy": "no",
        "use_cpu": True, "disable_tqdm": True, "seed": 0, **args})
    return transformers.Trainer(model=model, args=args, train_dataset=dataset(), callbacks=list(callbacks))


def mean_angle(model) -> float:
    layers = nowt.feedback_layers(model)
    angles = [a for n, a in nowt.weight_angles(model).items() if layers[n].rule.name != "bp"]
    return sum(angles) / len(angles)


def test_the_mirror_runs_in_the_trainer(tmp_path):
    """begin_training (the warm-up, with the global batch) and after_step (the schedule, every optimizer
    step) run: B moves from its random start (~90 degrees) to W. Without the callback it stays random."""
    model = nowt.convert(bert(), "wm", seed=0, mirror_every=1)
    start = mean_angle(model)
    callback = hf.NowtCallback()
    trainer(model, tmp_path, [callback], gradient_accumulation_steps=2).train()
    layer = model.bert.encoder.layer[0].intermediate.dense
    assert callback.began
    assert int(layer.mirror_batch_size) == BATCH * 2  # the global batch of one optimizer step
    assert int(layer.mirror_count) == STEPS  # one annealed mirror step after each optimizer step
    assert start > 80 and mean_angle(model) < 30, (start, mean_angle(model))

    plain = nowt.convert(bert(), "wm", seed=0, mirror_every=1)
    trainer(plain, tmp_path).train()
    assert mean_angle(plain) > 80 and int(plain.bert.encoder.layer[0].intermediate.dense.mirror_count) == 0


def test_the_mirror_on_gpt2_conv1d(tmp_path):
    """GPT-2's Conv1D stores W (in, out): the mirror's fused nn.Linear step once took it for an nn.Linear
    (addmm_ into B of shape (in, out) failed)."""
    model = nowt.convert(gpt2(), "wm", seed=0, mirror_every=1)
    assert mean_angle(model) > 80
    trainer(model, tmp_path, [hf.NowtCallback()]).train()
    assert mean_angle(model) < 30


def test_alignment_is_logged_with_the_trainer_s_logs(tmp_path):
    model = nowt.convert(gpt2(), "fa", seed=0)
    callback = hf.NowtCallback(per_layer=True)
    t = trainer(model, tmp_path, [callback])
    t.train()
    logged = [e for e in t.state.log_history if "nowt/angle_mean" in e]
    assert [e["step"] for e in logged] == [4, 8]
    assert all("loss" in e for e in logged)  # joined the Trainer's own log of that step
    assert 60 < logged[-1]["nowt/angle_mean"] < 120
    assert logged[-1]["nowt/angle/transformer.h.0.attn.c_attn"] == pytest.approx(
        nowt.weight_angles(model)["transformer.h.0.attn.c_attn"])
    assert callback.last_alignment["nowt/angle_min"] <= callback.last_alignment["nowt/angle_max"]
    assert logged[-1]["nowt/norm_ratio/transformer.h.0.attn.c_attn"] == pytest.approx(
        nowt.weight_norm_ratios(model)["transformer.h.0.attn.c_attn"])
    assert 0 < logged[-1]["nowt/norm_ratio_min"] <= logged[-1]["nowt/norm_ratio_max"]


class Recorder(transformers.TrainerCallback):
    """Stands in for a report_to integration (TensorBoard, W&B): a callback before nowt's."""

    def __init__(self) -> None:
        self.logs: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))


@pytest.mark.parametrize("attached", [True, False])
def test_attach_logs_through_trainer_log_so_earlier_callbacks_see_it(tmp_path, attached):
    """`before` stands where report_to integrations stand (before the callbacks passed in), `after` after
    nowt's: without attach only `after` sees the angles (merged into the Trainer's log of the step)."""
    model = nowt.convert(gpt2(), "fa", seed=0)
    before, after = Recorder(), Recorder()
    t = trainer(model, tmp_path, [before], logging_steps=100)  # the Trainer itself would not log
    if attached:
        hf.attach(t, log_every=LOG_EVERY)
    else:
        t.add_callback(hf.NowtCallback(log_every=LOG_EVERY))
    t.add_callback(after)
    t.train()
    assert len([e for e in before.logs if "nowt/angle_mean" in e]) == (2 if attached else 0)
    assert len([e for e in after.logs if "nowt/angle_mean" in e]) == 2
    assert len([e for e in t.state.log_history if "nowt/angle_mean" in e]) == 2


def test_a_rule_without_a_start_hook_costs_no_extra_forward_and_a_resumed_run_skips_it(tmp_path):
    model = nowt.convert(bert(), "wm", seed=0)
    calls = []
    model.register_forward_pre_hook(lambda m, a, k: calls.append(1), with_kwargs=True)
    t = trainer(model, tmp_path)
    callback = hf.NowtCallback()

    def begin(m):
        loader = t.get_train_dataloader()
        callback.on_train_begin(t.args, t.state, t.control, model=m, train_dataloader=loader)

    t.state.global_step = 5  # as after a resume
    begin(model)
    layer = model.bert.encoder.layer[0].intermediate.dense
    assert not callback.began and not calls and int(layer.mirror_batch_size) == 0
    t.state.global_step = 0
    begin(model)
    assert callback.began and len(calls) == 1
    fa = nowt.convert(gpt2(), "fa", seed=0)
    fa.register_forward_pre_hook(lambda m, a, k: calls.append(1), with_kwargs=True)
    begin(fa)
    assert len(calls) == 1  # fa's begin_training does nothing: no forward


def test_log_every_is_checked():
    with pytest.raises(ValueError, match="log_every"):
        hf.NowtCallback(log_every=-1)
    assert math.isfinite(hf.NowtCallback(log_every=0).log_every)


def test_dfa_trains_in_the_trainer_with_the_loss_taken_from_the_output(tmp_path):
    """As docs/integrations.md says: DFA takes its error at the model's output, so the loss must be computed
    from `outputs.logits` (a `compute_loss_func`), not inside the model from `labels`."""

    def loss_fn(outputs, labels, num_items_in_batch=None):
        logits = outputs.logits
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))

    model = nowt.convert(bert(), "dfa", seed=0)
    t = trainer(model, tmp_path, [hf.NowtCallback()])
    t.compute_loss_func = loss_fn
    first = model.bert.encoder.layer[0].intermediate.dense.weight.detach().clone()
    t.train()
    assert all(math.isfinite(e["loss"]) for e in t.state.log_history if "loss" in e)
    assert not torch.equal(first, model.bert.encoder.layer[0].intermediate.dense.weight)
    inside = nowt.convert(bert(), "dfa", seed=0)
    with pytest.raises(RuntimeError, match="output"):
        trainer(inside, tmp_path, [hf.NowtCallback()]).train()
