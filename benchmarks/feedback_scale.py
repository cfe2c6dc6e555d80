"""First-step gradient norm of fa / kp / wm relative to backprop's, with B at PyTorch's fan-in scale
(`init="kaiming_uniform"`, nowt's default before issue 27) and at each weight's own spread (`init="match"`).

    python benchmarks/feedback_scale.py [--out benchmarks/feedback_scale.md]

Models: random-init (never downloaded) tiny configurations of Hugging Face GPT-2, Llama and OPT (12 layers,
width 128; their own init, N(0, 0.02)) when `transformers` is importable, and the two stand-ins of
tests/test_feedback_scale.py (a 12-layer Linear-LayerNorm MLP and a 12-block pre-norm ViT, N(0, 0.02)).
One batch, one forward/backward per variant: the norm of the gradient of every model parameter (B's own
gradient under kp left out) over backprop's on the same batch, and the largest per-layer ratio that
`nowt.check_feedback_scale` reports (the gradient reaching a layer's output). Writes a markdown table with
the date, machine, torch and transformers versions and the command.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import sys
import warnings
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F

import nowt
from nowt import provenance

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_feedback_scale import TinyViT, mlp_ln  # noqa: E402  (the stand-ins the tests use)

RULES = ("fa", "kp", "wm")
INITS = ("kaiming_uniform", "match")


def hf_models(layers: int, width: int, vocab: int):
    """(name, model, loss_fn, x, y) for GPT-2, Llama and OPT at random init; nothing when transformers is
    not installed."""
    try:
        import transformers as tf
    except ImportError:
        return []
    configs = {
        "gpt2": (tf.GPT2LMHeadModel, tf.GPT2Config(n_layer=layers, n_embd=width, n_head=4, vocab_size=vocab,
                                                   n_positions=64)),
        "llama": (tf.LlamaForCausalLM, tf.LlamaConfig(num_hidden_layers=layers, hidden_size=width,
                                                      intermediate_size=4 * width, num_attention_heads=4,
                                                      num_key_value_heads=4, vocab_size=vocab,
                                                      max_position_embeddings=64)),
        "opt": (tf.OPTForCausalLM, tf.OPTConfig(num_hidden_layers=layers, hidden_size=width,
                                                ffn_dim=4 * width, num_attention_heads=4, vocab_size=vocab,
                                                word_embed_proj_dim=width, max_position_embeddings=64)),
    }
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (4, 32), generator=g)
    out = []
    for name, (cls, cfg) in configs.items():
        torch.manual_seed(0)
        out.append((f"HF {name} ({layers} layers, width {width})", cls(cfg).train(), _lm_loss, ids, ids))
    return out


def _lm_loss(output, ids):
    logits = output.logits[:, :-1]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def stand_ins():
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    y = torch.randint(0, 10, (32,), generator=g)
    return [("stand-in: 12 x Linear-LayerNorm-GELU, width 64", mlp_ln(), F.cross_entropy,
             torch.randn(32, 64, generator=g), y),
            ("stand-in: ViT, 12 pre-norm blocks, width 64", TinyViT(), F.cross_entropy,
             torch.randn(32, 16, 16, generator=g), y)]


def grad_norm(model, loss_fn, x, y) -> float:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # the same dropout masks (GPT-2, OPT) for every variant
    loss_fn(model(x), y).backward()
    norms = [p.grad.double().norm() for n, p in model.named_parameters()
             if p.grad is not None and not n.endswith("feedback")]
    return float(torch.stack(norms).norm())


def measure(name, base, loss_fn, x, y) -> list[list[str]]:
    bp = grad_norm(copy.deepcopy(base), loss_fn, x, y)
    rows = []
    for rule in RULES:
        cells = [name, rule]
        for init in INITS:
            model = nowt.convert(copy.deepcopy(base), rule, seed=0, init=init)
            ratio = grad_norm(model, loss_fn, x, y) / bp
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                worst = max(nowt.check_feedback_scale(model, loss_fn, x, y).values())
            cells += [f"{ratio:.3g}", f"{worst:.3g}"]
        rows.append(cells)
        print(" | ".join(cells), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).with_name("feedback_scale.md")))
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--width", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for case in hf_models(args.layers, args.width, vocab=1000) + stand_ins():
        rows += measure(*case)
    try:
        tf_version = importlib.import_module("transformers").__version__
    except ImportError:
        tf_version = "not installed"
    head = ["model", "rule", "fan-in B: grad / bp", "worst layer", "match B: grad / bp", "worst layer"]
    lines = [
        "# First-step gradient norm relative to backprop, B at the fan-in scale vs at W's own spread", "",
        f"{date.today()}, {provenance.machine()}, torch "
        f"{torch.__version__}, transformers {tf_version}.", "",
        "Command: `" + " ".join(["python", f"benchmarks/{Path(__file__).name}", *sys.argv[1:]]) + "`", "",
        "grad / bp: norm of every parameter's gradient under the rule over backprop's, one batch; worst "
        "layer: the largest ratio `nowt.check_feedback_scale` reports (the gradient reaching a layer's "
        "output over backprop's). Random init, nothing downloaded.", "",
        "| " + " | ".join(head) + " |", "|" + "---|" * len(head),
        *("| " + " | ".join(r) + " |" for r in rows), "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
