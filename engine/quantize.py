"""Weight formats for the linear layers: one copy of each weight, in the format it runs in.

- `int8` (the CPU default): each weight row (output channel) is int8 with one
  fp32 scale. Activations are quantized per token row (int8, one scale per
  row) and multiplied with int32 accumulation (`native.int8_mm`: the C kernel
  of int8_kernel.c, or `torch._int_mm`, whichever is faster on this CPU). An
  integer sum does not depend on the order of its terms, and a row's scale
  depends only on that row, so a token's result is bit-identical however the
  prompt was chunked (prefilled in one piece, token by token, or decoded):
  cache equivalence needs nothing more from the linears, and the same weights
  serve prefill and decode. Measured on an AVX-512 VNNI CPU (4864x896, 2
  threads): 54 us for one token, 1.9 ms for 256, against fbgemm's dynamic
  int8 85 us / 2.2 ms and fp16 188 us / 8.2 ms.
  Wherever the C kernel loads, unless KEYSTROKE_INT8_KERNEL=torch
  (`native.prompt16`; on the AVX2-only EPYC 896x4864 with 256 rows took 17
  ms as 16-bit rows against 36 as two int8 rows), every layer row, prompt or decode, is one int16 row
  (`native.prompt_rows16`, exact int64 sums): `Phase.row_exact`, in which a
  decode step gives a prefill's bits (model.py). From DRAM, one 16-bit
  decode row runs as fast as one int8 row (a single stream through the
  weights). Otherwise prompt rows are two int8 rows (`Int8Linear.fine`) and
  decode rows one.
  The modes round differently, so the mode is part of the engine's
  fingerprint (`kernels`).
- `fp16`: fbgemm fp16 weights (`quantized.linear_dynamic_fp16`).
- `fp32`: plain `F.linear`, the exact reference.
- `bf16` / `fp16` on CUDA: the whole model in that dtype (see Engine.load).

The embedding table is int8 too (`Int8Embedding`); when the model ties it to
the output projection both read the same tensors.
"""
from __future__ import annotations

import torch
from torch import nn

from .errors import KeystrokeError
from . import native
from .native import DecodeRows, int8_mm, prompt_rows16

QUANTS = ("int8", "fp16", "fp32", "bf16")
# Part of every cache key (KV entries on disk, responses): bumped when a format's kernels
# change its results, so that nothing computed by the old ones is mixed with the new.
KERNELS = {"int8": "int8-intmm-2rows-v3"}
KERNELS_C = {"int8": "int8-x16rows-c-v1"}   # Phase.row_exact: int16 rows, C norms and attention


def row_exact(quant: str, device: torch.device) -> bool:
    """Whether `quant` runs every row through the C kernels here (Phase.row_exact)."""
    return quant in KERNELS_C and device.type == "cpu" and native.prompt16()


def kernels(quant: str, device: torch.device) -> str:
    """The name of what computes `quant`'s results in this process: part of the engine's fingerprint."""
    return KERNELS_C[quant] if row_exact(quant, device) else KERNELS.get(quant, quant)


class Phase:
    """Flags the Transformer shares with its modules (Transformer.share_phase).

    `decode`: the model runs decode steps (one token, or one token and its drafted guesses).
    `row_exact`: every row runs through the C kernels, each row alone (one 16-bit row per token
    for every linear, C norms and attention): a decode row then gives exactly a prefill row's
    bits, so generated tokens' K/V can be kept (set by Engine.load).
    """

    def __init__(self) -> None:
        self.decode = False
        self.row_exact = False


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row of a 2-D tensor: (int8 values, fp32 scale per row, shape (rows, 1))."""
    # max |x| is exact however computed; amax(abs) measured 4 us against vector_norm(inf)'s 19 (4864 wide).
    amax = torch.amax(torch.abs(x), dim=-1, keepdim=True).clamp_(min=1e-30)
    q = (x * (127.0 / amax)).round_().to(torch.int8)
    return q, amax.div_(127.0)


class Int8Linear(nn.Module):
    """y = x W^T (+ b) with int8 W (one scale per output row) and int8 activations (one scale per token).

    With `fine` (the default), each activation row of a prompt is two int8 rows,
    x ~ s1 q1 + s2 q2 (q2 quantizes what q1 missed), multiplied in one product
    call: ~15-bit activations, still an exact integer sum. Measured (argmax of int8
    vs fp32 logits over 512 tokens of argparse.py): Gemma 3 270M 88.1% with one
    int8 row, 96.9% with two; Qwen2.5-Coder 0.5B 94.3% and 98.0%. Decode steps
    (`phase.decode`, set by the Transformer) use one row: `_int_mm` with two rows
    halved decode speed, and a decode step's K/V are not reused (Engine.keep_generated),
    so they need not match a prefill's. This is the old fp16-prefill/int8-decode
    trade-off, without a second copy of the weights.
    """

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", weight)   # (out, in) int8
        self.register_buffer("scale", scale)     # (out,) fp32
        self.register_buffer("bias", bias)       # (out,) fp32 or None
        self.fine = True
        self.phase: Phase | None = None          # shared with the Transformer (Transformer.share_phase)

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> "Int8Linear":
        q, s = quantize_rows(weight.float())
        return cls(q, s.view(-1), None if bias is None else bias.float().contiguous())

    @classmethod
    def empty(cls, out_features: int, in_features: int, bias: bool, device: str | torch.device = "meta"):
        """A shell whose tensors `load_state_dict(..., assign=True)` replaces (loading a packed cache)."""
        return cls(torch.empty(out_features, in_features, dtype=torch.int8, device=device),
                   torch.empty(out_features, device=device),
                   torch.empty(out_features, device=device) if bias else None)

    def _one_row(self, x: torch.Tensor) -> torch.Tensor:
        """A decode step's one activation row: its scale as a Python float, so quantizing it and
        scaling the result back take 6 operations where `quantize_rows` and the tensor scale take 10;
        measured 9-12 us less per product (of 45-55 for Qwen 0.5B's small ones). The torch twin of
        the C kernel's decode rows (native.DecodeRows), which serves where the C kernel does not."""
        step = max(float(x.abs().amax()), 1e-30) / 127.0
        xq = x.mul(1.0 / step).round_().to(torch.int8)
        return int8_mm(xq.view(1, -1), self.weight).mul(self.scale * step)

    def _step_rows(self, x: torch.Tensor) -> torch.Tensor:
        """Several decode rows at once (a step that checks drafted tokens, generate.py), each row
        computed exactly as `_one_row` computes it alone: the same int8 values, the same exact integer
        sums, the same float32 roundings of 1/step and of scale * step. Python's float arithmetic is
        float64, so the steps are computed in float64 here, then rounded where `_one_row`'s scalars are."""
        step = torch.amax(torch.abs(x), dim=-1, keepdim=True).double().clamp_(min=1e-30).div_(127.0)
        xq = x.mul(step.reciprocal().float()).round_().to(torch.int8)
        return int8_mm(xq, self.weight).float().mul_(self.scale * step.float())

    def _c_rows(self, x: torch.Tensor) -> torch.Tensor | None:
        plan = self.__dict__.get("_plan")
        if plan is None or not plan.holds(self.weight, self.scale, self.bias):   # first use, or tensors replaced
            try:
                plan = self.__dict__["_plan"] = DecodeRows(self.weight, self.scale, self.bias)
            except ValueError:
                return None
        return plan(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if self.phase is not None and self.phase.row_exact:
            y = prompt_rows16(x2, self.weight, self.scale, self.bias)   # every row: one 16-bit row in C
            if y is not None:
                return y.view(*shape[:-1], self.out_features)
        decode = self.phase is not None and self.phase.decode
        if decode:
            y = self._c_rows(x2)   # the C kernel when it serves decode rows: the same bits
            if y is None:
                y = self._one_row(x2) if x2.shape[0] == 1 else self._step_rows(x2)
                if self.bias is not None:
                    y.add_(self.bias)
            return y.view(*shape[:-1], self.out_features)
        xq, xs = quantize_rows(x2)
        if self.fine:
            rq, rs = quantize_rows(x2 - xq.float() * xs)
            both = int8_mm(torch.cat([xq, rq]), self.weight).float()
            m = x2.shape[0]
            y = both[:m].mul_(xs).add_(both[m:].mul_(rs)).mul_(self.scale)
        else:
            y = int8_mm(xq, self.weight).float().mul_(xs).mul_(self.scale)
        if self.bias is not None:
            y.add_(self.bias)
        return y.view(*shape[:-1], self.out_features)


class Int8Embedding(nn.Module):
    """Rows of an int8 table, scaled back to fp32; may share its table with the output projection."""

    def __init__(self, table: Int8Linear) -> None:
        super().__init__()
        self.table = table

    @property
    def weight(self) -> torch.Tensor:
        return self.table.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.table.weight[tokens].float().mul_(self.table.scale[tokens].unsqueeze(-1))


class Fp16Linear(nn.Module):
    """fbgemm's packed fp16 weights (fp32 activations)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.packed = torch.ops.quantized.linear_prepack_fp16(
            weight.float(), None if bias is None else bias.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch.ops.quantized.linear_dynamic_fp16(x.reshape(-1, shape[-1]), self.packed)
        return y.view(*shape[:-1], self.out_features)


def fbgemm_available() -> bool:
    try:
        p = torch.ops.quantized.linear_prepack_fp16(torch.zeros(2, 2), None)
        torch.ops.quantized.linear_dynamic_fp16(torch.zeros(1, 2), p)
        return True
    except Exception:  # a build without fbgemm (e.g. some ARM wheels)
        return False


def int_mm_available() -> bool:
    try:
        a = torch.ones(1, 8, dtype=torch.int8)
        return int(torch._int_mm(a, a.t())[0, 0]) == 8
    except Exception:
        return False


def pick_quant(quant: str, device: torch.device) -> str:
    """The weight format for `device`: "auto" resolved, an unusable choice refused with a hint."""
    if quant == "auto":
        if device.type == "cuda":
            return "bf16"
        return "int8" if int_mm_available() else "fp32"
    if quant == "int8" and device.type == "cpu" and not int_mm_available():
        raise KeystrokeError("quantization 'int8' needs torch._int_mm on the CPU, which this torch build lacks",
                             "use --quant fp32")
    if quant == "fp16" and device.type == "cpu" and not fbgemm_available():
        raise KeystrokeError("quantization 'fp16' needs torch's fbgemm kernels, which this torch build lacks",
                             "use --quant fp32")
    return quant


class Packer:
    """Turns float32 weights into run-format modules while a checkpoint is read (see Transformer.from_weights)."""

    def __init__(self, kind: str) -> None:
        if kind not in ("int8", "fp16"):
            raise ValueError(f"unknown quantization {kind!r}")
        self.kind = kind

    def linear(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> nn.Module:
        return Int8Linear.from_float(weight, bias) if self.kind == "int8" else Fp16Linear(weight, bias)

    def tables(self, weights, cfg) -> tuple[nn.Module, nn.Module]:
        """(embedding, output projection): int8 reads the table in row blocks and ties one copy to both."""
        if self.kind == "fp16":
            table = weights.pop("model.embed_tokens.weight").float()
            head = weights.pop("lm_head.weight").float() if "lm_head.weight" in weights else table
            embed = nn.Embedding(table.shape[0], table.shape[1], _weight=table.half(), _freeze=True)
            return embed, Fp16Linear(head)
        table = self._int8_table(weights, "model.embed_tokens.weight")
        head = self._int8_table(weights, "lm_head.weight") if "lm_head.weight" in weights else table
        return Int8Embedding(table), head

    @staticmethod
    def _int8_table(weights, name: str) -> Int8Linear:
        if hasattr(weights, "pop_converted"):   # a lazy source: never the whole float32 table at once
            q, s = weights.pop_converted(name, quantize_rows)
        else:
            q, s = quantize_rows(weights.pop(name).float())
        return Int8Linear(q, s.view(-1))

    @staticmethod
    def shell(model: nn.Module) -> nn.Module:
        """Replace, on the meta device, every nn.Linear and the embedding of `model` by int8 shells."""
        for name, child in list(model.named_children()):
            if isinstance(child, nn.Linear):
                setattr(model, name, Int8Linear.empty(child.out_features, child.in_features,
                                                      child.bias is not None))
            elif isinstance(child, nn.Embedding):
                pass   # done by the caller, which knows whether the table is tied
            else:
                Packer.shell(child)
        return model
