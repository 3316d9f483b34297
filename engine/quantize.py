"""Weight formats for the linear layers, chosen per device.

On this kind of CPU the fast kernels are fbgemm's packed ones (measured in
scripts/bench_engine.py and ../shared/ENGINE-NOTES.md), not the aten
weight-only int8/int4 kernels:

- `int8` (the CPU default): single-token decode steps run
  `quantized.linear_dynamic` on per-channel int8 weights (activations are
  quantized on the fly with 7-bit range, which AVX2 needs); prompt prefill
  runs `quantized.linear_dynamic_fp16` on fp16 weights, because int8 dynamic
  quantizes a whole batch of rows with one scale, which would make a row's
  result depend on its neighbours and break cache equivalence (a token's K/V
  must not depend on how the prompt was chunked).
- `fp16`: fbgemm fp16 weights for both phases.
- `fp32`: plain `F.linear`, the exact reference.
- `bf16` / `fp16` on CUDA: the whole model in that dtype (see Engine.load).

A `QuantLinear` reads the phase from a `Phase` object that the Transformer
flips around decode steps, so the choice costs no extra argument per layer.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from .errors import KeystrokeError

QUANTS = ("int8", "fp16", "fp32", "bf16")


class Phase:
    """Shared flag: True while the model runs single-token decode steps."""

    def __init__(self) -> None:
        self.decode = False


def _int8_pack(weight: torch.Tensor, bias: torch.Tensor | None):
    w = weight.float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-8).double()
    zero = torch.zeros(w.shape[0], dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns that quantized tensors are being phased out
        qw = torch.quantize_per_channel(w, scale, zero, 0, torch.qint8)
        return torch.ops.quantized.linear_prepack(qw, bias)


class QuantLinear(nn.Module):
    def __init__(self, linear: nn.Linear, kind: str, phase: Phase) -> None:
        super().__init__()
        self.kind = kind
        self.phase = phase
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight.detach().float()
        b = linear.bias.detach().float() if linear.bias is not None else None
        self.packed16 = torch.ops.quantized.linear_prepack_fp16(w, b)
        self.packed8 = _int8_pack(w, b) if kind == "int8" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if self.packed8 is not None and self.phase.decode:
            y = torch.ops.quantized.linear_dynamic(x2, self.packed8, True)
        else:
            y = torch.ops.quantized.linear_dynamic_fp16(x2, self.packed16)
        return y.view(*shape[:-1], self.out_features)


def fbgemm_available() -> bool:
    try:
        p = torch.ops.quantized.linear_prepack_fp16(torch.zeros(2, 2), None)
        torch.ops.quantized.linear_dynamic_fp16(torch.zeros(1, 2), p)
        return True
    except Exception:  # a build without fbgemm (e.g. some ARM wheels)
        return False


def pick_quant(quant: str, device: torch.device) -> str:
    """The weight format for `device`: "auto" resolved, an unusable choice refused with a hint."""
    if quant == "auto":
        if device.type == "cuda":
            return "bf16"
        return "int8" if fbgemm_available() else "fp32"
    if quant in ("int8", "fp16") and device.type == "cpu" and not fbgemm_available():
        raise KeystrokeError(f"quantization {quant!r} needs torch's fbgemm kernels, which this torch build lacks",
                             "use --quant fp32")
    return quant


def quantize_model(model: nn.Module, kind: str, phase: Phase) -> nn.Module:
    """Replace every nn.Linear of `model` in place by a QuantLinear of `kind` ('int8' or 'fp16')."""
    if kind not in ("int8", "fp16"):
        raise ValueError(f"unknown quantization {kind!r}")
    for name, child in list(model.named_children()):
        if isinstance(child, nn.Linear):
            setattr(model, name, QuantLinear(child, kind, phase))
        else:
            quantize_model(child, kind, phase)
    return model
