"""Bartunov, Santoro, Richards, Marris, Hinton, Lillicrap 2018, Assessing the Scalability of
Biologically-Motivated Deep Learning Algorithms and Architectures: Table 1 (MNIST and CIFAR-10, fully and
locally connected networks) and Table 2 (ImageNet LC network), target propagation against FA, DFA and BP.
"""

from __future__ import annotations

from typing import Any

from nowt.reproduce.entry import Reproduction

PAPER = ("Bartunov, Santoro, Richards, Marris, Hinton, Lillicrap 2018, Assessing the Scalability of "
         "Biologically-Motivated Deep Learning Algorithms and Architectures")

RUNS = {
    "dtp-parallel": {"rule": "dtp", "schedule": "parallel"},
    "dtp-alternating": {"rule": "dtp", "schedule": "alternating"},
    "sdtp-parallel": {"rule": "sdtp", "schedule": "parallel"},
    "sdtp-alternating": {"rule": "sdtp", "schedule": "alternating"},
    "ao-sdtp-parallel": {"rule": "ao-sdtp", "schedule": "parallel"},
    "ao-sdtp-alternating": {"rule": "ao-sdtp", "schedule": "alternating"},
    # fa: Glorot for B as for every weight of the paper's networks (nowt's default B is PyTorch's Linear
    # init, 1/sqrt(3) of Glorot's bound at width 256), except where FIRST_REGISTERED says otherwise
    "fa": {"rule": "fa", "init": "xavier"}, "dfa": {"rule": "dfa"}, "bp": {"rule": "bp"},
}
TABLE1 = {  # label: (MNIST FC, MNIST LC, CIFAR FC, CIFAR LC), each (train error, test error) in %
    "dtp-parallel": ((0.44, 2.86), (0.00, 1.52), (59.45, 59.14), (28.69, 39.47)),
    "dtp-alternating": ((0.00, 1.83), (0.00, 1.46), (30.41, 42.32), (28.54, 39.47)),
    "sdtp-parallel": ((1.14, 3.52), (0.00, 1.98), (51.48, 55.32), (43.00, 46.63)),
    "sdtp-alternating": ((0.00, 2.28), (0.00, 1.90), (48.65, 54.27), (40.40, 45.66)),
    "ao-sdtp-parallel": ((0.96, 2.93), (0.00, 1.92), (4.28, 47.11), (32.67, 40.05)),
    "ao-sdtp-alternating": ((0.00, 1.86), (0.00, 1.91), (0.00, 45.40), (34.11, 40.21)),
    "fa": ((0.00, 1.85), (0.00, 1.26), (25.62, 41.97), (17.46, 37.44)),
    "dfa": ((0.85, 2.75), (0.23, 2.05), (33.35, 47.80), (32.74, 44.41)),
    "bp": ((0.00, 1.48), (0.00, 1.17), (28.97, 41.32), (0.83, 32.41)),
    "bp-convnet": (None, (0.00, 1.01), None, (1.39, 31.87)),
}
TABLE2 = {  # label: (top-1 error, top-5 error) in %, ImageNet LC network; DFA did not fit in GPU memory
    "dtp-parallel": (98.34, 94.56), "dtp-alternating": (99.36, 97.28), "sdtp-parallel": (99.28, 97.15),
    "fa": (93.08, 82.54), "bp": (71.43, 49.07), "bp-convnet": (63.93, 40.17),
}
#: Table 5 (appendix), the best configuration of the paper's random search, per column:
#: forward Adam (lr, beta1, beta2, eps) for each row; inverse Adam (lr, beta1, beta2, eps) and sigma for the
#: target-propagation rows; alpha for DTP's. The table has no AO-SDTP column: AO-SDTP runs with SDTP's
#: values of the same schedule (our choice). Several values lie outside the search ranges of the paper's
#: Table 4 (e.g. MNIST FC DTP parallel's lr 7.57e-4, beta1 0.99): we use Table 5 as printed.
_TP = ("dtp-parallel", "dtp-alternating", "sdtp-parallel", "sdtp-alternating")
TABLE5: dict[str, dict[str, Any]] = {
    "mnist-fc": dict(
        forward={"dtp-parallel": (7.57e-4, .99, .95, 1e-3), "dtp-alternating": (3.08e-4, .99, .99, 1e-4),
                 "sdtp-parallel": (4.02e-4, .99, .999, 1e-8), "sdtp-alternating": (3.01e-4, .9, .95, 1e-4),
                 "bp": (1.52e-4, .9, .999, 1e-8), "fa": (1.68e-4, .9, .999, 1e-4),
                 "dfa": (1.649e-3, .9, .95, 1e-3)},
        inverse=((7.68e-4, .99, .999, 1e-4), (4.593e-3, .99, .999, 1e-4), (1.101e-3, .99, .95, 1e-6),
                 (9.572e-3, .9, .95, 1e-3)),
        alpha=(0.15008, 0.231758), sigma=(0.36133, 0.220444, 0.213995, 0.118267)),
    "mnist-lc": dict(
        forward={"dtp-parallel": (9.05e-4, .9, .99, 1e-4), "dtp-alternating": (1.481e-3, .9, .99, 1e-4),
                 "sdtp-parallel": (1.45e-4, .9, .99, 1e-6), "sdtp-alternating": (6.51e-4, .9, .99, 1e-4),
                 "bp": (1.33e-4, .9, .99, 1e-8), "bp-convnet": (2.97e-4, .9, .99, 1e-8),
                 "fa": (2.19e-4, .9, .999, 1e-6), "dfa": (2.462e-3, .9, .99, 1e-4)},
        inverse=((1.239e-3, .9, .999, 1e-4), (1.37e-4, .9, .999, 1e-6), (1.652e-3, .9, .999, 1e-4),
                 (3.741e-3, .9, .99, 1e-4)),
        alpha=(0.116131, 0.310892), sigma=(0.099236, 0.366964, 0.061555, 0.134739)),
    "cifar-fc": dict(
        forward={"dtp-parallel": (1.2e-5, .9, .999, 1e-8), "dtp-alternating": (1.3e-5, .9, .999, 1e-8),
                 "sdtp-parallel": (1.29e-4, .9, .99, 1e-6), "sdtp-alternating": (4.1e-5, .9, .99, 1e-4),
                 "bp": (1.9e-5, .9, .999, 1e-6), "fa": (2.5e-5, .9, .99, 1e-4),
                 "dfa": (5.0e-5, .9, .99, 1e-8)},
        inverse=((3.9e-5, .9, .99, 1e-6), (1.14e-4, .9, .99, 1e-4), (1.1e-5, .9, .99, 1e-6),
                 (1.4e-5, .9, .99, 1e-8)),
        alpha=(0.125693, 0.172085), sigma=(0.169783, 0.134811, 0.273341, 0.125678)),
    "cifar-lc": dict(
        forward={"dtp-parallel": (3.2e-5, .9, .99, 1e-6), "dtp-alternating": (3.6e-5, .9, .99, 1e-8),
                 "sdtp-parallel": (2.0e-5, .9, .99, 1e-4), "sdtp-alternating": (1.09e-4, .9, .99, 1e-4),
                 "bp": (4.4e-5, .9, .999, 1e-6), "bp-convnet": (1.33e-4, .9, .99, 1e-4),
                 "fa": (2.2e-5, .9, .999, 1e-8), "dfa": (4.0e-5, .9, .999, 1e-8)},
        inverse=((8.52e-4, .9, .999, 1e-4), (3.89e-4, .9, .999, 1e-8), (2.61e-4, .9, .999, 1e-6),
                 (1.1e-5, .9, .99, 1e-8)),
        alpha=(0.189828, 0.208141), sigma=(0.146728, 0.094869, 0.299769, 0.023804)),
    "imagenet": dict(  # Table 2's network: no SDTP alternating, AO-SDTP or DFA
        forward={"dtp-parallel": (2.17e-4, .9, .99, 1e-6), "dtp-alternating": (1.01e-4, .9, .99, 1e-8),
                 "sdtp-parallel": (1.1e-5, .9, .999, 1e-6), "bp": (2.4e-5, .9, .999, 1e-8),
                 "bp-convnet": (4.9e-5, .9, .99, 1e-8), "fa": (4.3e-5, .9, .99, 1e-4)},
        inverse=((2.34e-4, .9, .999, 1e-6), (6.4e-5, .9, .999, 1e-8), (1.7e-4, .9, .999, 1e-8)),
        alpha=(0.163359, 0.03706), sigma=(0.192835, 0.097217, 0.168522)),
}


#: Rows changed after their registered result was seen: column -> {exploration label: (registered row it
#: varies, TrainConfig overrides, when and why)}. The registered row keeps its first recipe; the variant is
#: an exploration, tabulated apart and never given a verdict (nowt.reproduce.entry).
EXPLORATIONS: dict[str, dict[str, tuple[str, dict, str]]] = {"mnist-fc": {
    "fa-glorot-B": ("fa", {"init": "xavier"}, (
        "2026-11-25, after the registered fa row (B at PyTorch's Linear init) missed Table 1 by about "
        "1.2 pp: B drawn Glorot, as the paper draws its weights")),
    # Table 5 prints the inverses' Adam as beta1 0.99, beta2 0.95: beta1^2 > beta2, outside Adam's stable
    # range and outside Table 4, which fixes beta1 at 0.9; with it our first run fell to chance in two epochs
    "sdtp-parallel-beta1-0.9": ("sdtp-parallel", {"inverse_betas": (0.9, 0.95)}, (
        "2026-11-25, after the printed inverse Adam (beta1 0.99, beta2 0.95) fell to chance within two "
        "epochs: the inverses' beta1 at 0.9, as Table 4 fixes it")),
    "ao-sdtp-parallel-beta1-0.9": ("ao-sdtp-parallel", {"inverse_betas": (0.9, 0.95)}, (
        "2026-11-25, the same change for AO-SDTP, which takes SDTP's values")),
}}
#: The MNIST FC column was registered (2026-11-23) with B at nowt's default init for fa; every later column
#: was registered with Glorot B (before any of its results)
FIRST_REGISTERED: dict[str, dict[str, dict]] = {"mnist-fc": {"fa": {"init": "default"}}}


def table5_runs(column: str) -> dict[str, dict]:
    """TrainConfig overrides of every row of a Table 1 column from Table 5 as printed (AO-SDTP: SDTP's
    values)."""
    t = TABLE5[column]
    runs: dict[str, dict] = {}
    for label, (lr, b1, b2, eps) in t["forward"].items():
        runs[label] = dict(lr=lr, adam_betas=(b1, b2), adam_eps=eps)
    for i, (label, (ilr, ib1, ib2, ieps)) in enumerate(zip(_TP, t["inverse"], strict=False)):
        runs[label].update(inverse_lr=ilr, inverse_betas=(ib1, ib2), inverse_eps=ieps, sigma=t["sigma"][i])
        if i < 2:
            runs[label]["alpha"] = t["alpha"][i]
    for schedule in ("parallel", "alternating"):
        if f"sdtp-{schedule}" in runs:
            runs[f"ao-sdtp-{schedule}"] = dict(runs[f"sdtp-{schedule}"])
    return runs


def column_runs(column: str, network: str) -> dict[str, dict]:
    """Every row of a column: the registered rows (RUNS with Table 5's values, as first registered), then
    the column's explorations."""
    hyper = table5_runs(column)
    first = FIRST_REGISTERED.get(column, {})
    runs = {label: {**run, **hyper[label], **first.get(label, {})}
            for label, run in {**RUNS, **_convnet(network)}.items()}
    for label, (row, overrides, _) in EXPLORATIONS.get(column, {}).items():
        runs[label] = {**runs[row], **overrides}
    return runs


_COLUMNS = {  # column -> (dataset, network; the "BP convnet" row is the network with shared weights)
    "mnist-fc": ("mnist", "mnist_fc"), "mnist-lc": ("mnist", "mnist_lc"),
    "cifar-fc": ("cifar10", "cifar_fc"), "cifar-lc": ("cifar10", "cifar_lc"),
}
NOTES = ("The paper's tanh networks with Glorot init (nowt.targetprop.networks; the BP convnet is the LC "
         "network with convolutions in place of the locally connected layers), Adam with each row's best "
         "configuration from the paper's Table 5 (forward and inverse lr, betas and epsilon, sigma, alpha; "
         "TABLE5 in nowt.reproduce.bartunov2018); AO-SDTP, which Table 5 lacks, takes SDTP's values and "
         "512 auxiliary features in every column (the paper states 512 for CIFAR). DFA's B is nowt's "
         "default, uniform within 1/sqrt(n) for a layer of n inputs (the paper gives no scale), while fa's "
         "B is Glorot like every weight (but for MNIST FC's fa row: FIRST_REGISTERED). TP and DTP train "
         "their inverses with Lee et al.'s noise-preserving loss. "
         "Every registered row runs Table 5 as printed; what was changed after a result was seen is an "
         "exploration (EXPLORATIONS there). SDTP and AO-SDTP train their inverses "
         "denoising, as the paper's Algorithm 1 does. The paper reports the best test error within 500 "
         "epochs; we stop a run once its best test error is 100 epochs old (under the alternating "
         "schedule every other epoch trains the inverses alone and counts too: 50 forward epochs past the "
         "best). The inverses (and AO-SDTP's random features) are drawn from the generator seeded as the "
         "forward weights were, so their values are rescaled slices of the forward weights' draws (at init "
         "they stand at 90 degrees to the W they invert). The batch size is not published:"
         " ours is 128. Our train error is the final epoch's running error (each batch scored before its "
         "update), not the train set evaluated after training as in the paper (`nowt evaluate RUN_DIR` gives "
         "that for a run that kept its checkpoint).")


def _convnet(network: str) -> dict[str, dict]:
    """The "BP convnet" row of an LC column, none for FC columns (the paper has no FC convnet)."""
    if "_lc" not in network:
        return {}
    return {"bp-convnet": {"rule": "bp", "model": network.replace("_lc", "_conv")}}


#: Why the train error gets no verdict (decided 2026-12-04 from the notes' own statement, no row changed)
TRAIN_ERROR_UNJUDGED = ("ours is the final epoch's running error (each batch scored before its update), the "
                        "paper's the train set evaluated after training: not one quantity")


def _table1() -> list[Reproduction]:
    entries = []
    for i, (column, (dataset, network)) in enumerate(_COLUMNS.items()):
        published = {label: {"final_train_error": row[0], "best_test_error": row[1]}
                     for label, v in TABLE1.items() if (row := v[i]) is not None}
        runs = column_runs(column, network)
        explorations = {label: why for label, (_, _, why) in EXPLORATIONS.get(column, {}).items()}
        published |= {label: published[row] for label, (row, _, _) in EXPLORATIONS.get(column, {}).items()}
        entries.append(Reproduction(
            name=f"bartunov2018-{column}", paper=PAPER, table=f"Table 1, {column.upper()} column",
            config=dict(dataset=dataset, model=network, activation="tanh", optimizer="adam",
                        batch_size=128, lr_schedule="constant", epochs=500, patience=100,
                        augment=dataset == "cifar10"),
            runs=runs, published=published, explorations=explorations,
            quick=dict(epochs=2, train_size=10000, patience=None),
            unjudged={"final_train_error": TRAIN_ERROR_UNJUDGED}, notes=NOTES))
    return entries


ENTRIES = [
    *_table1(),
    Reproduction(
        name="bartunov2018-imagenet", paper=PAPER, table="Table 2, ImageNet LC network (top-1 / top-5 error)",
        config=dict(dataset="imagenet", model="imagenet_lc", activation="tanh", optimizer="adam",
                    batch_size=256, lr_schedule="constant", epochs=100, augment=True, num_workers=8),
        runs={label: {**run, **table5_runs("imagenet")[label]} for label, run in
              {**{k: RUNS[k] for k in TABLE2 if k in RUNS}, **_convnet("imagenet_lc")}.items()},
        published={label: {"best_test_error": top1, "best_top5_error": top5}
                   for label, (top1, top5) in TABLE2.items()},
        quick=dict(epochs=1, train_size=2560),
        notes="DFA did not fit in GPU memory in the paper. Needs ImageNet and GPUs. " + NOTES),
]
