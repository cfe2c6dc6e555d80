"""Step time of the rules on Hugging Face language models, against plain autograd in the same run (issue 27
item 3: DFA per token on real models).

    python benchmarks/hf_cost.py [--threads 1] [--rounds 5] [--steps 3]   # a row of benchmarks/hf_cost.md

Each model is built from a config (random init, nothing downloaded) at one small size: hidden 128, 2
layers, 4 heads, MLP 512, batch 4 x 64 tokens, with its family's real vocabulary (GPT-2 50257, BERT 30522,
T5 32128, Llama 32000, GPT-Neo 50257): DFA's error has one entry per vocabulary word and token, so the
vocabulary sets its cost. A step is forward, cross-entropy over the logits, backward and an SGD (momentum)
step; every variant is timed in each interleaved round and the median reported as a ratio to autograd's.
DFA runs per token with one B shared by the positions (`position_feedback="shared"`), per layer and by block
(`blocks=`: each transformer block's output gets B e), each with a B of its own (the default storage) and
as slices of one matrix S (`storage="shared"`, "one S": one e @ S a step); OPT is left out (DFA refuses
it: its MLP folds the batch into the positions).
"""

from __future__ import annotations

import argparse
import copy

import history
import torch
import torch.nn.functional as F
import transformers as T
from timing import interleaved_ms

import nowt
from nowt.optim import make_optimizer

SIZE = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512)
BATCH, TOKENS = 4, 64

#: name -> (model factory, extra inputs given the ids, block pattern for block-level DFA)
MODELS = {
    "gpt2": (lambda: T.GPT2LMHeadModel(T.GPT2Config(n_layer=2, n_embd=128, n_head=4, n_inner=512)),
             {}, ("transformer.h.*",)),
    "bert": (lambda: T.BertForMaskedLM(T.BertConfig(**SIZE)), {}, ("bert.encoder.layer.*",)),
    "t5": (lambda: T.T5ForConditionalGeneration(T.T5Config(d_model=128, d_kv=32, d_ff=512, num_layers=2,
                                                           num_decoder_layers=2, num_heads=4,
                                                           decoder_start_token_id=0)),
           {"decoder_input_ids": True}, ("encoder.block.*", "decoder.block.*")),
    "llama": (lambda: T.LlamaForCausalLM(T.LlamaConfig(num_key_value_heads=4, **SIZE)), {},
              ("model.layers.*",)),
    "gpt_neo": (lambda: T.GPTNeoForCausalLM(T.GPTNeoConfig(hidden_size=128, num_layers=2, num_heads=4,
                                                           intermediate_size=512,
                                                           attention_types=[[["global", "local"], 1]])),
                {}, ("transformer.h.*",)),
}


def variants(name: str) -> dict[str, torch.nn.Module]:
    make, _, blocks = MODELS[name]
    torch.manual_seed(0)
    base = make()
    shared = dict(position_feedback="shared")
    return {"autograd": base, "bp": nowt.convert(copy.deepcopy(base), "bp", seed=0),
            "fa": nowt.convert(copy.deepcopy(base), "fa", seed=0),
            "kp": nowt.convert(copy.deepcopy(base), "kp", seed=0),
            "dfa": nowt.convert(copy.deepcopy(base), "dfa", seed=0, **shared),
            "dfa blocks": nowt.convert(copy.deepcopy(base), "dfa", seed=0, blocks=blocks, **shared),
            "dfa one S": nowt.convert(copy.deepcopy(base), "dfa", seed=0, storage="shared", **shared),
            "dfa blocks one S": nowt.convert(copy.deepcopy(base), "dfa", seed=0, blocks=blocks,
                                             storage="shared", **shared)}


def training_step(model: torch.nn.Module, inputs: dict, labels: torch.Tensor):
    opt = make_optimizer("sgd", model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        logits = model(**inputs).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="steps per variant per round")
    p.add_argument("--models", default=",".join(MODELS))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    numbers = {}
    for name in args.models.split(","):
        models = variants(name)
        vocab = models["autograd"].config.vocab_size
        ids = torch.randint(0, vocab, (BATCH, TOKENS), generator=torch.Generator().manual_seed(0))
        inputs = {"input_ids": ids, **{k: ids for k in MODELS[name][1]}}
        steps = {k: training_step(m, inputs, ids) for k, m in models.items()}
        for step in steps.values():
            step()  # first forward: DFA's state, allocations
        ms = interleaved_ms(steps, args.rounds, args.steps)
        row = {k: ms[k] / ms["autograd"] for k in ms} | {"autograd ms": ms["autograd"]}
        workload = f"{name} (vocab {vocab}), batch {BATCH} x {TOKENS} tokens"
        numbers[workload] = row
        print(workload, {k: round(v, 2) for k, v in row.items()}, flush=True)
    history.record("hf_cost", numbers, threads=args.threads, rounds=args.rounds, steps=args.steps)
    print("recorded in benchmarks/hf_cost.jsonl and benchmarks/hf_cost.md")


if __name__ == "__main__":
    main()
