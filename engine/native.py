"""The engine's C kernels, built on first use: the int8 products (int8_kernel.c), and the
small operations of a decode step (step_ops.c: RMSNorm, attention over the KV-cache).

Why: `torch._int_mm`'s speed depends on the CPU far more than the memory does.
Measured with 2 threads: on an AMD EPYC with AVX-512 VNNI it streamed
16-18 GB/s at one activation row; on an AMD EPYC with AVX2 only (16.7 GB/s of
memory bandwidth) it ran at 1.5 GB/s at one row and 0.2 GB/s at 256, a
reference kernel: Qwen 0.5B's output projection alone took 72 ms a token.
The C kernel computes the same exact int32 sums (so the choice never changes
a result) at 13-16 GB/s there, and 50-60 GMAC/s for prompt rows.

The kernel is plain C (AVX2; the 16-bit rows use AVX-512 VNNI where the CPU has it, with
the same exact sums), compiled once per source and machine with the
system's C compiler (`$CC`, else `cc`) into the cache directory, and loaded
with ctypes, which releases the GIL while it runs. Where it loads, every int8 row of the
engine is one 16-bit row in C (`prompt16()`, not timed: the mode changes results). For the int8
products themselves (`int8_mm`, the same sums either way) the kernel is chosen by timing both
once per process, separately for decode rows (at most `ROWS`) and prompt rows, since a CPU's
torch kernel may be fast for one and not the other.
Without a compiler, AVX2 or a working build, torch's kernel serves every
product and the reason is logged once. `KEYSTROKE_INT8_KERNEL=torch` turns the C kernel's
16-bit rows off and, with `native`, overrides the timing of the int8 products.

The small operations need no timing: one C call replaces six to twenty torch
operations (measured in step_ops.c's header). They compute each row alone in
float32, in their own fixed order, so their bits are not torch's. With int8
weights, where `prompt16()` holds, every row of every layer goes through
them and the 16-bit prompt rows (quantize.Phase.row_exact): a decode step
then computes exactly what a prefill of the same token would, so generated
tokens' K/V are kept. The engine names the mode in its fingerprint
(quantize.kernels, `step_ops()`), so caches never mix the two.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import torch

from .paths import cache_root

log = logging.getLogger("keystroke.engine")

SOURCES = tuple(Path(__file__).with_name(name) for name in ("int8_kernel.c", "step_ops.c"))
VERSION = 2        # ks_kernel_version() of the source this module speaks to
ROWS = 16          # activation rows the kernel keeps in registers per pass; above it, "prompt" rows

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_why_not: str | None = None      # set once loading failed
_choice: dict = {}              # small (decode rows)? -> use the C kernel; "prompt16" -> prompt16()


def _build(target: Path) -> None:
    cc = os.environ.get("CC") or "cc"
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / target.name
        cmd = [cc, "-O3", "-ffp-contract=off", "-shared", "-fPIC", "-fopenmp", *map(str, SOURCES), "-o", str(out)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise OSError(f"{' '.join(cmd)} failed: {done.stderr.strip()[-400:]}")
        os.replace(out, target)   # atomic: another process never loads a half-written file


def built_path() -> Path:
    """Where the build of this source for this machine lives: a new source is a new file."""
    key = hashlib.sha256(b"".join(p.read_bytes() for p in SOURCES) + platform.machine().encode()).hexdigest()[:16]
    return cache_root() / "kernels" / f"int8_kernel-{key}.so"


def _load() -> ctypes.CDLL | None:
    """The built kernel, or None with `_why_not` saying why."""
    global _lib, _why_not
    if _lib is not None or _why_not is not None:
        return _lib
    try:
        if platform.machine().lower() not in ("x86_64", "amd64"):
            raise OSError(f"the C kernel is written for x86-64 (AVX2), this is {platform.machine()}")
        target = built_path()
        if not target.exists():
            _build(target)
        lib = ctypes.CDLL(str(target))
        if lib.ks_kernel_version() != VERSION:
            raise OSError(f"{target} is not the kernel this keystroke expects; delete it to rebuild")
        lib.ks_int8_mm.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
                                   ctypes.c_int64, ctypes.c_void_p, ctypes.c_int]
        lib.ks_int8_mm.restype = ctypes.c_int
        p, i64 = ctypes.c_void_p, ctypes.c_int64
        lib.ks_int8_decode_rows.argtypes = [p, i64, i64, p, p, p, p, i64, p, ctypes.c_int]
        lib.ks_int8_decode_rows.restype = ctypes.c_int
        lib.ks_int16_prompt_rows.argtypes = [p, i64, i64, p, p, p, p, i64, p, ctypes.c_int]
        lib.ks_int16_prompt_rows.restype = ctypes.c_int
        lib.ks_use_avx512.argtypes = [ctypes.c_int]
        lib.ks_use_avx512.restype = ctypes.c_int
        lib.ks_rms_norm.argtypes = [p, i64, i64, p, ctypes.c_float, p]
        lib.ks_rms_norm.restype = ctypes.c_int
        lib.ks_step_attention.argtypes = [p, i64, i64, i64, i64, p, p, i64, i64, i64, i64, i64,
                                          ctypes.c_float, p, ctypes.c_int]
        lib.ks_step_attention.restype = ctypes.c_int
        _lib = lib
        _self_test()
    except (OSError, subprocess.SubprocessError, AttributeError, AssertionError) as e:
        _lib, _why_not = None, str(e) or type(e).__name__
        log.warning("int8 products use torch._int_mm, the C kernel is unavailable: %s", _why_not)
    return _lib


def _call(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    m, k = x.shape
    y = torch.empty(m, w.shape[0], dtype=torch.int32)
    if _lib.ks_int8_mm(x.data_ptr(), m, k, w.data_ptr(), w.shape[0], y.data_ptr(), torch.get_num_threads()) != 0:
        raise OSError("the C kernel refused the product (no AVX2, or no memory for it)")
    return y


def _self_test() -> None:
    """The built file against torch on shapes with every kind of tail (rows, blocks, 32-byte steps)."""
    g = torch.Generator().manual_seed(0)
    for m, n, k in ((1, 37, 100), (3, 70, 64), (ROWS + 3, 33, 200)):
        x = torch.randint(-127, 128, (m, k), dtype=torch.int8, generator=g)
        w = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
        ref = (x.long() @ w.long().t()).int()
        assert torch.equal(_call(x, w), ref), f"the C kernel gave wrong sums at {(m, n, k)}"


def _timed(fn, budget: float | None = None) -> float:
    """Best of three calls, or the first call's time where it already exceeds `budget`."""
    best = float("inf")
    for _ in range(3):
        best = min(best, _timed_once(fn))
        if budget is not None and best > budget:
            break
    return best


def _timed_once(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _measure(small: bool) -> bool:
    """Whether the C kernel beats torch._int_mm on this CPU, for decode rows or for prompt rows."""
    forced = os.environ.get("KEYSTROKE_INT8_KERNEL", "").strip().lower()
    if forced in ("torch", "native"):
        return forced == "native"
    m = 1 if small else 64
    g = torch.Generator().manual_seed(1)
    x = torch.randint(-127, 128, (m, 1024), dtype=torch.int8, generator=g)
    w = torch.randint(-127, 128, (2048, 1024), dtype=torch.int8, generator=g)
    _call(x, w)
    native = _timed(lambda: _call(x, w))
    theirs = _timed(lambda: torch._int_mm(w, x.t()) if m == 1 else torch._int_mm(x, w.t()), budget=native)
    return native < theirs


def native_kernel(small: bool) -> bool:
    """Whether the C kernel serves decode rows (`small`) or prompt rows in this process."""
    if small not in _choice:
        with _lock:
            if small not in _choice:
                _choice[small] = _load() is not None and _measure(small)
                log.info("int8 %s rows: %s", "decode" if small else "prompt",
                         "the C kernel" if _choice[small] else "torch._int_mm")
    return _choice[small]


def int8_mm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x (M, K) int8 times w (N, K) int8 transposed: (M, N) int32, the exact integer sums."""
    m = x.shape[0]
    if (x.device.type == "cpu" and w.device.type == "cpu" and x.dtype == w.dtype == torch.int8
            and x.dim() == w.dim() == 2 and x.shape[1] == w.shape[1]
            and x.is_contiguous() and w.is_contiguous() and native_kernel(m <= ROWS)):
        return _call(x, w)
    if m == 1:   # W @ x^T: the same sums, measured faster than x @ W^T at M=1 with torch's kernel
        return torch._int_mm(w, x.view(-1, 1)).view(1, -1)
    return torch._int_mm(x, w.t())


class DecodeRows:
    """Decode rows of one int8 linear in one C call, bit for bit as Int8Linear._one_row/_step_rows and
    the bias add compute them in torch (quantizing each row, the sums, the scaling back): about ten
    torch operations fewer per product. The weight's checks are done once, here; a call checks only x.
    """

    def __init__(self, w: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        n, k = w.shape
        if not (w.dtype == torch.int8 and scale.dtype == torch.float32 and w.device.type == "cpu"
                and w.is_contiguous() and scale.is_contiguous() and scale.shape == (n,)
                and (bias is None or (bias.dtype == torch.float32 and bias.shape == (n,) and bias.is_contiguous()))):
            raise ValueError("not an int8 linear the C kernel can run")
        self.tensors = (w, scale, bias)       # kept: the pointers below stay valid while this object lives
        self.n, self.k = n, k
        self.scratch = torch.empty(ROWS, k, dtype=torch.int8)
        self.args = (self.scratch.data_ptr(), w.data_ptr(), scale.data_ptr(),
                     None if bias is None else bias.data_ptr(), n)

    def holds(self, *tensors: torch.Tensor | None) -> bool:
        return all(a is b for a, b in zip(self.tensors, tensors))

    def __call__(self, x: torch.Tensor) -> torch.Tensor | None:
        """x (M, K) float32, M <= ROWS: (M, N) float32; None where the C kernel does not serve decode rows."""
        m, k = x.shape
        if m > ROWS or k != self.k or x.dtype != torch.float32 or not x.is_contiguous() or not native_kernel(True):
            return None
        y = torch.empty(m, self.n)
        xq, w, scale, bias, n = self.args
        if _lib.ks_int8_decode_rows(x.data_ptr(), m, k, xq, w, scale, bias, n, y.data_ptr(),
                                    torch.get_num_threads()) != 0:
            return None
        return y


def _ready() -> ctypes.CDLL | None:
    """The loaded library (built and loaded on the first call), or None."""
    if _lib is None and _why_not is None:
        with _lock:
            _load()
    return _lib


def prompt_rows16(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor,
                  bias: torch.Tensor | None) -> torch.Tensor | None:
    """Prompt rows of an int8 linear with 16-bit activations (int8_kernel.c): x (M, K) float32 ->
    (M, N) float32, or None where the C kernel cannot serve. Exact integer sums, so chunk-invariant."""
    m, k = x.shape
    n = w.shape[0]
    if (_ready() is None or x.dtype != torch.float32 or x.device.type != "cpu" or w.dtype != torch.int8
            or w.shape[1] != k or not w.is_contiguous() or scale.dtype != torch.float32 or not scale.is_contiguous()
            or (bias is not None and (bias.dtype != torch.float32 or not bias.is_contiguous()))):
        return None
    x = x.contiguous()
    xq = torch.empty(m, k, dtype=torch.int16)
    y = torch.empty(m, n)
    if _lib.ks_int16_prompt_rows(x.data_ptr(), m, k, xq.data_ptr(), w.data_ptr(), scale.data_ptr(),
                                 None if bias is None else bias.data_ptr(), n, y.data_ptr(),
                                 torch.get_num_threads()) != 0:
        return None
    return y


def use_avx512(on: bool = True) -> bool:
    """Let the 16-bit rows use AVX-512 VNNI where the CPU has it (the default), or keep them on AVX2;
    returns whether they use it now. Both give the same exact sums, so this changes speed, never bits."""
    return _ready() is not None and bool(_lib.ks_use_avx512(int(on)))


def prompt16() -> bool:
    """Whether every int8 row runs as one 16-bit row in C (`prompt_rows16`, quantize.Phase.row_exact)
    in this process, rather than prompt rows as two int8 rows through `int8_mm`: wherever the C
    kernel loads, unless `KEYSTROKE_INT8_KERNEL=torch`.

    Not timed: the mode changes results (the engine names it in its fingerprint, quantize.kernels),
    and a timing taken under load chose differently in two processes of one test run, so a server
    and its client's reference engine disagreed. Measured, the 16-bit rows made the better engine on
    both CPUs tried: on the AVX2-only EPYC a 256-row prompt product took 17 against 36 ms; on the
    AVX-512 VNNI EPYC torch's int8 rows took 0.4-0.7x the time of a 16-bit prompt product, yet the
    engine prefilled as fast and decoded 56 tok/s against 39 (decode steps then run their norms and
    attention in C, and decode rows equal prefill rows, so the cache keeps generated tokens' K/V)."""
    if "prompt16" not in _choice:
        forced = os.environ.get("KEYSTROKE_INT8_KERNEL", "").strip().lower()
        choice = _ready() is not None and forced != "torch"
        with _lock:
            _choice.setdefault("prompt16", choice)
        log.info("int8 prompt rows: %s", "one 16-bit row (C)" if _choice["prompt16"] else "two int8 rows")
    return _choice["prompt16"]


def step_ops() -> str | None:
    """The name of the decode-step operations in use ("c2"), or None where torch's serve (no C kernel)."""
    return f"c{VERSION}" if _ready() is not None else None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor | None:
    """RMSNorm of float32 rows in one C call; None where the C kernel cannot serve (then use torch)."""
    d = x.shape[-1]
    if (_ready() is None or x.dtype != torch.float32 or weight.dtype != torch.float32 or x.device.type != "cpu"
            or weight.shape != (d,) or not weight.is_contiguous()):
        return None
    x = x.contiguous()          # rows are computed alone: a copy changes no bit
    y = torch.empty_like(x)
    if _lib.ks_rms_norm(x.data_ptr(), x.numel() // d, d, weight.data_ptr(), eps, y.data_ptr()) != 0:
        return None
    return y


def step_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float,
                   window: int | None) -> torch.Tensor | None:
    """Attention of T rows over the cache in one C call (decode rows, or a prompt's rows in row-exact
    mode, causal by construction): (B, T, H * D) float32, or None where the
    C kernel cannot serve. q (B, H, T, D); keys/values (B, n_kv, end, D), views of the cache's
    buffers; row i sees the keys up to position end - T + i (within `window`), as model.step_attention."""
    b, h, t, d = q.shape
    n_kv, end = keys.shape[1], keys.shape[2]
    if (_ready() is None or q.dtype != keys.dtype or keys.dtype != torch.float32 or values.dtype != torch.float32
            or q.device.type != "cpu" or keys.stride() != values.stride() or keys.shape != values.shape
            or keys.stride(3) != 1 or keys.stride(2) != d or end < t):
        return None
    q = q.contiguous()
    out = torch.empty(b, t, h * d)
    if _lib.ks_step_attention(q.data_ptr(), b, h, t, d, keys.data_ptr(), values.data_ptr(), n_kv,
                              keys.stride(0), keys.stride(1), end - t + 1, window or 0, scale,
                              out.data_ptr(), torch.get_num_threads()) != 0:
        return None
    return out


def status() -> dict:
    """What serves the int8 products (for `keystroke.status` and the benchmarks)."""
    if _choice.get("prompt16"):    # row-exact mode: every row is one 16-bit row in C
        return {"decode_rows": "c, 16-bit", "prompt_rows": "c, 16-bit", "prompt_rows_16bit": True,
                "step_ops": "c", "c_kernel_unavailable": None}
    return {"decode_rows": "c" if _choice.get(True) else "torch" if True in _choice else "not yet chosen",
            "prompt_rows": "c" if _choice.get(False) else "torch" if False in _choice else "not yet chosen",
            "prompt_rows_16bit": _choice.get("prompt16"),
            "step_ops": "c" if _lib is not None else "torch",
            "c_kernel_unavailable": _why_not}
