"""Mixed precision for the learners: one object that every training loop asks for its autocast
context, its backward pass and its optimizer step, so that fp32, bf16 and fp16 share one code path.

`learner.precision`: `auto` is bf16 autocast on a CUDA device that supports it (Ampere and
later) and fp32 everywhere else, the CPU included; `bf16` and `fp16` ask for it anywhere torch
autocasts (fp16 adds a gradient scaler); `fp32` turns it off. Weights, optimizer state and the
losses stay in fp32; only the forward's matmuls and convolutions run in the lower precision.
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Literal

import torch
from torch import nn

PrecisionName = Literal["auto", "fp32", "bf16", "fp16"]
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(setting: PrecisionName, device: torch.device) -> str:
    """The precision `setting` means on `device`: `fp32`, `bf16` or `fp16`."""
    if setting == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return setting


class Precision:
    """Autocast, loss scaling and clipped optimizer steps for `setting` on `device`."""

    def __init__(self, setting: PrecisionName, device: torch.device) -> None:
        self.device = device
        self.name = resolve_precision(setting, device)
        self.dtype = _DTYPES.get(self.name)
        # fp16 gradients underflow without scaling; bf16 has fp32's exponent range and needs none.
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.name == "fp16")

    def autocast(self) -> contextlib.AbstractContextManager:
        """Where the forward pass runs (a no-op in fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(
        self,
        optimizer: torch.optim.Optimizer,
        parameters: Iterable[nn.Parameter] | None = None,
        max_grad_norm: float | None = None,
    ) -> None:
        """Unscale, clip the gradients' norm to `max_grad_norm` (when given) and step."""
        if max_grad_norm is not None:
            self.scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(list(parameters or []), max_grad_norm)
        self.scaler.step(optimizer)
        self.scaler.update()
