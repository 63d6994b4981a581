"""Fused linear cross-entropy: loss = CE(h Wᵀ, y) and its gradients dH, dW without materializing the N × V logits.

The logits are computed one tile of R tokens × C vocabulary entries at a time, in the inputs' dtype (bf16 logits,
as the unfused graph has them; every reduction below is in fp32), into one reused tile buffer:
  pass 1, per vocabulary tile: z = h_R W_Cᵀ; a Triton program per row merges the tile into the row's running
          max, sum of exp, target logit and (with label smoothing) logit sum, online, so after the last tile
              ℓ = lse − (1 − ε) z_y − ε · mean(z)          (ε = label smoothing; rows with y = ignore_index give 0)
  pass 2, per vocabulary tile, last first: z again (a fourth matmul; not for the last tile, still in the buffer,
          and a full-width one: the short remainder slice comes first), overwritten in place by
              dz = (softmax(z) − (1 − ε) onehot(y) − ε / V) / n_valid,
          then dH_R += dz W_C and dW_C += dzᵀ h_R (accumulated in the gradients' own storage: no fp32 copies).
When a tile holds whole rows (C = V) pass 2 reuses pass 1's logits: three matmuls, like the unfused graph.
Not recomputed either: logits that can wait in memory that is there anyway. The first row tile is larger (about D
tokens or more, first_row_tile) and keeps all its logits, in the tile and in dW's own storage, which its pass 2
fills from the last rows down, after reading them; the later row tiles keep some slices in dH's rows not yet
written (spare_homes). In speed mode that leaves fewer row tiles, each of which re-reads and re-writes all of dW.
The gradients are produced in the forward pass and scaled by the incoming gradient in backward (the loss is
terminal). Memory beyond the two gradients: the R × C tile plus four floats per row. Nothing in the forward waits
on the GPU (n_valid and the loss stay device tensors), so the host queues the next tiles while the GPU works.

Two operating points (methods/fused_ce.py BUDGET, harness/benches/bench_fused_linear_ce.py), by the tile's bytes as a
fraction of the gradients' (N + V) · D · 2 bytes: memory mode 1.6 % (tiles of 2048 tokens × a slice of the
vocabulary, four matmuls but for the logits with a home), speed mode 29.5 % (whole rows but in the first tile, three
matmuls). Optional gradient filtering (filter_eps, as cut-cross-entropy's default): pass 1 also keeps each row's
largest logit per vocabulary slice, and pass 2 skips a slice where softmax < filter_eps for every row of the tile —
its logits are not recomputed and its two gradient matmuls not run — then adds the targets' −1 that fell in skipped
slices sparsely (an approximate gradient: each dropped value is below filter_eps / n_valid).
Targets, figures and what was measured not to help (the next row tile's pass 1 on a side stream, whose matmuls slow
this one's; the row kernels in a Triton GEMM's epilogue, slower than cuBLAS plus a separate kernel): docs/kernels.md.
"""
from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from membench_kernels.common import cuda_time_ms, triton_runs_on

MIN_FULL_ROWS = 512  # below this many whole rows per tile, slice the vocabulary instead (matmul efficiency)
# tokens per tile when the vocabulary is sliced: every row tile re-reads and re-writes all of dW, every vocabulary
# slice all of dH_R, so the tile is cut about evenly between the two (bench_fused_linear_ce times 1024 / 2048 / 4096)
TILE_ROWS = 2048
# sliced tiles' columns: a multiple. cuBLAS's 256-wide tiles then divide them, and at 2048 rows they fill whole waves
# of an H100/H200's 132 SMs: at LLaMA-3 shapes 2048 × 4096 ran 3.7 % faster than 2048 × 3968 (one interleaved run).
# Below 4 × COLS_ALIGN columns (small budgets: vocab 32000) no shape fills a wave; a multiple of SMALL_COLS_ALIGN
# keeps the tile near its budget (2048 × 1280 ran 15.9 ms there, 2048 × 1024 19.2 ms)
COLS_ALIGN, SMALL_COLS_ALIGN = 1024, 128


@triton.jit
def _tile_stats_kernel(z_ptr, cols, y_ptr, stats_ptr, stats_stride, col_offset, tile_max_ptr, BLOCK_V: tl.constexpr,
                       STORE_TILE_MAX: tl.constexpr, LOGIT_SUM: tl.constexpr):
    """Merge one row of a logits tile into that row's running (max, sum of exp, target logit, logit sum); with
    STORE_TILE_MAX, also store the row's largest logit in this tile. The logit sum (label smoothing's) only with
    LOGIT_SUM: each block-wide reduction is a barrier, and a program that waits on them is what bounds this kernel."""
    row = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + row * cols
    target = tl.load(y_ptr + row) - col_offset  # the target's column in this tile (may be outside it)
    in_tile = (target >= 0) & (target < cols)
    target_logit = tl.load(stats_ptr + 2 * stats_stride + row)
    target_logit += tl.load(z_row + tl.where(in_tile, target, 0), mask=in_tile, other=0.0).to(tl.float32)
    offsets = tl.arange(0, BLOCK_V)
    running_max = tl.load(stats_ptr + row)
    running_sum = tl.load(stats_ptr + stats_stride + row)
    logit_sum = tl.load(stats_ptr + 3 * stats_stride + row)
    tile_max = -float("inf")
    for start in range(0, cols, BLOCK_V):
        col = start + offsets
        mask = col < cols
        z = tl.load(z_row + col, mask=mask, other=-float("inf")).to(tl.float32)
        tile_max = tl.maximum(tile_max, tl.max(z, axis=0))
        new_max = tl.maximum(running_max, tile_max)
        running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(z - new_max), axis=0)
        running_max = new_max
        if LOGIT_SUM:
            logit_sum += tl.sum(tl.where(mask, z, 0.0), axis=0)
    tl.store(stats_ptr + row, running_max)
    tl.store(stats_ptr + stats_stride + row, running_sum)
    tl.store(stats_ptr + 2 * stats_stride + row, target_logit)
    if LOGIT_SUM:
        tl.store(stats_ptr + 3 * stats_stride + row, logit_sum)
    if STORE_TILE_MAX:
        tl.store(tile_max_ptr + row, tile_max)


@triton.jit
def _tile_grad_kernel(z_ptr, cols, y_ptr, stats_ptr, stats_stride, col_offset, vocab, ignore_index, smoothing,
                      grad_scale_ptr, BLOCK_V: tl.constexpr):
    """Overwrite one row of a logits tile with grad_scale · dℓ/dz (zero for ignored rows), the row's log-sum-exp
    from its (max, sum of exp)."""
    row = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + row * cols
    y = tl.load(y_ptr + row)
    scale = tl.where(y != ignore_index, tl.load(grad_scale_ptr), 0.0)
    target = y - col_offset
    lse = tl.load(stats_ptr + row) + tl.log(tl.load(stats_ptr + stats_stride + row))
    offsets = tl.arange(0, BLOCK_V)
    for start in range(0, cols, BLOCK_V):
        col = start + offsets
        mask = col < cols
        z = tl.load(z_row + col, mask=mask, other=0.0).to(tl.float32)
        grad = tl.exp(z - lse) - smoothing / vocab - tl.where(col == target, 1.0 - smoothing, 0.0)
        tl.store(z_row + col, (grad * scale).to(z_ptr.dtype.element_ty), mask=mask)


def tile_stats(z: torch.Tensor, targets: torch.Tensor, stats: torch.Tensor, col_offset: int,
               tile_max: torch.Tensor | None = None, logit_sum: bool = True) -> None:
    """stats (4 × rows, fp32): running max, sum of exp, target logit, logit sum (left as it is unless logit_sum);
    updated with the tile z. tile_max (rows, fp32), when given, receives each row's largest logit in z."""
    rows, cols = z.shape
    if triton_runs_on(z):
        _tile_stats_kernel[(rows,)](z, cols, targets, stats, stats.stride(0), col_offset, tile_max,
                                    BLOCK_V=min(4096, triton.next_power_of_2(cols)),
                                    STORE_TILE_MAX=tile_max is not None, LOGIT_SUM=logit_sum)
        return
    z32 = z.float()
    row_max = z32.amax(dim=1)
    if tile_max is not None:
        tile_max.copy_(row_max)
    new_max = torch.maximum(stats[0], row_max)
    stats[1] = stats[1] * (stats[0] - new_max).exp() + (z32 - new_max[:, None]).exp().sum(dim=1)
    stats[0] = new_max
    if logit_sum:
        stats[3] += z32.sum(dim=1)
    local = targets - col_offset
    inside = (local >= 0) & (local < cols)
    stats[2] += torch.where(inside, z32.gather(1, local.clamp(0, cols - 1)[:, None])[:, 0], 0.0)


def tile_grad(z: torch.Tensor, targets: torch.Tensor, stats: torch.Tensor, col_offset: int, vocab: int,
              ignore_index: int, smoothing: float, grad_scale: torch.Tensor) -> None:
    """Overwrite the tile z with grad_scale · dℓ/dz; stats as tile_stats left them after the whole vocabulary,
    grad_scale a one-element tensor (a device value: no host synchronization)."""
    rows, cols = z.shape
    if triton_runs_on(z):
        _tile_grad_kernel[(rows,)](z, cols, targets, stats, stats.stride(0), col_offset, vocab, ignore_index,
                                   smoothing, grad_scale, BLOCK_V=min(4096, triton.next_power_of_2(cols)))
        return
    grad = (z.float() - log_sum_exp(stats).float()[:, None]).exp_().sub_(smoothing / vocab)  # fp32, as the kernel
    local = targets - col_offset
    inside = (local >= 0) & (local < cols)
    grad.scatter_add_(1, local.clamp(0, cols - 1)[:, None], torch.where(inside, smoothing - 1.0, 0.0)[:, None])
    z.copy_(grad.mul_(torch.where(targets != ignore_index, grad_scale, 0.0)[:, None]))


def log_sum_exp(stats: torch.Tensor) -> torch.Tensor:
    return stats[0] + stats[1].log()


def vocab_slices(vocab: int, cols: int) -> list[int]:
    """Start column of each vocabulary slice (cols wide), the short remainder first: pass 2 begins with the last
    slice, whose logits pass 1 left in the tile, so that reuse saves a full-width matmul."""
    first = vocab % cols or cols
    return [0, *range(first, vocab, cols)]


def slice_bounds(vocab: int, cols: int) -> list[tuple[int, int]]:
    """(first column, end) of each vocabulary slice, in vocab_slices' order."""
    starts = vocab_slices(vocab, cols)
    return list(zip(starts, [*starts[1:], vocab], strict=True))


def tile_shape(n_tokens: int, vocab: int, hidden: int, budget_fraction: float, itemsize: int,
               tile_rows: int = TILE_ROWS) -> tuple[int, int]:
    """(rows, cols) of the logits tile so that its bytes stay within budget_fraction of the gradients' bytes;
    whole rows where at least MIN_FULL_ROWS fit, else tile_rows tokens × a vocabulary slice."""
    elements = int(budget_fraction * (n_tokens + vocab) * hidden * 2) // itemsize
    full_rows = elements // vocab
    if full_rows >= min(MIN_FULL_ROWS, n_tokens):
        return min(full_rows, n_tokens), vocab
    rows = min(n_tokens, tile_rows)
    cols = elements // rows
    align = COLS_ALIGN if cols >= 4 * COLS_ALIGN else SMALL_COLS_ALIGN
    cols = max(SMALL_COLS_ALIGN, cols // align * align)  # tiny problems exceed the budget, not crawl
    return rows, min(vocab, cols)


def first_row_tile(n_tokens: int, vocab: int, hidden_dim: int, rows: int, tile_elements: int, first: int | None = None,
                   align: int = SMALL_COLS_ALIGN) -> tuple[int, list[tuple[int, int]]] | None:
    """Rows R and vocabulary slices (ascending) of a first row tile whose logits all wait from pass 1 to pass 2, none
    recomputed, in memory that is there anyway: columns 0..c_b in the tile buffer (R·c_b ≤ its elements), each slice
    [c0, c1) above them in dW's storage, not yet written, at elements R·(c0 − c_b) .. R·(c1 − c_b) (first_tile_homes).
    Pass 2 writes dW's rows c0..c1 (elements D·c0 .. D·c1) going down the slices, so a slice's logits are read before
    any write reaches them when R·(c1 − c_b) ≤ D·c0; each slice is as wide as that allows, from c_b up.
    R is `first` where given (speed mode times a few on CUDA: tuned_first_rows), else D plus half the whole rows the
    tile holds, rounded down to 64 (all of them would leave the top slice no width). At LLaMA-3 shapes memory mode's
    first tile is 4096 tokens (half of them; the later tiles recompute most slices); speed mode's about 4700–5200,
    with 3 whole-row tiles after it instead of 6 in all: 3 fewer re-reads of dW. None when the tile would gain nothing
    (no more rows than a regular one, which holds whole rows) or no slicing fits."""
    whole_rows = tile_elements // vocab
    if first is None:
        first = min(n_tokens, max(rows, hidden_dim + whole_rows // 2 // 64 * 64))
    if first <= rows and whole_rows >= rows:
        return None
    align = align if tile_elements // first >= align else 1
    in_tile = min(vocab, tile_elements // first // align * align)  # c_b
    if in_tile == 0:
        return None
    bounds = [(0, in_tile)]
    while bounds[-1][1] < vocab:
        c0 = bounds[-1][1]
        c1 = min(vocab, (in_tile + hidden_dim * c0 // first) // align * align)
        if c1 <= c0:
            return None
        bounds.append((c0, c1))
    return first, bounds


def first_tile_homes(bounds: list[tuple[int, int]], rows: int, tile: torch.Tensor,
                     dw_storage: torch.Tensor) -> dict[int, torch.Tensor]:
    """Flat views where the first row tile's logits of each slice (first_row_tile's bounds) wait for pass 2."""
    in_tile = bounds[0][1]
    return {k: tile[:rows * c1] if k == 0 else dw_storage[rows * (c0 - in_tile):rows * (c1 - in_tile)]
            for k, (c0, c1) in enumerate(bounds)}


def spare_homes(bounds: list[tuple[int, int]], rows: int, dh_spare: torch.Tensor | None) -> dict[int, torch.Tensor]:
    """Where a later row tile's logits of some slices (slice_bounds) can wait from pass 1 to pass 2 instead of being
    recomputed there: dh_spare (flat), dH's rows after this row tile, first written by later row tiles; first fit.
    The slices without a home share the tile buffer and are recomputed in pass 2."""
    homes, used = {}, 0
    for k, (c0, c1) in enumerate(bounds):
        size = rows * (c1 - c0)
        if dh_spare is not None and used + size <= dh_spare.numel():
            homes[k] = dh_spare[used:used + size]
            used += size
    return homes


def row_tiles(n_tokens: int, first: int, rows: int) -> list[tuple[int, int]]:
    """(start, end) of each row tile: the first `first` tokens, then the rest in tiles of at most `rows`, evened out
    (no short last tile: a matmul of a few rows runs at a fraction of the speed)."""
    first = min(first, n_tokens)
    rest = n_tokens - first
    count = -(-rest // rows)
    ends = [first + rest * (i + 1) // count for i in range(count)]
    return list(zip([0, first, *ends[:-1]], [first, *ends], strict=True)) if rest else [(0, first)]


def kept_slices(tile_max: torch.Tensor, lse: torch.Tensor, valid: torch.Tensor, filter_eps: float) -> list[bool]:
    """Per vocabulary slice of a row tile: does any valid row hold a softmax value ≥ filter_eps there
    (max logit − lse ≥ log filter_eps)? tile_max: slices × rows. One host synchronization per row tile."""
    margin = torch.where(valid, tile_max - lse, -float("inf"))
    return (margin.amax(dim=1) >= math.log(filter_eps)).tolist()


def add_skipped_targets(grad_hidden: torch.Tensor | None, grad_weight: torch.Tensor | None, h: torch.Tensor,
                        weight: torch.Tensor, y: torch.Tensor, rows: slice, keep: list[bool],
                        bounds: list[tuple[int, int]], ignore_index: int, coef: torch.Tensor, chunk: int = 512) -> None:
    """The −1 of each target's softmax gradient in a skipped slice (slice_bounds), added sparsely for the row tile
    `rows` (h, y): dH_i += coef · W_{y_i}, dW_{y_i} += coef · h_i (each gradient where given), `chunk` rows at a time
    (the gathered rows are a temporary)."""
    starts = torch.tensor([c0 for c0, _ in bounds], device=y.device)
    slice_of = torch.searchsorted(starts, y.clamp(min=0), right=True) - 1
    skipped = ~torch.tensor(keep, device=y.device)[slice_of]
    index = torch.nonzero((y != ignore_index) & skipped).squeeze(1)
    for part in index.split(chunk):
        if grad_hidden is not None:
            grad_hidden[rows].index_add_(0, part, weight[y[part]].mul_(coef))
        if grad_weight is not None:
            grad_weight.index_add_(0, y[part], h[part].mul(coef))


@functools.cache  # asked on every speed-mode call, before the tuned size is looked up
def first_rows_candidates(n_tokens: int, vocab: int, hidden_dim: int, rows: int,
                          tile_elements: int) -> tuple[tuple[int, int], ...]:
    """Speed mode's first row tile sizes to time (tuned_first_rows), as (sixteenths, R): R = D plus 8/16 … 14/16 of
    the whole rows the tile holds, those that slice, one per size. cuBLAS picks its kernels by shape, and the step's
    time does not follow R smoothly: at LLaMA-3 shapes on an H200 (exploratory, four runs), R = 4936–4952 ran
    1.021–1.027 × compile, R = 4928 1.054 × (its later tiles of 1088 rows got 192 × 192 tiles, 4.6 % slower a row
    than the 128 × 272 ones of 1084 rows), R = 4672–4992 otherwise 1.043–1.054 ×."""
    whole_rows = tile_elements // vocab
    sizes = {}
    for sixteenths in range(8, 15):
        r = min(n_tokens, hidden_dim + whole_rows * sixteenths // 16)
        if r not in sizes.values() and first_row_tile(n_tokens, vocab, hidden_dim, rows, tile_elements, r):
            sizes[sixteenths] = r
    return tuple(sizes.items())


_TUNED_FIRST_ROWS: dict[tuple, int] = {}  # sixteenths, by (vocab, D, dtype, need_dh, device)


def tuned_first_rows(key: tuple, candidates: tuple[tuple[int, int], ...], run, time_ms=cuda_time_ms) -> int:
    """R of the candidate (first_rows_candidates' (sixteenths, R)) whose run(R) took the least time: a round of
    untimed runs, then the fastest of two interleaved rounds. Costs about 3 × len(candidates) steps (about 0.9 s at
    LLaMA-3 shapes on an H200); the memory peak is one step's. Kept per key, which leaves out the token count, is the
    winning fraction: a run whose batches vary in length (dynamic padding) tunes once, not once per length, and
    later lengths take that fraction's R; one where it gives no candidate is timed anew."""
    sizes = dict(candidates)
    if _TUNED_FIRST_ROWS.get(key) not in sizes:
        times = {k: [] for k in sizes}
        for timed in (False, True, True):
            for k, r in sizes.items():
                elapsed = time_ms(lambda r=r: run(r))
                if timed:
                    times[k].append(elapsed)
        _TUNED_FIRST_ROWS[key] = min(sizes, key=lambda k: min(times[k]))
    return sizes[_TUNED_FIRST_ROWS[key]]


def _fused_forward(hidden, weight, targets, ignore_index, smoothing, rows, cols, filter_eps, need_dh, need_dw,
                   first=None):
    """Loss, dH and dW (None where not needed) of _FusedLinearCE.forward, the first row tile `first` rows."""
    n_tokens, vocab = hidden.shape[0], weight.shape[0]
    acc = torch.promote_types(hidden.dtype, torch.float32)
    need_grad = need_dh or need_dw
    filtering = filter_eps is not None and need_grad
    # exact: every row of dH and of dW is first written by a matmul (out=), then accumulated into — no zero fill
    # to write and read back; filtering skips slices, so both start at zero and are only accumulated into
    new = torch.zeros_like if filtering else torch.empty_like
    grad_hidden = new(hidden) if need_dh else None
    grad_weight = new(weight) if need_dw else None
    tile = torch.empty(rows * cols, dtype=hidden.dtype, device=hidden.device)
    # exact gradients: no logits of the first row tile recomputed (they wait in the tile and in dW's storage)
    plan = first_row_tile(n_tokens, vocab, hidden.shape[1], rows, rows * cols, first) \
        if need_dw and not filtering and grad_weight.is_contiguous() else None
    tiles = row_tiles(n_tokens, plan[0] if plan else rows, rows)

    def layout(r0, r1):
        """The row tile's vocabulary slices and, by slice, where its logits wait (homes) and their view."""
        if r0 == 0 and plan:
            bounds = plan[1]
            homes = first_tile_homes(bounds, r1, tile, grad_weight.view(-1))
        else:  # exact gradients: slices whose logits wait in dH's rows not yet written are not recomputed
            bounds = slice_bounds(vocab, cols)
            spare = grad_hidden[r1:].view(-1) if need_dh and not filtering and r1 < n_tokens else None
            homes = spare_homes(bounds, r1 - r0, spare) if len(bounds) > 1 else {}
        return bounds, homes, [homes.get(k, tile).narrow(0, 0, (r1 - r0) * (c1 - c0)).view(r1 - r0, c1 - c0)
                               for k, (c0, c1) in enumerate(bounds)]

    # the first logits matmul goes before the small kernels below: the GPU starts on it while the host launches them
    # (in a profiled speed-mode step the GPU sat idle 0.8 ms before it, the step's only idle time to speak of)
    first_layout = layout(*tiles[0])
    torch.matmul(hidden[:tiles[0][1]], weight[:first_layout[0][0][1]].T, out=first_layout[2][0])
    valid = targets != ignore_index
    inv_valid = 1.0 / valid.sum().clamp(min=1).to(acc)  # stays on the device: the host runs ahead of the GPU
    stats = torch.zeros(4, n_tokens, dtype=acc, device=hidden.device)
    stats[0] = -float("inf")
    for r0, r1 in tiles:
        h, y, row_stats = hidden[r0:r1], targets[r0:r1], stats[:, r0:r1]
        bounds, homes, logits = first_layout if r0 == 0 else layout(r0, r1)
        tile_max = torch.empty(len(bounds), r1 - r0, dtype=acc, device=hidden.device) \
            if filtering else [None] * len(bounds)
        for k, (c0, c1) in enumerate(bounds):  # pass 1
            if r0 or k:
                torch.matmul(h, weight[c0:c1].T, out=logits[k])
            tile_stats(logits[k], y, row_stats, c0, tile_max[k], logit_sum=smoothing != 0.0)
        if not need_grad:
            continue
        keep = kept_slices(tile_max, log_sum_exp(row_stats), y != ignore_index, filter_eps) if filtering \
            else [True] * len(bounds)
        # the last slice pass 1 left in the tile is not recomputed either
        in_tile = max((k for k in range(len(bounds)) if k not in homes), default=None)
        for k in reversed(range(len(bounds))):
            if not keep[k]:
                continue
            c0, c1 = bounds[k]
            w, z = weight[c0:c1], logits[k]
            if k not in homes and k != in_tile:
                torch.matmul(h, w.T, out=z)
            tile_grad(z, y, row_stats, c0, vocab, ignore_index, smoothing, inv_valid)
            if need_dh:
                dh = grad_hidden[r0:r1]
                torch.matmul(z, w, out=dh) if not filtering and k == len(bounds) - 1 else dh.addmm_(z, w)
            if need_dw:
                dw = grad_weight[c0:c1]
                torch.matmul(z.T, h, out=dw) if not filtering and r0 == 0 else dw.addmm_(z.T, h)
        if filtering:
            add_skipped_targets(grad_hidden, grad_weight, h, weight, y, slice(r0, r1), keep, bounds,
                                ignore_index, -inv_valid)
    losses = log_sum_exp(stats) - (1 - smoothing) * stats[2] - smoothing * stats[3] / vocab
    return torch.where(valid, losses, 0.0).sum() * inv_valid, grad_hidden, grad_weight


class _FusedLinearCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index, smoothing, rows, cols, filter_eps):
        need_dh, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]  # a frozen LM head needs no dW
        args = (hidden, weight, targets, ignore_index, smoothing, rows, cols, filter_eps, need_dh, need_dw)
        first = None
        n_tokens, vocab, hidden_dim = hidden.shape[0], weight.shape[0], hidden.shape[1]
        if hidden.is_cuda and cols == vocab and need_dw and filter_eps is None:  # speed mode: its times vary by shape
            candidates = first_rows_candidates(n_tokens, vocab, hidden_dim, rows, rows * cols)
            if len(candidates) > 1:
                key = (vocab, hidden_dim, hidden.dtype, need_dh, hidden.device)
                first = tuned_first_rows(key, candidates, lambda c: _fused_forward(*args, first=c))
        loss, grad_hidden, grad_weight = _fused_forward(*args, first=first)
        ctx.save_for_backward(grad_hidden, grad_weight)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        # a loss fed straight to backward() has grad_loss 1: scaling both gradients would re-read and re-write them
        # (1.5 ms at LLaMA-3 shapes on an H200) to change nothing; knowing costs one host synchronization
        grads = [g for g in (grad_hidden, grad_weight) if g is not None]
        if grads and grad_loss.item() != 1.0:
            for g in grads:
                g.mul_(grad_loss.to(g.dtype))
        return grad_hidden, grad_weight, None, None, None, None, None, None


def fused_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                               ignore_index: int = -100, label_smoothing: float = 0.0,
                               tile: tuple[int, int] | None = None, budget_fraction: float = 0.02,
                               filter_eps: float | None = None) -> torch.Tensor:
    """Mean cross-entropy of hidden (N × D) @ weight (V × D)ᵀ against targets (N), over targets ≠ ignore_index.
    tile = (rows, cols) of the logits tile; by default from budget_fraction (tile_shape). filter_eps: skip, in the
    gradient, the vocabulary slices of a row tile where every softmax value is below it (as cut-cross-entropy's
    default does per block, from a recomputed block; here from pass 1's per-row tile maxima, so a skipped slice costs
    no matmul at all), the targets' −1 there added sparsely; None: the exact gradient."""
    hidden = hidden.reshape(-1, hidden.shape[-1]).contiguous()
    targets = targets.reshape(-1).contiguous()
    if hidden.shape[0] == 0:
        raise ValueError("no tokens: hidden has 0 rows")
    if hidden.shape[0] != targets.shape[0]:
        raise ValueError(f"{hidden.shape[0]} hidden rows but {targets.shape[0]} targets")
    if hidden.dtype != weight.dtype:
        raise ValueError(f"hidden is {hidden.dtype} but weight is {weight.dtype}")
    rows, cols = tile or tile_shape(hidden.shape[0], weight.shape[0], weight.shape[1], budget_fraction,
                                    hidden.element_size())
    if rows < 1 or cols < 1:
        raise ValueError(f"tile={tile}: rows and cols must be >= 1")
    if filter_eps is not None and (label_smoothing != 0.0 or not 0.0 < filter_eps < 1.0):
        raise ValueError(f"filter_eps={filter_eps} with label_smoothing={label_smoothing}: filtering needs "
                         "0 < filter_eps < 1 and no label smoothing (its −ε/V is in every logit's gradient)")
    return _FusedLinearCE.apply(hidden, weight, targets, ignore_index, label_smoothing, rows,
                                min(cols, weight.shape[0]), filter_eps)
