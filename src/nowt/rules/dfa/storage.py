"""Where DFA's B lives. All three storages give the gradients of the dense matrix they stand for.

- "dense": a `feedback` buffer per layer, `n_out * D` floats (billions at ImageNet scale).
- "shared": one matrix `S` of `n_out x max(D)` (a `dfa_feedback` buffer on the converted model), as TinyDFA;
  layer `l` uses `S[:, :D_l] * scale / sqrt(D_l)`. One backward multiplies e by S once (`SharedProduct`)
  and every layer reads its columns of that product: the cost of one layer's projection, not one per layer.
- "seeded": nothing but the seed is stored; backward redraws B chunk by chunk, so the extra memory is one
  `n_out x chunk` block per torch thread (plus the input gradient itself). Costs one random number per
  entry of B per step; on a CPU the chunks are drawn by up to `torch.get_num_threads()` threads at once (a
  CPU generator is serial, so one thread would draw them all).
B is drawn in column chunks of `chunk` columns of `B.flatten(1)`, chunk k by a generator of the layer's
device seeded with (layer seed, k): B depends on (seed, chunk, device type) only. A GPU's generator gives
other numbers than the CPU's for the same seed (drawing on the CPU would cost a GPU step seconds at ImageNet
scale), so a seeded run moved between device types continues with another fixed random B.

`KernelProjection` is another B altogether, for a convolution under `conv_feedback="kernel"` (BioTorch's
DFA): `n_out x in_channels x kernel`, kept as a dense `feedback` buffer (it is small).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor, nn

from nowt.ops import ConvOp
from nowt.rules.base import LayerLike, RuleLayer
from nowt.rules.dfa.state import anchor, buffer

STORAGES = ("dense", "shared", "seeded")


def draw_chunk(seed: int, k: int, n_out: int, cols: int, scale: float, like: Tensor,
               normal: bool = False) -> Tensor:
    """Chunk k (columns `k * chunk` onwards) of `B.flatten(1)`: U(-1, 1) * scale, or N(0, 1) * scale with
    `normal`, in `like`'s dtype/device."""
    g = torch.Generator(like.device).manual_seed((seed + 0x9E3779B9 * k) % 2**32)
    raw = torch.empty(n_out, cols, device=like.device)
    raw = raw.normal_(generator=g) if normal else raw.uniform_(-1.0, 1.0, generator=g)
    return raw.to(like.dtype).mul_(scale)


_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=max(torch.get_num_threads(), 1), thread_name_prefix="nowt-dfa")
    return _POOL


class Projection:
    """`e -> e @ B.flatten(1)` for one layer, computed chunk by chunk from `block(k, j0, j1)`. With
    `drawn=True` (blocks drawn by a CPU generator, not sliced) up to `torch.get_num_threads()` blocks are
    made ahead by worker threads while the caller multiplies the one before: the same blocks in order."""

    def __init__(self, shape: torch.Size, chunk: int, block: Callable[[int, int, int], Tensor],
                 drawn: bool = False) -> None:
        self.shape, self.chunk, self.block, self.drawn = shape, chunk, block, drawn
        self.cols = math.prod(shape[1:])

    def spans(self):
        return enumerate((j, min(j + self.chunk, self.cols)) for j in range(0, self.cols, self.chunk))

    def blocks(self) -> Iterator[tuple[int, int, Tensor]]:
        """(j0, j1, block) for every chunk in order; drawn blocks are made `ahead` at a time in threads."""
        spans = list(self.spans())
        ahead = torch.get_num_threads() if self.drawn and len(spans) > 1 else 0
        if ahead <= 1:
            yield from ((j0, j1, self.block(k, j0, j1)) for k, (j0, j1) in spans)
            return
        pool, pending = _pool(), []
        for k, (j0, j1) in spans:
            pending.append((j0, j1, pool.submit(self.block, k, j0, j1)))
            if len(pending) >= ahead:  # at most `ahead` blocks exist at once: memory stays bounded
                a, b, future = pending.pop(0)
                yield a, b, future.result()
        for a, b, future in pending:
            yield a, b, future.result()

    def __call__(self, e: Tensor) -> Tensor:
        if self.cols <= self.chunk:
            return e @ self.block(0, 0, self.cols).to(e.dtype)
        out = e.new_empty(e.shape[0], self.cols)
        for j0, j1, block in self.blocks():
            out[:, j0:j1] = e @ block.to(e.dtype)
        return out

    def matrix(self, like: Tensor) -> Tensor:
        out = like.new_empty(self.shape[0], self.cols)
        for j0, j1, block in self.blocks():
            out[:, j0:j1] = block
        return out.view(self.shape)


def seeded(seed: int, shape: torch.Size, scale: float, chunk: int, like: Tensor,
           normal: bool = False) -> Projection:
    """B redrawn from `seed` chunk by chunk whenever it is used (`draw_chunk`: uniform, or `normal`)."""
    n_out = shape[0]
    # `normal` passed by position: tests wrap draw_chunk in a positional-only stand-in
    return Projection(shape, chunk,
                      lambda k, j0, j1: draw_chunk(seed, k, n_out, j1 - j0, scale, like, normal),
                      drawn=like.device.type == "cpu")  # a GPU's draws are queued kernels: no threads


def dense(layer: LayerLike, seed: int, shape: torch.Size, scale: float, chunk: int,
          normal: bool = False) -> Projection:
    """The layer's (or block's) `feedback` buffer, drawn (as `seeded` would draw it) at the first forward."""
    w = anchor(layer)
    feedback = buffer(layer, "feedback")
    if feedback is None:
        feedback = seeded(seed, shape, scale, chunk, w, normal).matrix(w)
        layer.register_buffer("feedback", feedback)
    b = feedback.flatten(1)
    return Projection(shape, chunk, lambda k, j0, j1: b[:, j0:j1])


def shared(model: nn.Module, layers: Sequence[LayerLike], shape: torch.Size, scale: float, chunk: int,
           name: str, normal: bool = False) -> Projection:
    """A slice of the model's one shared matrix, created at the first forward as wide as the widest input
    of `layers` (in order; the first one's seed draws it: U(-1, 1), or N(0, 1) with `normal`)."""
    matrix = buffer(model, "dfa_feedback")
    if matrix is None:
        shapes = [buffer(m, "feedback_shape") for m in layers]
        width = max(math.prod(s.tolist()[1:]) for s in shapes if s is not None)
        first = layers[0]
        seed = buffer(first, "feedback_seed")
        assert seed is not None  # registered by `setup` (a layer) or `find_blocks` (a block)
        raw = seeded(int(seed), torch.Size((shape[0], width)), 1.0, chunk, anchor(first), normal)
        matrix = raw.matrix(anchor(first))
        model.register_buffer("dfa_feedback", matrix)
    cols = math.prod(shape[1:])
    if matrix.shape[0] != shape[0] or matrix.shape[1] < cols:
        raise ValueError(f"{name}: the shared feedback matrix is {tuple(matrix.shape)}, fixed at "
                         f"the first forward, but a layer needs {shape[0]} x {cols}")
    product = _PRODUCTS.get(model)
    if product is None:
        product = _PRODUCTS[model] = SharedProduct()
    return SharedProjection(shape, chunk, matrix, scale, product)


class SharedProduct:
    """The last `e @ S` of one shared matrix S, with the e it was made from, so that the layers of one
    backward (each given e, or a view of it) multiply once. The key is e's memory, layout and version and
    S's: holding e keeps its memory from being reused by another tensor while the key stands (a pass holds
    its e until the next forward anyway)."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.source: Tensor | None = None
        self.value: Tensor | None = None

    def __call__(self, e: Tensor, matrix: Tensor) -> Tensor:
        key = (e.untyped_storage().data_ptr(), e.storage_offset(), tuple(e.shape), e.stride(), e._version,
               e.dtype, matrix.data_ptr(), matrix._version)
        if key != self.key or self.value is None:
            self.key, self.source, self.value = key, e, e @ matrix.to(e.dtype)
        return self.value


#: converted model -> the product cache of its shared matrix (an entry goes with its model)
_PRODUCTS: weakref.WeakKeyDictionary[nn.Module, SharedProduct] = weakref.WeakKeyDictionary()


class SharedProjection(Projection):
    """A layer's slice of the shared matrix: `e @ (S[:, :D] * scale)`, read off the backward's one `e @ S`."""

    def __init__(self, shape: torch.Size, chunk: int, matrix: Tensor, scale: float,
                 product: SharedProduct) -> None:
        super().__init__(shape, chunk, lambda k, j0, j1: matrix[:, j0:j1] * scale)
        self.shared_matrix, self.scale, self.product = matrix, scale, product

    def __call__(self, e: Tensor) -> Tensor:
        return self.product(e, self.shared_matrix)[:, :self.cols] * self.scale


class Broadcast:
    """`position_feedback="shared"`: one B `(n_out, C)` for every position of an `(N, *positions, C)` tensor,
    as Launay et al. 2020 share a transformer's feedback across tokens; each position gets `e @ B`."""

    def __init__(self, project: Projection, shape: torch.Size) -> None:
        self.project, self.shape = project, shape  # shape: (n_out, *positions, C)

    def __call__(self, e: Tensor) -> Tensor:
        g = self.project(e)  # (N, C)
        middle = (1,) * (len(self.shape) - 2)
        return g.view(g.shape[0], *middle, g.shape[1]).expand(g.shape[0], *self.shape[1:])

    def matrix(self, like: Tensor) -> Tensor:
        return self.project.matrix(like)


class Summed:
    """A sequence output's error `(N, T, n_out)` for a module whose positions are not the output's (a
    convolution, an input without them, cross-attention's memory of another length): every position gets
    what an `(N, n_out)` output's e would give, with e the error summed over the output's positions."""

    def __init__(self, project: AnyProjection) -> None:
        self.project = project

    def __call__(self, e: Tensor) -> Tensor:
        return self.project(e.sum(1))

    def matrix(self, like: Tensor) -> Tensor:
        return self.project.matrix(like)


class PerToken:
    """Per-token DFA for a module of shape `(N, T, *rest)` under an output `(N, T, n_out)`: position t gets
    `e_t @ B_t`, its own error only. B is `(n_out, T, *rest)`, B_t = B[:, t] (`project`, full), or one
    `(n_out, C)` for every position (`project` is then `(n_out, C)`, C = rest[-1], shared)."""

    def __init__(self, project: Projection, shape: torch.Size) -> None:
        self.project, self.shape = project, shape  # shape: (n_out, T, *rest)
        self.shared = len(project.shape) == 2

    def __call__(self, e: Tensor) -> Tensor:
        n, t = e.shape[:2]
        if self.shared:
            g = self.project(e.reshape(n * t, -1))  # (N T, C)
            middle = (1,) * (len(self.shape) - 3)
            return g.view(n, t, *middle, g.shape[1]).expand(n, *self.shape[1:])
        k = math.prod(self.shape[2:])  # columns of B.flatten(1) per position
        out = e.new_empty(n, t * k)
        for j0, j1, block in self.project.blocks():
            block = block.to(e.dtype)
            if j0 % k == 0 and j1 % k == 0:  # whole positions: one batched product over them
                t0, t1 = j0 // k, j1 // k
                part = torch.einsum("ntv,vtk->ntk", e[:, t0:t1], block.view(-1, t1 - t0, k))
                out.view(n, t, k)[:, t0:t1] = part
                continue
            for p in range(j0 // k, (j1 - 1) // k + 1):  # a chunk that splits positions
                a, b = max(j0, p * k), min(j1, (p + 1) * k)
                out[:, a:b] = e[:, p] @ block[:, a - j0:b - j0]
        return out

    def matrix(self, like: Tensor) -> Tensor:
        return self.project.matrix(like)


class KernelProjection:
    """BioTorch's DFA for a convolution: e, the same at every output position, goes back to the input by
    the convolution's own input gradient with B (`n_out x in_channels x kernel`) in W's place. So the
    input gets, at each position, B's taps that reach it summed and weighted by e."""

    def __init__(self, feedback: Tensor, op: ConvOp, shape: torch.Size) -> None:
        self.feedback, self.op, self.input_shape = feedback, op, shape[1:]
        kernel = feedback.shape[2:]
        self.out_size = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in
                         zip(shape[2:], op.padding, op.dilation, kernel, op.stride, strict=True)]

    def __call__(self, e: Tensor) -> Tensor:
        # e is the same at every output position, so first fold it into each sample's taps,
        # K = e @ B (n x in_channels x kernel), then spread K over the input: the input gradient of a
        # depthwise convolution (one group per sample and channel) whose output gradient is all ones.
        # Spreading e through B directly would cost n_out / out_channels times the layer's own backward.
        n, c = e.shape[0], self.input_shape[0]
        taps = (e @ self.feedback.flatten(1).to(e.dtype)).view(n * c, 1, *self.feedback.shape[2:])
        ones = e.new_ones(1, n * c, *self.out_size)
        stand_in = e.new_zeros(()).expand(1, n * c, *self.input_shape[1:])  # only its shape is read
        spread = ConvOp(self.op.stride, self.op.padding, self.op.dilation, n * c)
        grad = spread.backward(ones, stand_in, taps, (True, False, False))[0]
        assert grad is not None  # asked for
        return grad.view(n, *self.input_shape)

    def matrix(self, like: Tensor) -> Tensor:
        return self.feedback


def kernel(layer: RuleLayer, seed: int, shape: torch.Size, scale: float, chunk: int,
           normal: bool = False) -> KernelProjection:
    """The layer's `n_out x in_channels x kernel` `feedback` buffer, drawn as `seeded` draws, at the first
    forward; `shape` is `(n_out, *input.shape[1:])`."""
    w, op = layer.weight, layer.op
    assert isinstance(op, ConvOp)  # a convolution's (`DirectFeedback.kernel_form`)
    feedback = buffer(layer, "feedback")
    if feedback is None:
        kernel_shape = torch.Size((shape[0], w.shape[1], *w.shape[2:]))
        feedback = seeded(seed, kernel_shape, scale, chunk, w, normal).matrix(w)
        layer.register_buffer("feedback", feedback)
    return KernelProjection(feedback, op, shape)


#: What a module's B is, as `DirectFeedback.projection` makes it: every kind maps e to the module's gradient.
AnyProjection = Projection | Broadcast | KernelProjection | Summed | PerToken
