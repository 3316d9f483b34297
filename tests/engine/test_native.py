"""The C int8 kernel (engine/int8_kernel.c): built here, the exact sums, and decode rows bit for bit as torch.

It needs a C compiler and an x86-64 CPU with AVX2, as CI's machine has: where
they are missing the build test fails and says why (the engine itself then
falls back to torch._int_mm, tested below with a compiler that fails).
"""
from __future__ import annotations

import pytest
import torch

from keystroke.engine import native
from keystroke.engine.quantize import Int8Linear, Phase


@pytest.fixture
def fresh_native(monkeypatch, tmp_path):
    """native's process-wide state reset, its cache in a temporary folder; restored afterwards."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_why_not", None)
    monkeypatch.setattr(native, "_choice", {})
    return tmp_path


def test_the_kernel_builds_and_loads_on_this_machine():
    assert native._load() is not None, f"the C kernel is unavailable: {native._why_not}"


@pytest.mark.parametrize("m", [1, 2, 5, 16, 17, 40, 70])
def test_int8_sums_are_exact_for_every_tail(m):
    assert native._load() is not None, native._why_not
    g = torch.Generator().manual_seed(m)
    for n, k in ((1, 1), (33, 31), (31, 32), (70, 33), (65, 100), (129, 100), (40, 896)):
        x = torch.randint(-127, 128, (m, k), dtype=torch.int8, generator=g)
        w = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
        assert torch.equal(native._call(x, w), (x.long() @ w.long().t()).int()), (m, n, k)


def test_extreme_values_do_not_saturate():
    """All +-127: the largest pair sums maddubs can meet (2 * 127 * 127 per int16 lane)."""
    assert native._load() is not None, native._why_not
    x = torch.full((3, 4864), 127, dtype=torch.int8)
    x[1] = -127
    w = torch.full((5, 4864), -127, dtype=torch.int8)
    w[2] = 127
    assert torch.equal(native._call(x, w), (x.long() @ w.long().t()).int())


@pytest.mark.parametrize("bias", [False, True])
def test_decode_rows_equal_torchs_one_row_and_step_rows_bit_for_bit(bias, monkeypatch):
    assert native._load() is not None, native._why_not
    # The C kernel serves decode rows here whatever the process's timing chose: this test is about
    # bits, and a timing taken on a busy machine once chose torch._int_mm and made it fail.
    monkeypatch.setitem(native._choice, True, True)
    torch.manual_seed(1)
    lin = Int8Linear.from_float(torch.randn(75, 203) * 0.1, torch.randn(75) if bias else None)
    for m in (1, 2, 4, 7, 16):
        x = torch.randn(m, 203) * torch.logspace(-3, 3, m).unsqueeze(1)
        x[0, :5] = 0.0
        if m > 2:
            x[2] = 0.0                      # an all-zero row: the 1e-30 floor of the step
        ref = lin._one_row(x) if m == 1 else lin._step_rows(x)
        if bias:
            ref = ref + lin.bias
        got = native.DecodeRows(lin.weight, lin.scale, lin.bias)(x)
        assert got is not None
        assert torch.equal(got, ref), (m, (got - ref).abs().max())


def test_a_linear_in_decode_phase_gives_the_same_bits_through_either_kernel(monkeypatch):
    torch.manual_seed(2)
    lin = Int8Linear.from_float(torch.randn(64, 96), torch.randn(64))
    lin.phase = Phase()
    lin.phase.decode = True
    x = torch.randn(3, 1, 96)
    with_c = lin(x)
    monkeypatch.setattr(native, "_choice", {True: False, False: False})   # torch._int_mm everywhere
    assert torch.equal(lin(x), with_c)
    lin.phase.decode = False
    prompt_torch = lin(x)
    monkeypatch.setattr(native, "_choice", {True: True, False: True})
    assert torch.equal(lin(x), prompt_torch)


def test_a_failing_compiler_leaves_torch_serving_with_the_reason(fresh_native, monkeypatch, caplog):
    monkeypatch.setenv("CC", "false")
    x = torch.randint(-127, 128, (2, 40), dtype=torch.int8)
    w = torch.randint(-127, 128, (9, 40), dtype=torch.int8)
    with caplog.at_level("WARNING", logger="keystroke.engine"):
        assert torch.equal(native.int8_mm(x, w), (x.long() @ w.long().t()).int())
    assert native._lib is None and "failed" in native._why_not
    assert native.status()["decode_rows"] == "torch"
    assert "unavailable" in caplog.text
    assert native.DecodeRows(w, torch.ones(9), None)(torch.randn(1, 40)) is None


def test_a_corrupt_cached_build_is_refused_not_loaded(fresh_native):
    """A file that is not a library where the build belongs: a clear reason, and torch serves."""
    target = native.built_path()
    target.parent.mkdir(parents=True)
    target.write_bytes(b"not an ELF file")
    assert native._load() is None
    assert "int8_kernel" in native._why_not
    x = torch.randint(-127, 128, (1, 64), dtype=torch.int8)
    w = torch.randint(-127, 128, (8, 64), dtype=torch.int8)
    assert torch.equal(native.int8_mm(x, w), (x.long() @ w.long().t()).int())


def test_the_override_picks_the_kernel(fresh_native, monkeypatch):
    monkeypatch.setenv("KEYSTROKE_INT8_KERNEL", "torch")
    assert native.native_kernel(True) is False
    monkeypatch.setattr(native, "_choice", {})
    monkeypatch.setenv("KEYSTROKE_INT8_KERNEL", "native")
    assert native.native_kernel(True) is True
    assert native.status()["decode_rows"] == "c"


@pytest.mark.parametrize("d", [64, 256, 640, 896])
def test_the_c_rms_norm_matches_torchs_and_rows_are_independent(d):
    import torch.nn.functional as F
    assert native.step_ops() is not None, native._why_not
    g = torch.Generator().manual_seed(4)
    x = torch.randn(5, d, generator=g) * torch.logspace(-2, 2, 5).unsqueeze(1)
    w = torch.randn(d, generator=g)
    got = native.rms_norm(x, w, 1e-6)
    torch.testing.assert_close(got, F.rms_norm(x, (d,), w, 1e-6), rtol=2e-6, atol=1e-6)
    assert torch.equal(native.rms_norm(x[3:4], w, 1e-6), got[3:4])
    strided = torch.randn(5, 2 * d, generator=g)[:, :d]          # a view (Gemma's q heads of a q/k/v row)
    assert torch.equal(native.rms_norm(strided, w, 1e-6), native.rms_norm(strided.contiguous(), w, 1e-6))
    assert native.rms_norm(x.double(), w.double(), 1e-6) is None


def test_without_the_c_kernel_decode_steps_use_torchs_operations(fresh_native, monkeypatch):
    monkeypatch.setenv("CC", "/bin/false")
    assert native.step_ops() is None
    assert native.rms_norm(torch.randn(2, 64), torch.ones(64), 1e-6) is None
    assert native.step_attention(torch.randn(1, 4, 1, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8), 0.3, None) is None
    assert native.status()["step_ops"] == "torch"


def _prompt_rows16_in_float64(x: torch.Tensor, lin: Int8Linear) -> torch.Tensor:
    """What ks_int16_prompt_rows promises, in torch: int16 rows, exact sums (float64 is exact here)."""
    step = x.abs().amax(-1, keepdim=True).double().clamp(min=1e-30) / 32767.0
    q = (x * (1.0 / step).float()).round().clamp(-32767, 32767)
    y = (q.double() @ lin.weight.double().t()).float() * (lin.scale * step.float())
    return y if lin.bias is None else y + lin.bias


@pytest.mark.parametrize("m,n,k", [(1, 37, 100), (5, 70, 64), (17, 33, 200), (256, 65, 4864), (3, 1, 16), (7, 9, 8200)])
def test_16_bit_prompt_rows_are_exact_and_each_row_stands_alone(m, n, k):
    """Odd weight rows, rows past a multiple of 4, K past a 16-wide step and past one int32 lane's span."""
    assert native._load() is not None, native._why_not
    torch.manual_seed(5)
    lin = Int8Linear.from_float(torch.randn(n, k) * 0.1, torch.randn(n))
    x = torch.randn(m, k) * torch.logspace(-3, 3, m).unsqueeze(1)
    x[0, :3] = 0.0
    got = native.prompt_rows16(x, lin.weight, lin.scale, lin.bias)
    assert torch.equal(got, _prompt_rows16_in_float64(x, lin))
    assert torch.equal(native.prompt_rows16(x[-1:], lin.weight, lin.scale, lin.bias), got[-1:])


def test_16_bit_prompt_rows_do_not_overflow_at_full_scale():
    """Every activation at +-32767 and every weight at +-127 over 8,200 columns: sums past 2^31."""
    lin = Int8Linear(torch.full((2, 8200), 127, dtype=torch.int8), torch.ones(2), None)
    lin.weight[1] = -127
    x = torch.ones(1, 8200)
    got = native.prompt_rows16(x, lin.weight, lin.scale, None)
    assert torch.equal(got, _prompt_rows16_in_float64(x, lin))
    assert got[0, 0] == pytest.approx(8200 * 127 * (1 / 32767) * 32767, rel=1e-6)


def _cpu_has_avx512_vnni() -> bool:
    flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    return all(f in flags for f in ("avx512f", "avx512bw", "avx512vl", "avx512_vnni"))


@pytest.mark.parametrize("m,k", [(17, 896), (64, 4864), (33, 8200), (20, 70)])
def test_the_avx512_prompt_rows_give_the_avx2_rows_bits(m, k):
    """Where the CPU has AVX-512 VNNI, prompt rows use it, with the AVX2 tile's exact sums; elsewhere the
    switch refuses. K past one int32 lane's span, and a last step of 6 (masked) columns."""
    assert native._load() is not None, native._why_not
    torch.manual_seed(7)
    lin = Int8Linear.from_float(torch.randn(45, k) * 0.1, torch.randn(45))
    x = torch.randn(m, k)
    try:
        assert native.use_avx512(False) is False
        avx2 = native.prompt_rows16(x, lin.weight, lin.scale, lin.bias)
        assert native.use_avx512(True) is _cpu_has_avx512_vnni()
        wide = native.prompt_rows16(x, lin.weight, lin.scale, lin.bias)
    finally:
        native.use_avx512(True)
    assert torch.equal(wide, avx2)
    assert torch.equal(wide, _prompt_rows16_in_float64(x, lin))


def test_a_linear_reads_every_row_as_16_bits_in_row_exact_mode():
    torch.manual_seed(6)
    lin = Int8Linear.from_float(torch.randn(40, 96), torch.randn(40))
    lin.phase = Phase()
    x = torch.randn(2, 9, 96)
    lin.phase.row_exact = True
    sixteen = lin(x)
    assert torch.equal(sixteen.view(18, 40), _prompt_rows16_in_float64(x.view(18, 96), lin))
    lin.phase.decode = True                             # decode rows too: the same bits
    assert torch.equal(lin(x), sixteen)
    lin.phase.row_exact = lin.phase.decode = False
    two_rows = lin(x)
    assert not torch.equal(two_rows, sixteen)        # really the other format
    torch.testing.assert_close(two_rows, sixteen, rtol=1e-3, atol=1e-3)
