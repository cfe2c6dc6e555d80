"""The Hugging Face Trainer with `NowtCallback` against the loop of docs/python.md: the same updates, bit for
bit (float64 BERT, no dropout, data in order; the mirror's noise pinned per step in both runs), under gradient
accumulation, kp's weight decay and the Trainer's clipping (which counts B), and across a resume from a
Trainer checkpoint (B, the mirror's and brsf's counters restored); and an optimizer built before
`nowt.convert`, which would leave kp's B as drawn, refused. Skipped without transformers and accelerate."""

from __future__ import annotations

import warnings

import pytest
import torch

import nowt
from nowt.metrics import shape_pass

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
hf = pytest.importorskip("nowt.integrations.hf")

STEPS, BATCH, ACCUMULATE, LR, DECAY, CLIP = 4, 4, 2, 0.05, 0.1, 1.0
OPTIONS = {"wm": {"mirror_every": 2, "mirror_warmup": 5}}


def bert(rule: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=16, hidden_dropout_prob=0.0,
                                  attention_probs_dropout_prob=0.0, num_labels=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = nowt.convert(transformers.BertForSequenceClassification(cfg).double(), rule, seed=seed,
                             **OPTIONS.get(rule, {}))
    for r in nowt.feedback_rules(model):  # the mirror's noise (the global RNG) pinned to the step
        begin, after = r.begin_training, r.after_step
        r.begin_training = lambda m, size, begin=begin: (torch.manual_seed(0), begin(m, size))
        r.after_step = lambda m, step, after=after: (torch.manual_seed(step), after(m, step))
    return model


def dataset(n: int = 32) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    ids, ys = torch.randint(0, 50, (n, 8), generator=g), torch.randint(0, 3, (n,), generator=g)
    return [{"input_ids": x, "labels": y} for x, y in zip(ids, ys, strict=True)]


def loss_fn(outputs, labels, num_items_in_batch):
    """The mean over the optimizer step's examples (a `compute_loss_func`: the loss outside the model, as dfa
    needs, and the same under accumulation in both loops)."""
    return torch.nn.functional.cross_entropy(outputs.logits, labels, reduction="sum") / num_items_in_batch


class InOrder(transformers.Trainer):
    def _get_train_sampler(self, train_dataset=None):
        return torch.utils.data.SequentialSampler(self.train_dataset)


def trainer(model, tmp_path, steps: int = STEPS, **args) -> transformers.Trainer:
    args = transformers.TrainingArguments(**{
        "output_dir": str(tmp_path), "max_steps": steps, "per_device_train_batch_size": BATCH,
        "gradient_accumulation_steps": ACCUMULATE, "learning_rate": LR, "optim": "sgd",
        "lr_scheduler_type": "constant", "weight_decay": DECAY, "max_grad_norm": CLIP, "report_to": [],
        "save_strategy": "no", "use_cpu": True, "disable_tqdm": True, "seed": 0, **args})
    return InOrder(model=model, args=args, train_dataset=dataset(), compute_loss_func=loss_fn,
                   callbacks=[hf.NowtCallback(log_every=0)])


def plain_loop(model, decayed: list[str]) -> None:
    """docs/python.md's loop: one forward, begin_training; then backward, clipping, step, after_step."""
    data, collate = dataset(), transformers.default_data_collator
    rules = nowt.feedback_rules(model)
    with torch.no_grad(), shape_pass(model):
        model(input_ids=collate(data[:BATCH])["input_ids"])
    for rule in rules:
        rule.begin_training(model, BATCH * ACCUMULATE)
    params = dict(model.named_parameters())
    groups = [{"params": [p for n, p in params.items() if n in decayed], "weight_decay": DECAY},
              {"params": [p for n, p in params.items() if n not in decayed], "weight_decay": 0.0}]
    optimizer = torch.optim.SGD(groups, lr=LR)
    for step in range(1, STEPS + 1):
        for i in range(ACCUMULATE):
            start = ((step - 1) * ACCUMULATE + i) * BATCH
            batch = collate(data[start:start + BATCH])
            loss_fn(model(input_ids=batch["input_ids"]), batch["labels"], BATCH * ACCUMULATE).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        optimizer.zero_grad()
        for rule in rules:
            rule.after_step(model, step)


def assert_same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not different, different[:5]


@pytest.mark.parametrize("rule", ["kp", "brsf", "wm"])
def test_the_trainer_gives_the_plain_loop_s_updates(tmp_path, rule):
    """One mirror step per optimizer step (not per accumulated batch), brsf's draws per forward, kp's B in the
    optimizer with W's decay and clipped with W: every parameter and buffer equal."""
    model = bert(rule)
    t = trainer(model, tmp_path)
    t.train()
    reference = bert(rule)
    plain_loop(reference, t.get_decay_parameter_names(reference))
    assert not torch.equal(model.classifier.weight, bert(rule).classifier.weight)  # it trained
    assert_same(model, reference)


@pytest.mark.parametrize("rule", ["kp", "brsf", "wm"])
def test_a_resumed_trainer_run_equals_an_unbroken_one(tmp_path, rule):
    """The resumed model is converted with another seed: B, the mirror's counters and brsf's seed and draw
    count must come from the checkpoint."""
    unbroken = bert(rule)
    trainer(unbroken, tmp_path, steps=2 * STEPS, save_strategy="steps", save_steps=STEPS).train()
    resumed = bert(rule, seed=1)
    t = trainer(resumed, tmp_path, steps=2 * STEPS)
    t.train(resume_from_checkpoint=str(tmp_path / f"checkpoint-{STEPS}"))
    callback = next(c for c in t.callback_handler.callbacks if isinstance(c, hf.NowtCallback))
    assert not callback.began  # no second warm-up: the checkpoint holds the state
    assert_same(unbroken, resumed)


def test_an_optimizer_built_before_convert_is_refused(tmp_path):
    """It holds W but not kp's B, which would stay as drawn while W learns: passed in (`optimizers=`) or made
    by the Trainer before the model was converted. One made by `train()` after convert holds B."""
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=16, num_labels=3)
    plain = transformers.BertForSequenceClassification(cfg)
    optimizer = torch.optim.SGD(plain.parameters(), lr=LR)
    nowt.convert(plain, "kp", seed=0)
    t = trainer(plain, tmp_path)
    t.optimizer = optimizer  # as optimizers=(optimizer, None)
    with pytest.raises(ValueError, match=r"'bert.encoder.layer.0.attention.self.query.feedback'.*kp's B"):
        t.train()

    early = transformers.BertForSequenceClassification(cfg)
    t = trainer(early, tmp_path)
    t.create_optimizer()
    nowt.convert(early, "kp", seed=0)
    with pytest.raises(ValueError, match="before nowt.convert"):
        t.train()

    late = transformers.BertForSequenceClassification(cfg)
    t = trainer(late, tmp_path)
    nowt.convert(late, "kp", seed=0)
    drawn = late.classifier.feedback.detach().clone()
    t.train()
    assert not torch.equal(drawn, late.classifier.feedback)
