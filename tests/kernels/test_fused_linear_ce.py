"""Fused linear cross-entropy against a float64 reference F.cross_entropy(h Wᵀ, y) on odd shapes (N not a multiple
of the tile's rows, vocab not a multiple of its columns nor a power of two, ignore_index present), with and without
label smoothing, with whole-row tiles and vocabulary-sliced tiles: loss, dH and dW. Runs on CPU through
TRITON_INTERPRET=1."""
import pytest
import torch
import torch.nn.functional as F

from membench_kernels import fused_linear_ce as module
from membench_kernels.fused_linear_ce import COLS_ALIGN, SMALL_COLS_ALIGN, fused_linear_cross_entropy, tile_shape

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
                                        (50, 8, 130, (64, 40)), (50, 40, 130, (8, 130))])
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


@pytest.mark.parametrize("vocab,budget,whole_rows,align", [(128256, 0.02, False, COLS_ALIGN),
                                                            (32000, 0.016, False, SMALL_COLS_ALIGN),
                                                            (128256, 0.28, True, None)])
def test_tile_budget(vocab, budget, whole_rows, align):
    rows, cols = tile_shape(8192, vocab, 4096, budget, itemsize=2)
    assert rows * cols * 2 <= budget * (8192 + vocab) * 4096 * 2 and rows >= 512
    assert (cols == vocab) == whole_rows
    assert whole_rows or cols % align == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_plain_torch_path_matches_the_kernels(dtype, monkeypatch):
    """CPU jobs without the interpreter take the plain-torch tile computations: same numbers (both in fp32 inside,
    also for a float64 model, whose statistics are float64)."""
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(7, 45, generator=gen, dtype=dtype)
    y = torch.tensor([1, -100, 44, 60, 3, -100, 9])  # 60 lies outside this tile (columns 20..64)
    results = []
    for use_kernel in (True, False):
        tile = z.clone().to(DEVICE if use_kernel else "cpu")
        targets = y.to(tile.device)
        stats = torch.zeros(4, 7, dtype=dtype, device=tile.device)
        stats[0] = -float("inf")
        tile_max = torch.empty(7, dtype=dtype, device=tile.device)
        grad_scale = torch.tensor(0.2, dtype=dtype, device=tile.device)
        if use_kernel:
            module._tile_stats_kernel[(7,)](tile, 45, targets, stats, 7, 20, tile_max, BLOCK_V=16, STORE_TILE_MAX=True,
                                            LOGIT_SUM=True)
            module._tile_grad_kernel[(7,)](tile, 45, targets, stats, 7, 20, 200, -100, 0.1, grad_scale, BLOCK_V=16)
        else:  # under the interpreter tile_stats would run the kernel too
            monkeypatch.setattr(module, "triton_runs_on", lambda x: False)
            module.tile_stats(tile, targets, stats, 20, tile_max)
            module.tile_grad(tile, targets, stats, 20, 200, -100, 0.1, grad_scale)
        results.append((stats.cpu(), tile.cpu(), tile_max.cpu()))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    assert torch.equal(results[0][2], results[1][2]) and torch.equal(results[1][2], z.float().amax(dim=1).to(dtype))
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-5, atol=1e-7)


def _filtered_case(n, d, v, scale, tile, filter_eps, monkeypatch):
    """Loss and gradients with filter_eps, the float64 reference's, and the slices kept per row tile."""
    from membench_kernels import fused_linear_ce as module

    kept = []
    record = module.kept_slices
    monkeypatch.setattr(module, "kept_slices", lambda *args: kept.append(record(*args)) or kept[-1])
    gen = torch.Generator().manual_seed(v)
    h = (torch.randn(n, d, generator=gen) * scale).to(DEVICE).requires_grad_()
    w = (torch.randn(v, d, generator=gen) * scale).to(DEVICE).requires_grad_()
    y = torch.randint(0, v, (n,), generator=gen).to(DEVICE)
    y[::7] = -100
    loss = fused_linear_cross_entropy(h, w, y, tile=tile, filter_eps=filter_eps)
    loss.backward()
    return (loss, h.grad, w.grad), reference(h, w, y, -100, 0.0), kept


def test_filtering_nothing_gives_the_exact_gradient(monkeypatch):
    ours, ref, kept = _filtered_case(45, 16, 300, 0.5, (16, 64), 1e-30, monkeypatch)
    assert all(all(k) for k in kept) and len(kept) == 3  # three row tiles, every slice kept
    assert abs(float(ours[0]) - float(ref[0])) <= 1e-5 * abs(float(ref[0]))
    assert _relative_error(ours[1], ref[1]) <= 1e-4 and _relative_error(ours[2], ref[2]) <= 1e-4


def test_filtering_skips_slices_whose_softmax_is_below_eps_and_keeps_the_targets(monkeypatch):
    """Peaked logits (large weights): most slices of a row tile hold only softmax values below eps and are skipped;
    the targets' −1 there is added sparsely. The gradients stay within what was dropped: under eps per value."""
    ours, ref, kept = _filtered_case(40, 32, 2000, 1.5, (4, 64), 2**-12, monkeypatch)
    skipped = sum(not k for tile in kept for k in tile)
    assert 0 < skipped < sum(len(tile) for tile in kept)
    assert abs(float(ours[0]) - float(ref[0])) <= 1e-5 * abs(float(ref[0]))  # the loss is never filtered
    assert _relative_error(ours[1], ref[1]) <= 1e-3 and _relative_error(ours[2], ref[2]) <= 1e-3


def test_filtering_uniform_logits_skips_everything_but_the_targets(monkeypatch):
    """Nearly uniform softmax over 5000 entries (each ≈ 2e-4 < eps = bf16 eps / 32, cut-cross-entropy's default):
    every slice is skipped, the gradient is the targets' part alone, dH_i = −W_{y_i} / n_valid — off from the exact one
    by the dropped softmax part, a few per cent here."""
    ours, ref, kept = _filtered_case(24, 16, 5000, 0.01, (24, 1024), 2**-12, monkeypatch)
    assert not any(k for tile in kept for k in tile)
    assert _relative_error(ours[1], ref[1]) <= 5e-2 and _relative_error(ours[2], ref[2]) <= 5e-2


@pytest.mark.parametrize("eps,smoothing", [(2**-12, 0.1), (0.0, 0.0), (1.5, 0.0)])
def test_filtering_is_refused_where_it_cannot_apply(eps, smoothing):
    h, w = torch.randn(5, 8, device=DEVICE), torch.randn(13, 8, device=DEVICE)
    with pytest.raises(ValueError, match="filter_eps"):
        fused_linear_cross_entropy(h, w, torch.zeros(5, dtype=torch.long, device=DEVICE), label_smoothing=smoothing,
                                   filter_eps=eps)


@pytest.mark.parametrize("n,targets,w_dtype,message", [(0, 0, torch.float32, "no tokens"),
                                                        (5, 4, torch.float32, "5 hidden rows but 4 targets"),
                                                        (5, 5, torch.float64, "hidden is torch.float32")])
def test_bad_input_is_refused_with_the_reason(n, targets, w_dtype, message):
    h, w = torch.randn(n, 8, device=DEVICE), torch.randn(13, 8, device=DEVICE, dtype=w_dtype)
    with pytest.raises(ValueError, match=message):
        fused_linear_cross_entropy(h, w, torch.zeros(targets, dtype=torch.long, device=DEVICE))


@pytest.mark.parametrize("vocab,cols,starts", [(101, 32, [0, 5, 37, 69]), (96, 32, [0, 32, 64]), (20, 32, [0])])
def test_vocab_slices_put_the_short_remainder_first(vocab, cols, starts):
    """Pass 2 reuses the last slice's logits from pass 1: a full-width slice, so the reuse saves a full matmul."""
    from membench_kernels.fused_linear_ce import vocab_slices

    assert vocab_slices(vocab, cols) == starts


@pytest.mark.parametrize("n,hidden_dim,vocab,rows,cols", [(8192, 4096, 128256, 2048, 4096), (8192, 4096, 128256, 1176, 128256),
                                                       (8192, 4096, 128256, 1285, 128256),
                                                       (8192, 4096, 32000, 2048, 1280), (8192, 4096, 32000, 1389, 32000),
                                                       (8192, 4096, 256000, 1141, 256000), (37, 24, 101, 8, 32),
                                                       (50, 40, 130, 8, 130), (300, 70, 1000, 16, 64)])
def test_first_row_tile_logits_survive_until_pass_2_reads_them(n, hidden_dim, vocab, rows, cols):
    """Pass 1 stores every slice's logits of the first row tile in the tile buffer or in dW's storage; pass 2 then goes
    down the slices, reading slice k's logits and writing dW's rows c0..c1 (elements D·c0 .. D·c1): each home must
    lie below every write made until it is read, homes must not overlap, the slices must cover the vocabulary. Checked
    on the homes' element ranges (meta tensors: no memory at LLaMA-3 shapes)."""
    plan = module.first_row_tile(n, vocab, hidden_dim, rows, rows * cols)
    if (n, rows) == (8192, 1176):  # LLaMA-3 speed mode: 3 whole-row tiles after the first, not 7 in all
        assert plan[0] == 4672 and len(module.row_tiles(n, plan[0], rows)) == 4
    if (n, vocab, rows) == (8192, 128256, 2048):  # memory mode: half the tokens, slices as large as the tile
        assert plan[0] == 4096 and max(c1 - c0 for c0, c1 in plan[1]) == 2048
    first, bounds = plan
    assert first > rows or cols < vocab
    assert [c0 for c0, _ in bounds] == [0, *(c1 for _, c1 in bounds[:-1])] and bounds[-1][1] == vocab
    tile = torch.empty(rows * cols, device="meta")
    dw = torch.empty(vocab * hidden_dim, device="meta")
    homes = module.first_tile_homes(bounds, first, tile, dw)
    assert len(homes) == len(bounds)
    ranges = {k: (home.storage_offset(), home.storage_offset() + home.numel()) for k, home in homes.items()}
    for k, (c0, c1) in enumerate(bounds):
        assert ranges[k][1] - ranges[k][0] == first * (c1 - c0)
        assert ranges[k][1] <= (tile.numel() if k == 0 else dw.numel())
    in_dw = sorted(r for k, r in ranges.items() if k > 0)
    assert all(end <= start for (_, end), (start, _) in zip(in_dw, in_dw[1:], strict=False))  # no overlap
    for k in range(1, len(bounds)):  # read while dW's rows from c0 up are written (this slice's and those above)
        assert ranges[k][1] <= hidden_dim * bounds[k][0]


@pytest.mark.parametrize("n,hidden_dim,vocab,rows,cols", [(300, 7, 1000, 16, 64), (64, 16, 1000, 24, 1000)])
def test_no_first_row_tile_where_it_gains_nothing(n, hidden_dim, vocab, rows, cols):
    """More rows than D with a tile too small to make up the difference: no slice fits below dW's writes; whole rows
    already more than D (plus half the tile's rows): the regular tile is as large."""
    assert module.first_row_tile(n, vocab, hidden_dim, rows, rows * cols) is None


@pytest.mark.parametrize("first", [8, 13, 20])
def test_every_first_row_tile_size_gives_the_reference_gradients(first):
    """Speed mode times a few first-tile sizes (tuned_first_rows) and keeps the fastest: each must be exact."""
    gen = torch.Generator().manual_seed(first)
    h = torch.randn(50, 16, generator=gen).to(DEVICE)
    w = torch.randn(130, 16, generator=gen).to(DEVICE)
    y = torch.randint(0, 130, (50,), generator=gen).to(DEVICE)
    y[::6] = -100
    assert module.first_row_tile(50, 130, 16, 6, 6 * 130, first)[0] == first
    loss, dh, dw = module._fused_forward(h, w, y, -100, 0.0, 6, 130, None, True, True, first=first)
    ref_loss, ref_dh, ref_dw = reference(h, w, y, -100, 0.0)
    assert abs(float(loss) - float(ref_loss)) <= 1e-5 * abs(float(ref_loss))
    assert _relative_error(dh, ref_dh) <= 1e-4 and _relative_error(dw, ref_dw) <= 1e-4


def test_first_row_tile_tuning_keeps_the_fastest_fraction_for_every_token_count(monkeypatch):
    monkeypatch.setattr(module, "_TUNED_FIRST_ROWS", {})
    candidates = module.first_rows_candidates(8192, 128256, 4096, 1176, 1176 * 128256)
    sizes = [r for _, r in candidates]
    assert len(candidates) == 7 and sizes == sorted(sizes) and sizes[0] > 4096  # every one slices
    fake_ms = dict(zip(sizes, [5.0, 3.0, 4.0, 6.0, 3.5, 7.0, 8.0], strict=True))
    runs = []
    pick = module.tuned_first_rows(("model",), candidates, runs.append, time_ms=lambda fn: fn() or fake_ms[runs[-1]])
    assert pick == sizes[1] and len(runs) == 3 * len(candidates)  # a warm-up round, two timed rounds
    assert module.tuned_first_rows(("model",), candidates, runs.append) == pick and len(runs) == 21  # kept
    # another batch length (dynamic padding): the same fraction of its own tile's rows, no steps timed again
    other = module.first_rows_candidates(8000, 128256, 4096, 1174, 1174 * 128256)
    assert module.tuned_first_rows(("model",), other, runs.append) == dict(other)[candidates[1][0]] != pick
    assert len(runs) == 21


def test_row_tiles_even_out_the_later_tiles():
    assert module.row_tiles(8192, 4672, 1176) == [(0, 4672), (4672, 5845), (5845, 7018), (7018, 8192)]
    assert module.row_tiles(37, 8, 8) == [(0, 8), (8, 15), (15, 22), (22, 29), (29, 37)]
    assert module.row_tiles(20, 20, 8) == [(0, 20)]


def test_spare_homes_fill_dh_rows_after_the_tile_first_fit():
    bounds = module.slice_bounds(101, 32)  # widths 5, 32, 32, 32
    homes = module.spare_homes(bounds, 8, torch.empty(8 * 40))
    assert sorted(homes) == [0, 1] and homes[1].storage_offset() == 8 * 5
    assert module.spare_homes(bounds, 8, None) == {}


@pytest.mark.parametrize("filter_eps", [None, 0.2])  # 0.2: 3 of 8 slices skipped per row tile
@pytest.mark.parametrize("frozen", ["weight", "hidden"])
def test_a_frozen_input_gets_no_gradient_made(frozen, filter_eps):
    """A frozen LM head (LoRA, QLoRA) needs dH only, a frozen trunk dW only: the other gradient is neither allocated
    (no buffer of its size among the live tensors) nor returned, and the one asked for is the one computed when both
    are (with filtering too: its sparse target terms)."""
    from harness.probes import LiveTensorProbe

    gen = torch.Generator().manual_seed(5)
    h = torch.randn(16, 32, generator=gen).to(DEVICE)
    w = torch.randn(2000, 32, generator=gen).to(DEVICE)
    y = torch.randint(0, 2000, (16,), generator=gen).to(DEVICE)
    y[3] = -100
    both = [h.clone().requires_grad_(), w.clone().requires_grad_()]
    fused_linear_cross_entropy(*both, y, tile=(8, 256), filter_eps=filter_eps).backward()
    h.requires_grad_(frozen != "hidden")
    w.requires_grad_(frozen != "weight")
    probe = LiveTensorProbe()
    probe.register([h, w, y])  # the inputs (their views' storages) are not new bytes
    with probe:
        fused_linear_cross_entropy(h, w, y, tile=(8, 256), filter_eps=filter_eps).backward()
    made = probe.peak - sum(t.numel() * t.element_size() for t in (h, w, y))
    kept, dropped, expected = (h, w, both[0].grad) if frozen == "weight" else (w, h, both[1].grad)
    assert dropped.grad is None
    # fp32 tolerance: with dW made, the first row tile is larger (first_row_tile), so the sums go in another order
    torch.testing.assert_close(kept.grad, expected, rtol=1e-4, atol=1e-8)
    if frozen == "weight":  # the gradient asked for is far smaller than the one dropped: none of its size was made
        assert made < dropped.numel() * dropped.element_size()
    else:
        assert made >= kept.numel() * kept.element_size()  # the probe sees the gradient that is made
