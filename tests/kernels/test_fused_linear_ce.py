"""Fused linear cross-entropy against a float64 reference F.cross_entropy(h Wᵀ, y) on odd shapes (N not a multiple
of the tile's rows, vocab not a multiple of its columns nor a power of two, ignore_index present), with and without
label smoothing, with whole-row tiles and vocabulary-sliced tiles: loss, dH and dW. Runs on CPU through
TRITON_INTERPRET=1."""
import pytest
import torch
import torch.nn.functional as F

from kernels.fused_linear_ce import fused_linear_cross_entropy, tile_shape

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
@pytest.mark.parametrize("n,d,v,tile", [(37, 24, 101, (8, 32)), (64, 16, 1000, (24, 1000)), (19, 40, 77, None),
                                        (50, 8, 130, (64, 40))])
def test_matches_float64_reference(dtype, smoothing, n, d, v, tile):
    gen = torch.Generator().manual_seed(n * v)
    h = (torch.randn(n, d, generator=gen) * 0.5).to(dtype).to(DEVICE).requires_grad_()
    w = (torch.randn(v, d, generator=gen) * 0.5).to(dtype).to(DEVICE).requires_grad_()
    y = torch.randint(0, v, (n,), generator=gen).to(DEVICE)
    y[::5] = -100  # ignore_index present
    loss = fused_linear_cross_entropy(h, w, y, label_smoothing=smoothing, tile=tile)
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
        loss = fused_linear_cross_entropy(h, w, y, tile=(4, 5))
    torch.testing.assert_close(loss, F.cross_entropy(h @ w.T, y))


@pytest.mark.parametrize("budget,whole_rows", [(0.02, False), (0.28, True)])
def test_tile_budget(budget, whole_rows):
    rows, cols = tile_shape(8192, 128256, 4096, budget, itemsize=2)
    assert rows * cols * 2 <= budget * (8192 + 128256) * 4096 * 2 and rows >= 512
    assert (cols == 128256) == whole_rows
    assert whole_rows or cols % 128 == 0  # aligned leading dimension for cuBLAS


def test_plain_torch_path_matches_the_kernels():
    """CPU jobs without the interpreter take the plain-torch tile computations: same numbers."""
    from kernels import fused_linear_ce as module

    gen = torch.Generator().manual_seed(3)
    z = torch.randn(7, 45, generator=gen, dtype=torch.float32)
    y = torch.tensor([1, -100, 44, 60, 3, -100, 9])  # 60 lies outside this tile (columns 20..64)
    results = []
    for use_kernel in (True, False):
        tile = z.clone().to(DEVICE if use_kernel else "cpu")
        targets = y.to(tile.device)
        stats = torch.zeros(4, 7, device=tile.device)
        stats[0] = -float("inf")
        if use_kernel:
            module._tile_stats_kernel[(7,)](tile, 45, targets, stats, 7, 20, BLOCK_V=16)
            lse = stats[0] + stats[1].log()
            module._tile_grad_kernel[(7,)](tile, 45, targets, lse, 20, 200, -100, 0.1, 0.2, BLOCK_V=16)
        else:
            module.tile_stats(tile, targets, stats, 20)
            lse = stats[0] + stats[1].log()
            module.tile_grad(tile, targets, lse, 20, 200, -100, 0.1, 0.2)
        results.append((stats.cpu(), tile.cpu()))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-5, atol=1e-7)


def test_benchmark_writes_rows(tmp_path, monkeypatch):
    from harness.results import read_rows
    from kernels import bench_fused_linear_ce, benchmark

    monkeypatch.setattr(benchmark, "PROJECT_ROOT", tmp_path)
    bench_fused_linear_ce.main(["--tokens", "64", "--hidden", "16", "--vocab", "300", "--dtype", "fp32",
                                "--repeats", "2", "--device", "cpu"])
    rows = read_rows(tmp_path / "results" / "runs" / "kernels" / "fused_linear_ce.rows.jsonl")
    assert {r["variant"] for r in rows} == {"eager", "ours_memory", "ours_speed"}
    assert all(r["status"] == "ok" and r["step_ms"] > 0 and r["bound_bytes"] == (64 + 300) * 16 * 2 for r in rows)


@pytest.mark.parametrize("n,targets,w_dtype,message", [(0, 0, torch.float32, "no tokens"),
                                                        (5, 4, torch.float32, "5 hidden rows but 4 targets"),
                                                        (5, 5, torch.float64, "hidden is torch.float32")])
def test_bad_input_is_refused_with_the_reason(n, targets, w_dtype, message):
    h, w = torch.randn(n, 8, device=DEVICE), torch.randn(13, 8, device=DEVICE, dtype=w_dtype)
    with pytest.raises(ValueError, match=message):
        fused_linear_cross_entropy(h, w, torch.zeros(targets, dtype=torch.long, device=DEVICE))
