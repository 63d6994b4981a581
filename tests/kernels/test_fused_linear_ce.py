"""Fused linear cross-entropy against a float64 reference F.cross_entropy(h Wᵀ, y) on odd shapes (N not a multiple
of the chunk, vocab not a power of two, ignore_index present), with and without label smoothing: loss, dH and dW.
Runs on CPU through TRITON_INTERPRET=1."""
import pytest
import torch
import torch.nn.functional as F

from kernels.fused_linear_ce import chunk_rows, fused_linear_cross_entropy

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# (loss rtol, gradient rtol) relative to the float64 reference, by input dtype
TOLERANCE = {torch.float32: (1e-5, 1e-4), torch.bfloat16: (1e-2, 3e-2)}


def reference(h, w, y, ignore_index, smoothing):
    h64 = h.detach().double().requires_grad_()
    w64 = w.detach().double().requires_grad_()
    loss = F.cross_entropy(h64 @ w64.T, y, ignore_index=ignore_index, label_smoothing=smoothing)
    loss.backward()
    return loss, h64.grad, w64.grad


def _relative_error(a, b):
    return float((a.double() - b).norm() / b.norm().clamp(min=1e-30))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("n,d,v,chunk", [(37, 24, 101, 8), (64, 16, 1000, 64), (19, 40, 77, None)])
def test_matches_float64_reference(dtype, smoothing, n, d, v, chunk):
    gen = torch.Generator().manual_seed(n * v)
    h = (torch.randn(n, d, generator=gen) * 0.5).to(dtype).to(DEVICE).requires_grad_()
    w = (torch.randn(v, d, generator=gen) * 0.5).to(dtype).to(DEVICE).requires_grad_()
    y = torch.randint(0, v, (n,), generator=gen).to(DEVICE)
    y[::5] = -100  # ignore_index present
    loss = fused_linear_cross_entropy(h, w, y, label_smoothing=smoothing, chunk_rows_=chunk)
    (loss * 2.0).backward()  # a non-unit incoming gradient
    ref_loss, ref_dh, ref_dw = reference(h, w, y, -100, smoothing)
    loss_tol, grad_tol = TOLERANCE[dtype]
    assert abs(float(loss) - float(ref_loss)) <= loss_tol * abs(float(ref_loss))
    assert _relative_error(h.grad, 2.0 * ref_dh) <= grad_tol
    assert _relative_error(w.grad, 2.0 * ref_dw) <= grad_tol
    assert not torch.isnan(h.grad).any() and not torch.isnan(w.grad).any()


def test_all_ignored_rows_give_zero_loss_and_gradients():
    h = torch.randn(6, 8, device=DEVICE, requires_grad=True)
    w = torch.randn(11, 8, device=DEVICE, requires_grad=True)
    loss = fused_linear_cross_entropy(h, w, torch.full((6,), -100, device=DEVICE))
    loss.backward()
    assert float(loss) == 0.0 and float(h.grad.abs().sum()) == 0.0 and float(w.grad.abs().sum()) == 0.0


def test_no_grad_path_computes_the_loss_only():
    h, w = torch.randn(9, 8, device=DEVICE), torch.randn(13, 8, device=DEVICE)
    y = torch.randint(0, 13, (9,), device=DEVICE)
    with torch.no_grad():
        loss = fused_linear_cross_entropy(h, w, y, chunk_rows_=4)
    torch.testing.assert_close(loss, F.cross_entropy(h @ w.T, y))


def test_chunk_budget():
    rows = chunk_rows(8192, 128256, 4096, 0.02)
    assert rows * 128256 * 4 <= 0.02 * (8192 + 128256) * 4096 * 2 and rows >= 1


def test_plain_torch_path_matches_the_kernel(monkeypatch):
    """CPU jobs without the interpreter take the plain-torch row computation: same numbers."""
    from kernels import fused_linear_ce as module

    gen = torch.Generator().manual_seed(3)
    z = torch.randn(7, 45, generator=gen, dtype=torch.float32)
    y = torch.tensor([1, -100, 44, 0, 3, -100, 9])
    kernel_z, torch_z = z.clone().to(DEVICE), z.clone()
    kernel_loss = module.ce_rows(kernel_z, y.to(DEVICE), -100, 0.1, 0.2, True)
    torch_loss = module._ce_rows_torch(torch_z, y, -100, 0.1, 0.2, True)
    torch.testing.assert_close(kernel_loss.cpu(), torch_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(kernel_z.cpu(), torch_z, rtol=1e-5, atol=1e-7)


def test_benchmark_writes_rows(tmp_path, monkeypatch):
    from harness.results import read_rows
    from kernels import bench_fused_linear_ce, benchmark

    monkeypatch.setattr(benchmark, "PROJECT_ROOT", tmp_path)
    bench_fused_linear_ce.main(["--tokens", "64", "--hidden", "16", "--vocab", "300", "--dtype", "fp32",
                                "--repeats", "2", "--device", "cpu"])
    rows = read_rows(tmp_path / "results" / "runs" / "kernels" / "fused_linear_ce.rows.jsonl")
    assert {r["variant"] for r in rows} == {"eager", "ours_memory", "ours_speed"}
    assert all(r["status"] == "ok" and r["step_ms"] > 0 and r["bound_bytes"] == (64 + 300) * 16 * 2 for r in rows)
