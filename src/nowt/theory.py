"""The two-layer feedback-alignment model of Song, Xu & Lafferty (NeurIPS 2021).

"Convergence and Alignment of Gradient Descent with Random Backpropagation Weights", arXiv:2106.06044.

    f(X) = psi(X W) beta / sqrt(p)          X: (n, d), W: (d, p), beta: (p,), all weights N(0, 1)
    e = f - y,  loss = 1/2 ||e||^2          full-batch gradient descent, step size eta:
    beta <- beta - eta psi(XW)^T e / sqrt(p) - eta lam beta
    W    <- W - eta X^T [(e b^T) * psi'(XW)] / sqrt(p)

With feedback="random", b ~ N(0, I_p) is drawn once and kept fixed (feedback alignment); with
feedback="backprop", b is the current beta (plain gradient descent). The paper proves that in the
overparameterised regime the training error decays exponentially under feedback alignment, and that
regularisation (lam > 0) is needed for the second layer to align with the feedback weights, i.e. for
cos(b, beta) to stay away from zero as the width grows. `nowt reproduce song2021` (nowt.reproduce.song2021)
measures these claims.

The loss is summed over the n points, so the Gram matrix at init has top eigenvalue of order n / 2pi
(for n=100 about 16 under relu, 25 under sigmoid, 4 under tanh): a stable step size is below about
2 / 25 = 0.08 for sigmoid, and lr=0.1 diverges there.

    X, y = make_data(n=100, d=20, seed=0)
    res = simulate(X, y, p=200, steps=2000, lr=0.05, lam=1e-2)
    res.losses[-1], res.alignments[-1], fit_exponential_rate(res.losses, res.steps)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

# psi, and psi' written in terms of z and h = psi(z) so that nothing is computed twice.
Activation = tuple[Callable[[Tensor], Tensor], Callable[[Tensor, Tensor], Tensor]]

ACTIVATIONS: dict[str, Activation] = {
    "relu": (torch.relu, lambda z, h: (z > 0).to(z.dtype)),
    "tanh": (torch.tanh, lambda z, h: 1 - h * h),
    "sigmoid": (torch.sigmoid, lambda z, h: h * (1 - h)),
    "identity": (lambda z: z, lambda z, h: torch.ones_like(z)),
}
FEEDBACKS = ("random", "backprop")


def _activation(psi: str) -> Activation:
    if psi not in ACTIVATIONS:
        raise ValueError(f"unknown psi {psi!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[psi]


def cosine(a: Tensor, b: Tensor) -> float:
    """cos of the angle between two vectors (nan if either is zero)."""
    na, nb = float(a.norm()), float(b.norm())
    return float(a @ b) / (na * nb) if na > 0 and nb > 0 else math.nan


@dataclass
class TwoLayerFA:
    """Weights of f(X) = psi(X W) beta / sqrt(p) and the feedback vector b used to train W."""

    W: Tensor
    beta: Tensor
    b: Tensor
    psi: str = "relu"
    feedback: str = "random"

    def __post_init__(self) -> None:
        _activation(self.psi)
        if self.feedback not in FEEDBACKS:
            raise ValueError(f"unknown feedback {self.feedback!r}; expected one of {FEEDBACKS}")
        if self.W.dim() != 2 or self.beta.shape != (self.W.shape[1],) or self.b.shape != self.beta.shape:
            raise ValueError(
                f"shape mismatch: W {tuple(self.W.shape)}, beta {tuple(self.beta.shape)}, "
                f"b {tuple(self.b.shape)}; need W (d, p), beta (p,), b (p,)"
            )

    @classmethod
    def init(
        cls, d: int, p: int, *, psi: str = "relu", feedback: str = "random", seed: int = 0
    ) -> TwoLayerFA:
        """W, beta and b i.i.d. N(0, 1), drawn in that order (so both feedbacks share W and beta)."""
        g = torch.Generator().manual_seed(seed)
        W = torch.randn(d, p, generator=g, dtype=torch.float64)
        beta = torch.randn(p, generator=g, dtype=torch.float64)
        b = torch.randn(p, generator=g, dtype=torch.float64)
        return cls(W, beta, b, psi, feedback)

    @property
    def p(self) -> int:
        return self.beta.shape[0]

    @property
    def feedback_vector(self) -> Tensor:
        """The vector that carries the error back to W: b, or beta itself for backprop."""
        return self.beta if self.feedback == "backprop" else self.b

    def __call__(self, X: Tensor) -> Tensor:
        return _activation(self.psi)[0](X @ self.W) @ self.beta / math.sqrt(self.p)

    def gram(self, X: Tensor) -> Tensor:
        """The second layer's kernel psi(XW) psi(XW)^T / p (n x n): a step on beta alone, without
        regularisation, moves the outputs f by -lr * gram(X) @ e."""
        H = _activation(self.psi)[0](X @ self.W)
        return H @ H.T / self.p

    def alignment(self) -> float:
        """cos(b, beta), with b the fixed random vector (a chance-level control under backprop)."""
        return cosine(self.b, self.beta)

    def step(self, X: Tensor, y: Tensor, lr: float, lam: float = 0.0) -> float:
        """One full-batch update of W and beta (both from the same residual); returns the loss before it."""
        act, dact = _activation(self.psi)
        Z = X @ self.W
        H = act(Z)
        e = H @ self.beta / math.sqrt(self.p) - y
        grad_W = X.T @ (torch.outer(e, self.feedback_vector) * dact(Z, H)) / math.sqrt(self.p)
        grad_beta = H.T @ e / math.sqrt(self.p) + lam * self.beta
        self.W = self.W - lr * grad_W
        self.beta = self.beta - lr * grad_beta
        return 0.5 * float(e @ e)


@dataclass
class SimulationResult:
    """Loss 1/2||f - y||^2 and cos(b, beta) at the recorded steps, and the final weights."""

    steps: Tensor
    losses: Tensor
    alignments: Tensor
    W: Tensor
    beta: Tensor
    b: Tensor


def simulate(
    X: Tensor,
    y: Tensor,
    *,
    p: int,
    steps: int,
    lr: float,
    lam: float = 0.0,
    psi: str = "relu",
    feedback: str = "random",
    seed: int = 0,
    record_every: int = 1,
) -> SimulationResult:
    """Run `steps` full-batch updates from a seeded N(0, 1) init.

    Records the loss and cos(b, beta) at steps 0, record_every, 2 record_every, ... and at the last step.
    """
    _activation(psi)
    if feedback not in FEEDBACKS:
        raise ValueError(f"unknown feedback {feedback!r}; expected one of {FEEDBACKS}")
    if X.dim() != 2 or y.dim() != 1 or X.shape[0] != y.shape[0]:
        raise ValueError(
            f"shape mismatch: X must be (n, d) and y (n,), got {tuple(X.shape)} and {tuple(y.shape)}"
        )
    if p < 1 or steps < 0 or record_every < 1:
        raise ValueError(f"need p >= 1, steps >= 0, record_every >= 1; got {p}, {steps}, {record_every}")
    if not lr > 0 or not lam >= 0:
        raise ValueError(f"need lr > 0 and lam >= 0; got {lr}, {lam}")
    X, y = X.to(torch.float64), y.to(torch.float64)
    model = TwoLayerFA.init(X.shape[1], p, psi=psi, feedback=feedback, seed=seed)
    rec_steps, losses, aligns = [], [], []
    for t in range(steps + 1):
        record = t % record_every == 0 or t == steps
        if record:
            rec_steps.append(t)
            aligns.append(model.alignment())
        if t < steps:
            loss = model.step(X, y, lr, lam)  # the loss before this step, i.e. at step t
        else:
            e = model(X) - y
            loss = 0.5 * float(e @ e)
        if record:
            losses.append(loss)
    return SimulationResult(
        steps=torch.tensor(rec_steps),
        losses=torch.tensor(losses, dtype=torch.float64),
        alignments=torch.tensor(aligns, dtype=torch.float64),
        W=model.W,
        beta=model.beta,
        b=model.b,
    )


def make_data(n: int, d: int, seed: int = 0, *, target: str = "teacher") -> tuple[Tensor, Tensor]:
    """X: n points uniform on the unit sphere in R^d; y: a random tanh teacher (or N(0, 1)), unit RMS."""
    if n < 1 or d < 1:
        raise ValueError(f"need n, d >= 1; got {n}, {d}")
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    X = X / X.norm(dim=1, keepdim=True)
    if target == "teacher":
        hidden = 16
        Wt = torch.randn(d, hidden, generator=g, dtype=torch.float64) * math.sqrt(d)
        at = torch.randn(hidden, generator=g, dtype=torch.float64)
        y = torch.tanh(X @ Wt) @ at
    elif target == "gaussian":
        y = torch.randn(n, generator=g, dtype=torch.float64)
    else:
        raise ValueError(f"unknown target {target!r}; expected 'teacher' or 'gaussian'")
    return X, y / y.pow(2).mean().sqrt()


def fit_exponential_rate(losses: Tensor, steps: Tensor | None = None, *, floor: float = 1e-24) -> float:
    """Least-squares slope r of log(loss) ~ c - r t, over the entries above `floor` (float64 round-off).

    A positive r means exponential decay, loss ~ exp(-r t); the error ||e|| then decays at rate r / 2.
    nan if any loss is nan or inf: a run that diverged has no rate (its finite part would give one).
    """
    losses = torch.as_tensor(losses, dtype=torch.float64).flatten()
    t = torch.arange(len(losses), dtype=torch.float64) if steps is None else torch.as_tensor(steps).double()
    if t.shape != losses.shape:
        raise ValueError(f"shape mismatch: {len(losses)} losses but {len(t)} steps")
    if not bool(torch.isfinite(losses).all()):
        return math.nan
    keep = losses > floor
    if int(keep.sum()) < 2:
        raise ValueError("need at least two finite losses above the floor to fit a rate")
    t, logl = t[keep], losses[keep].log()
    tc = t - t.mean()
    return -float(tc @ (logl - logl.mean()) / (tc @ tc))
