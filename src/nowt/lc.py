"""`LocallyConnected2d`: convolution-like receptive fields without weight sharing.

Every output position has its own filter, the biological constraint at the centre of Bartunov et al. (2018):
a neuron cannot share its synapses with its neighbours. The layer is a plain `nn.Module` (unfold plus one
batched matmul, see `nowt.ops.LocallyConnected2dOp`), so autograd differentiates it, `nowt.convert` turns
it into a rule-trained layer like `nn.Linear` and `nn.Conv2d`, and target propagation trains it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from nowt.ops import LocallyConnected2dOp

INITS = ("kaiming_uniform", "glorot")


def _pair(value: int | tuple[int, int], name: str, minimum: int) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v >= minimum for v in pair):
        raise ValueError(f"{name} must be an int >= {minimum} or a pair of them, got {value!r}")
    return pair


class LocallyConnected2d(nn.Module):
    """y[n, o, i, j] = b[o, i, j] + sum_{c, u, v} W[(i, j), o, (c, u, v)] x[n, c, s i + u - p, s j + v - p].

    `input_size` = (H, W) of the input: unlike a convolution, the number of filters depends on it.
    weight: (out_h * out_w * out_channels, in_channels * kh * kw), one row per output unit (position-major);
    bias: (out_channels, out_h, out_w). `init`: "kaiming_uniform" (the default of `nn.Conv2d`, by each
    unit's fan-in) or "glorot" (uniform, fan-in and fan-out counted as for a convolution with this kernel,
    zero bias; the init of Bartunov et al.).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        *,
        input_size: int | tuple[int, int],
        bias: bool = True,
        init: str = "kaiming_uniform",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not (isinstance(in_channels, int) and isinstance(out_channels, int)
                and in_channels > 0 and out_channels > 0):
            raise ValueError(f"channels must be positive ints, got {in_channels!r} and {out_channels!r}")
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
        self.in_channels, self.out_channels, self.init = in_channels, out_channels, init
        self.kernel_size = _pair(kernel_size, "kernel_size", 1)
        self.stride = _pair(stride, "stride", 1)
        self.padding = _pair(padding, "padding", 0)
        self.input_size = _pair(input_size, "input_size", 1)
        self.op = LocallyConnected2dOp(in_channels, out_channels, self.kernel_size, self.stride, self.padding,
                                       self.input_size)
        if min(self.op.output_size) < 1:
            raise ValueError(f"kernel {self.kernel_size} with padding {self.padding} does not fit input "
                             f"{self.input_size}")
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(self.op.weight_shape, **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels, *self.op.output_size, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    @property
    def output_size(self) -> tuple[int, int]:
        return self.op.output_size

    def fans(self) -> tuple[int, int]:
        """(fan-in, fan-out) as Glorot counts them for a convolution with this kernel: a unit's inputs, and
        the units one input reaches at one position (the weight's shape would count every position)."""
        return self.weight.shape[1], self.out_channels * self.kernel_size[0] * self.kernel_size[1]

    def reset_parameters(self) -> None:
        fan_in, fan_out = self.fans()
        if self.init == "glorot":
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            nn.init.uniform_(self.weight, -bound, bound)
            if self.bias is not None:
                nn.init.zeros_(self.bias)
            return
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        if self.bias is not None:
            nn.init.uniform_(self.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))

    def forward(self, x: Tensor) -> Tensor:
        return self.op.forward(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, input_size={self.input_size}, "
                f"bias={self.bias is not None}")
