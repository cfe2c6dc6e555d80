"""nowt.theory: the two-layer feedback-alignment model of Song, Xu & Lafferty (2021)."""

import math

import pytest
import torch

from nowt.reproduce.song2021_report import _rates
from nowt.theory import TwoLayerFA, fit_exponential_rate, make_data, simulate

PSIS = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "identity": lambda z: z}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matrices: one thread is faster and immune to a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def reference_step(X, y, W, beta, b, psi, feedback, lr, lam):
    """One GD step by autograd: the true gradient for backprop; for feedback alignment a surrogate whose
    value is f but whose W-gradient flows through b instead of beta (beta's gradient stays the true one)."""
    W = W.clone().requires_grad_()
    beta = beta.clone().requires_grad_()
    H = PSIS[psi](X @ W)
    p = beta.shape[0]
    if feedback == "backprop":
        f = H @ beta / math.sqrt(p)
    else:
        f = (H.detach() @ beta + H @ b - H.detach() @ b) / math.sqrt(p)
    loss = 0.5 * (f - y).pow(2).sum() + 0.5 * lam * beta.pow(2).sum()
    gW, gbeta = torch.autograd.grad(loss, (W, beta))
    return (W - lr * gW).detach(), (beta - lr * gbeta).detach()


@pytest.mark.parametrize("lam", [0.0, 0.3])
@pytest.mark.parametrize("feedback", ["random", "backprop"])
@pytest.mark.parametrize("psi", list(PSIS))
def test_one_step_matches_autograd(psi, feedback, lam):
    g = torch.Generator().manual_seed(1)
    n, d, p = 7, 5, 11
    X, y, W, beta, b = (
        torch.randn(*s, generator=g, dtype=torch.float64) for s in ((n, d), (n,), (d, p), (p,), (p,))
    )
    model = TwoLayerFA(W.clone(), beta.clone(), b.clone(), psi=psi, feedback=feedback)
    loss = model.step(X, y, lr=0.1, lam=lam)
    W_ref, beta_ref = reference_step(X, y, W, beta, b, psi, feedback, lr=0.1, lam=lam)
    torch.testing.assert_close(model.W, W_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model.beta, beta_ref, rtol=1e-12, atol=1e-12)
    assert loss == pytest.approx(0.5 * float((PSIS[psi](X @ W) @ beta / math.sqrt(p) - y).pow(2).sum()))
    assert torch.equal(model.b, b)  # the feedback weights are fixed
    if feedback == "random":  # the two rules really differ, so the comparison above can tell them apart
        W_bp, _ = reference_step(X, y, W, beta, b, psi, "backprop", lr=0.1, lam=lam)
        assert not torch.allclose(model.W, W_bp)


def test_simulate_records_steps_and_matches_model():
    X, y = make_data(9, 4, seed=2)
    full = simulate(X, y, p=13, steps=10, lr=0.1, lam=0.01, psi="tanh", seed=5)
    sparse = simulate(X, y, p=13, steps=10, lr=0.1, lam=0.01, psi="tanh", seed=5, record_every=4)
    assert full.steps.tolist() == list(range(11)) and sparse.steps.tolist() == [0, 4, 8, 10]
    torch.testing.assert_close(sparse.losses, full.losses[[0, 4, 8, 10]])
    torch.testing.assert_close(sparse.alignments, full.alignments[[0, 4, 8, 10]])
    model = TwoLayerFA.init(4, 13, psi="tanh", seed=5)
    cos0 = model.b @ model.beta / (model.b.norm() * model.beta.norm())
    assert full.alignments[0] == pytest.approx(float(cos0))
    for _ in range(10):
        model.step(X, y, lr=0.1, lam=0.01)
    torch.testing.assert_close(full.W, model.W)
    torch.testing.assert_close(full.beta, model.beta)
    assert full.losses[-1] == pytest.approx(0.5 * float((model(X) - y).pow(2).sum()))


def test_error_decays_exponentially_when_overparameterised():
    X, y = make_data(20, 10, seed=0)
    res = simulate(X, y, p=400, steps=400, lr=0.5, psi="relu", feedback="random")
    assert res.losses[-1] < 1e-6 * res.losses[0]
    rate = fit_exponential_rate(res.losses, res.steps)
    assert rate > 0
    assert rate == pytest.approx(math.log(res.losses[0] / res.losses[-1]) / 400, rel=0.5)
    first, second = fit_exponential_rate(res.losses[:200]), fit_exponential_rate(res.losses[200:])
    assert second > 0.3 * first > 0  # log-loss keeps falling linearly: exponential, not a stall


def test_regularisation_improves_alignment():
    X, y = make_data(20, 10, seed=0)
    runs = {
        (lam, fb): simulate(X, y, p=200, steps=600, lr=0.2, lam=lam, feedback=fb, seed=3)
        for lam in (0.0, 0.1)
        for fb in ("random", "backprop")
    }
    aligned, free = runs[0.1, "random"].alignments[-1], runs[0.0, "random"].alignments[-1]
    assert aligned > 0.7 and aligned > free + 0.4
    for lam in (0.0, 0.1):  # backprop never sees b: its cosine with beta stays at chance level
        assert abs(runs[lam, "backprop"].alignments[-1]) < 0.3


def test_fit_exponential_rate():
    t = torch.arange(50, dtype=torch.float64)
    assert fit_exponential_rate(3 * torch.exp(-0.02 * t)) == pytest.approx(0.02)
    assert fit_exponential_rate(3 * torch.exp(-0.02 * 5 * t), 5 * t) == pytest.approx(0.02)
    floored = torch.cat([torch.exp(-t), torch.full((50,), 1e-30, dtype=torch.float64)])
    assert fit_exponential_rate(floored) == pytest.approx(1.0)  # the round-off plateau is ignored
    with pytest.raises(ValueError, match="shape mismatch"):
        fit_exponential_rate(torch.ones(5), torch.arange(4))
    with pytest.raises(ValueError, match="two finite"):
        fit_exponential_rate(torch.tensor([1.0]))


def test_fit_exponential_rate_of_a_diverged_run_is_nan():
    """A run that blew up has no rate: fitting only its finite entries gave a positive 'decay' rate
    (lr=0.1 above the stable step: losses 64.3, 3.54, 6.16, inf, nan at steps 0..200 gave +0.0234 a step)."""
    X, y = make_data(100, 20, seed=0)
    res = simulate(X, y, p=20, steps=200, lr=0.1, seed=0, record_every=50)
    assert not math.isfinite(res.losses[-1]) and res.losses[2] < res.losses[0]
    assert math.isnan(fit_exponential_rate(res.losses, res.steps))
    inf = torch.tensor([1.0, 0.5, 0.25, math.inf], dtype=torch.float64)
    assert math.isnan(fit_exponential_rate(inf))
    assert math.isnan(fit_exponential_rate(torch.tensor([1.0, 0.5, 0.25, math.nan], dtype=torch.float64)))
    fit = _rates(dict(step=res.steps.tolist(), loss=res.losses.tolist()))
    assert math.isnan(fit["rate"]) and not fit["exponential"]
    fit = _rates(dict(step=[0, 50, 100, 150, 200], loss=[64.3, 3.54, 6.16, math.nan, math.nan]))
    assert math.isnan(fit["rate"]) and not fit["exponential"]  # the report kept only the finite entries


def test_invalid_inputs():
    X, y = make_data(6, 3, seed=0)
    with pytest.raises(ValueError, match="unknown psi"):
        simulate(X, y, p=4, steps=1, lr=0.1, psi="gelu")
    with pytest.raises(ValueError, match="unknown feedback"):
        simulate(X, y, p=4, steps=1, lr=0.1, feedback="sign")
    with pytest.raises(ValueError, match="shape mismatch"):
        simulate(X, y[:5], p=4, steps=1, lr=0.1)
    with pytest.raises(ValueError, match="shape mismatch"):
        simulate(X, y[:, None], p=4, steps=1, lr=0.1)
    with pytest.raises(ValueError, match="lr > 0"):
        simulate(X, y, p=4, steps=1, lr=0.0)
    with pytest.raises(ValueError, match="shape mismatch"):
        TwoLayerFA(torch.zeros(3, 4), torch.zeros(4), torch.zeros(5))
    with pytest.raises(ValueError, match="unknown target"):
        make_data(5, 3, target="uniform")


@pytest.mark.parametrize("psi", ["relu", "tanh"])
def test_gram_is_the_kernel_of_a_step_on_beta_alone(psi):
    X, y = make_data(9, 4, seed=3)
    model = TwoLayerFA.init(4, 13, psi=psi, seed=1)
    G = model.gram(X)
    e = model(X) - y
    before = model(X)
    # only beta moves, by its unregularised gradient step
    model.beta = model.beta - 0.1 * PSIS[psi](X @ model.W).T @ e / math.sqrt(model.p)
    torch.testing.assert_close(model(X) - before, -0.1 * G @ e)
    assert G.shape == (9, 9) and torch.allclose(G, G.T) and float(torch.linalg.eigvalsh(G)[0]) > -1e-12


def test_the_width_exponent_is_nan_where_a_mean_alignment_is_not_positive():
    """analyse clipped a mean cos(b, beta) <= 0 to 1e-12 before taking logs, so the fitted exponent of
    cos ~ p^slope came out a finite, wrong number; now nan (the committed runs' exponent is unchanged)."""
    import json
    from pathlib import Path

    from nowt.reproduce.song2021_report import analyse

    root = Path(__file__).resolve().parents[1] / "results" / "song2021"
    records = [json.loads(line) for line in (root / "runs.jsonl").read_text().splitlines()]
    cfg = json.loads((root / "meta.json").read_text())["config"]
    assert analyse(records, cfg)["width_slope"] == pytest.approx(-0.47, abs=0.01)
    widest = max(r["p"] for r in records if r["group"] == "width" and r["lam"] == 0.0)
    for r in records:
        if r["group"] == "width" and r["lam"] == 0.0 and r["p"] == widest:
            r["alignment"] = [*r["alignment"][:-1], -0.2]
    assert math.isnan(analyse(records, cfg)["width_slope"])
