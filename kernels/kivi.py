"""KIVI-style KV-cache quantization (Liu et al., "KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache",
ICML 2024): keys per-channel, values per-token, asymmetric b-bit codes (b = 2 or 4) with an fp16 scale and zero
per group of G, the not-yet-full group of the most recent tokens kept in fp16 (the residual); a quantize kernel
(one program per batch · head and group of G tokens: min/max, codes, packing) and a decode attention kernel that
dequantizes inside the score and value products.

Layout for one layer, B × H heads of dimension D, T_q quantized tokens (a multiple of G):
    keys   codes (B, H, T_q · b / 8, D) uint8, packed along tokens;  scale, zero (B, H, T_q / G, D) fp16
    values codes (B, H, T_q, D · b / 8) uint8, packed along channels; scale, zero (B, H, T_q, D / G_v) fp16
Asymmetric quantization of a group x: s = (max − min) / (2^b − 1), q = round((x − min) / s), x̂ = s q + min,
so |x − x̂| ≤ s / 2. Bytes per element: b/8 + 4/G (keys) and b/8 + 4/G_v (values), against 2 in bf16.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import triton
import triton.language as tl

from membench_kernels.common import triton_runs_on


def _powers_of_two(*sizes: int) -> bool:
    """The Triton kernels' block shapes (tl.arange) need every size a power of two; other sizes take torch."""
    return all(n & (n - 1) == 0 for n in sizes)


def quantize_groups(x: torch.Tensor, bits: int, dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric quantization with min/max taken along `dim` (the group axis): (codes uint8, scale, zero)."""
    low, high = x.amin(dim=dim, keepdim=True), x.amax(dim=dim, keepdim=True)
    scale = ((high - low) / (2**bits - 1)).clamp(min=1e-8)
    codes = ((x - low) / scale).round_().clamp_(0, 2**bits - 1).to(torch.uint8)
    return codes, scale.half(), low.half()


def pack(codes: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Pack 8/bits consecutive codes along `dim` into one byte, lowest bits first."""
    per_byte = 8 // bits
    codes = codes.movedim(dim, -1)
    codes = codes.reshape(*codes.shape[:-1], codes.shape[-1] // per_byte, per_byte)
    shifts = torch.arange(0, 8, bits, device=codes.device, dtype=torch.uint8)
    return (codes << shifts).sum(dim=-1, dtype=torch.uint8).movedim(-1, dim).contiguous()


def unpack(packed: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    per_byte = 8 // bits
    packed = packed.movedim(dim, -1)
    shifts = torch.arange(0, 8, bits, device=packed.device, dtype=torch.uint8)
    codes = (packed.unsqueeze(-1) >> shifts) & (2**bits - 1)
    return codes.reshape(*packed.shape[:-1], packed.shape[-1] * per_byte).movedim(-1, dim)


@dataclass
class KIVICache:
    """The KV cache of one layer: quantized groups plus an fp16 residual of fewer than `group` tokens."""

    bits: int = 2
    group: int = 128  # G: tokens per key group
    value_group: int = 128  # G_v: channels per value group (capped at the head dimension)
    reserve_tokens: int = 0  # quantized tokens the buffers are first made for: a cache of known length never grows
    buffers: dict = field(default_factory=dict)  # name -> (B, H, capacity along dim 2, ...) storage, doubled as needed
    quantized_tokens: int = 0
    residual_k: torch.Tensor | None = None
    residual_v: torch.Tensor | None = None
    views: dict | None = None  # quantized() of the current contents, rebuilt after an append


    def __post_init__(self):
        if self.bits not in (2, 4):
            raise ValueError(f"bits={self.bits}; KIVI kernels support 2 or 4")
        if self.group % (8 // self.bits):
            raise ValueError(f"group={self.group} must be a multiple of {8 // self.bits}")

    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Add tokens (B, H, t, D); every full group of G residual tokens is quantized and leaves the residual."""
        # contiguous: the quantize kernel steps tokens by D (a model's keys arrive as a transposed view)
        self.residual_k = k.half().contiguous() if self.residual_k is None else torch.cat([self.residual_k, k.half()], 2)
        self.residual_v = v.half().contiguous() if self.residual_v is None else torch.cat([self.residual_v, v.half()], 2)
        full = self.residual_k.shape[2] // self.group * self.group
        for start in range(0, full, self.group):  # a long prompt: every full group quantized from one buffer
            end = start + self.group
            self._write(self._quantize(self.residual_k[:, :, start:end], self.residual_v[:, :, start:end]))
            self.quantized_tokens += self.group
            self.views = None
        if full:  # clone the remainder: a view would keep the whole appended chunk's storage alive
            self.residual_k = self.residual_k[:, :, full:].clone()
            self.residual_v = self.residual_v[:, :, full:].clone()

    def _quantize(self, gk: torch.Tensor, gv: torch.Tensor) -> dict:
        """One group of G tokens (B, H, G, D) of keys and values → codes, scales and zeros (module docstring)."""
        b, h, g, d = gk.shape
        gv_width = self.channel_group(d)
        if triton_runs_on(gk) and _powers_of_two(g, d, gv_width):
            per_byte = 8 // self.bits
            parts = {"key_codes": gk.new_empty(b, h, g // per_byte, d, dtype=torch.uint8),
                     "key_scale": gk.new_empty(b, h, 1, d), "key_zero": gk.new_empty(b, h, 1, d),
                     "value_codes": gk.new_empty(b, h, g, d // per_byte, dtype=torch.uint8),
                     "value_scale": gk.new_empty(b, h, g, d // gv_width), "value_zero": gk.new_empty(b, h, g, d // gv_width)}
            _kivi_quantize_kernel[(b * h,)](gk, gv, *parts.values(), gk.stride(1), gv.stride(1), G=g, D=d, GV=gv_width,
                                            BITS=self.bits, num_warps=8)
            return parts
        codes, scale, zero = quantize_groups(gk.float(), self.bits, dim=2)  # per channel over G tokens
        parts = {"key_codes": pack(codes, self.bits, dim=2), "key_scale": scale, "key_zero": zero}
        gv_groups = gv.float().reshape(b, h, g, d // gv_width, gv_width)
        codes, scale, zero = quantize_groups(gv_groups, self.bits, dim=-1)  # per token over G_v channels
        parts.update(value_codes=pack(codes.reshape(gv.shape), self.bits, dim=3),
                     value_scale=scale.squeeze(-1), value_zero=zero.squeeze(-1))
        return parts

    def channel_group(self, head_dim: int) -> int:
        return min(self.value_group, head_dim)

    def _rows(self, name: str, tokens: int) -> int:
        """Rows along dim 2 that `tokens` quantized tokens occupy in buffer `name`."""
        if name == "key_codes":
            return tokens * self.bits // 8
        if name.startswith("key_"):
            return tokens // self.group
        return tokens

    def _write(self, parts: dict) -> None:
        for name, part in parts.items():
            start, end = self._rows(name, self.quantized_tokens), self._rows(name, self.quantized_tokens + self.group)
            buffer = self.buffers.get(name)
            if buffer is None or buffer.shape[2] < end:  # double the capacity: amortized O(1) appends
                rows = max(end, 2 * (buffer.shape[2] if buffer is not None else 0),
                           self._rows(name, self.reserve_tokens // self.group * self.group))
                grown = part.new_empty(*part.shape[:2], rows, *part.shape[3:])
                if buffer is not None:
                    grown[:, :, :start] = buffer[:, :, :start]
                self.buffers[name] = buffer = grown
            buffer[:, :, start:end] = part

    def quantized(self) -> dict | None:
        """Views of the quantized part (no copy), in the layout of the module docstring; kept between decode steps
        (building six views costs a decode step's worth of host time)."""
        if not self.quantized_tokens:
            return None
        if self.views is None:
            self.views = {name: buffer[:, :, : self._rows(name, self.quantized_tokens)]
                          for name, buffer in self.buffers.items()}
        return self.views

    def tensors(self) -> list[torch.Tensor]:
        return list(self.buffers.values()) + [t for t in (self.residual_k, self.residual_v) if t is not None]

    def dequantized(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All keys and values in fp32 (for reference checks; decoding never builds this)."""
        q = self.quantized()
        keys, values = [], []
        if q is not None:
            b, h, _, d = q["key_codes"].shape
            k_codes = unpack(q["key_codes"], self.bits, dim=2).float()
            t = k_codes.shape[2]
            k = k_codes.view(b, h, t // self.group, self.group, d) * q["key_scale"].float().unsqueeze(3) \
                + q["key_zero"].float().unsqueeze(3)
            keys.append(k.reshape(b, h, t, d))
            gv = self.channel_group(d)
            v_codes = unpack(q["value_codes"], self.bits, dim=3).float().view(b, h, t, d // gv, gv)
            v = v_codes * q["value_scale"].float().unsqueeze(-1) + q["value_zero"].float().unsqueeze(-1)
            values.append(v.reshape(b, h, t, d))
        keys.append(self.residual_k.float())
        values.append(self.residual_v.float())
        return torch.cat(keys, dim=2), torch.cat(values, dim=2)


@triton.jit
def _round_half_even(x):
    """torch.round's rounding (ties to even) in Triton."""
    r = tl.floor(x + 0.5)
    odd = r - 2.0 * tl.floor(r * 0.5)
    return tl.where((r - x == 0.5) & (odd == 1.0), r - 1.0, r)


@triton.jit
def _quantize_along(x, AXIS: tl.constexpr, LEVELS: tl.constexpr):
    """Asymmetric quantization of x along AXIS (its last): (codes, scale, zero) as quantize_groups."""
    low = tl.min(x, axis=AXIS)
    # IEEE-rounded divisions (div_rn) as torch's: Triton's `/` is an approximate division on the GPU, whose last
    # bit moved codes at rounding ties (caught on the H100 by the byte-exact test)
    scale = tl.maximum(tl.math.div_rn(tl.max(x, axis=AXIS) - low, tl.full(low.shape, LEVELS, tl.float32)), 1e-8)
    codes = _round_half_even(tl.math.div_rn(x - tl.expand_dims(low, AXIS), tl.expand_dims(scale, AXIS)))
    return tl.minimum(tl.maximum(codes, 0.0), LEVELS).to(tl.int32), scale, low


@triton.jit
def _pack_last(codes, BITS: tl.constexpr):
    """Pack 8/BITS consecutive codes of the last axis into one byte, lowest bits first (as pack)."""
    PB: tl.constexpr = 8 // BITS
    shape: tl.constexpr = codes.shape
    grouped = tl.reshape(codes, (shape[0], shape[1] // PB, PB))
    shifts = tl.arange(0, PB) * BITS
    return tl.sum(grouped << shifts[None, None, :], axis=2).to(tl.uint8)


@triton.jit
def _kivi_quantize_kernel(k_ptr, v_ptr, kc_ptr, ks_ptr, kz_ptr, vc_ptr, vs_ptr, vz_ptr, k_bh, v_bh,
                          G: tl.constexpr, D: tl.constexpr, GV: tl.constexpr, BITS: tl.constexpr):
    """One program per (batch · head): quantize one group of G tokens of keys (per channel over the G tokens,
    packed along tokens) and values (per token over groups of GV channels, packed along channels)."""
    bh = tl.program_id(0).to(tl.int64)
    PB: tl.constexpr = 8 // BITS
    LEVELS: tl.constexpr = (1 << BITS) - 1
    t = tl.arange(0, G)
    d = tl.arange(0, D)
    keys = tl.load(k_ptr + bh * k_bh + t[:, None] * D + d[None, :]).to(tl.float32)
    codes, scale, zero = _quantize_along(tl.trans(keys), 1, LEVELS)  # [D, G]: channels as rows
    packed = tl.trans(_pack_last(codes, BITS))  # [G / PB, D]
    rows = tl.arange(0, G // PB)
    tl.store(kc_ptr + bh * (G // PB) * D + rows[:, None] * D + d[None, :], packed)
    tl.store(ks_ptr + bh * D + d, scale.to(tl.float16))
    tl.store(kz_ptr + bh * D + d, zero.to(tl.float16))
    values = tl.load(v_ptr + bh * v_bh + t[:, None] * D + d[None, :]).to(tl.float32)
    codes, scale, zero = _quantize_along(tl.reshape(values, (G, D // GV, GV)), 2, LEVELS)
    packed = _pack_last(tl.reshape(codes, (G, D)), BITS)  # [G, D / PB]
    cols = tl.arange(0, D // PB)
    tl.store(vc_ptr + bh * G * (D // PB) + t[:, None] * (D // PB) + cols[None, :], packed)
    groups = tl.arange(0, D // GV)
    tl.store(vs_ptr + bh * G * (D // GV) + t[:, None] * (D // GV) + groups[None, :], scale.to(tl.float16))
    tl.store(vz_ptr + bh * G * (D // GV) + t[:, None] * (D // GV) + groups[None, :], zero.to(tl.float16))


@triton.jit
def _kivi_decode_kernel(q_ptr, kc_ptr, ks_ptr, kz_ptr, vc_ptr, vs_ptr, vz_ptr, out_ptr, lse_ptr, T, CHUNK, sm_scale,
                        kc_bh, ks_bh, vc_bh, vs_bh, D: tl.constexpr, G: tl.constexpr, GV: tl.constexpr, BITS: tl.constexpr,
                        BLOCK_T: tl.constexpr):
    """One program per (batch · head, chunk of CHUNK tokens): online-softmax attention of one query over its chunk of
    the T quantized tokens; writes the chunk's output and log-sum-exp, merged afterwards (flash-decoding: at batch 1
    there are only H heads, too few programs to fill the GPU without splitting the tokens).

    Every packed byte is loaded once: a block of BLOCK_T tokens is indexed (i, s) for token start + PB·i + s (PB codes
    per byte), so key bytes [i, d] unpack along s, and value bytes [i, s, j] unpack along c into channel PB·j + c."""
    bh = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    n_splits = tl.num_programs(1)
    PB: tl.constexpr = 8 // BITS
    NB: tl.constexpr = BLOCK_T // PB
    DP: tl.constexpr = D // PB
    mask_bits: tl.constexpr = (1 << BITS) - 1
    d = tl.arange(0, D)
    i = tl.arange(0, NB)
    slot = tl.arange(0, PB)
    j = tl.arange(0, DP)
    shifts = (slot * BITS).to(tl.uint8)
    q = tl.load(q_ptr + bh * D + d).to(tl.float32) * sm_scale
    kc_base = kc_ptr + bh * kc_bh  # per-(batch, head) strides: the buffers have spare capacity
    vc_base = vc_ptr + bh * vc_bh
    running_max = -float("inf")
    running_sum = 0.0
    acc = tl.zeros([D], dtype=tl.float32)
    first = split * CHUNK
    end = tl.minimum(first + CHUNK, T)
    for start in range(first, end, BLOCK_T):
        t = start + i[:, None] * PB + slot[None, :]  # [NB, PB]
        valid = t < end
        # keys: codes packed along tokens; one (scale, zero) row per group of G tokens, and a block never straddles
        # two groups (BLOCK_T divides G), so q·k = Σ_d (q_d s_d) c_td + Σ_d q_d z_d: dequantization folded into q
        group = start // G
        k_scale = tl.load(ks_ptr + bh * ks_bh + group * D + d).to(tl.float32)
        k_zero = tl.load(kz_ptr + bh * ks_bh + group * D + d).to(tl.float32)
        k_byte = tl.load(kc_base + (start // PB + i)[:, None] * D + d[None, :],
                         mask=(start + i * PB < end)[:, None], other=0)  # [NB, D]
        k_code = (k_byte[:, None, :] >> shifts[None, :, None]) & mask_bits  # [NB, PB, D]
        scores = tl.sum(k_code.to(tl.float32) * (q * k_scale)[None, None, :], axis=2) + tl.sum(q * k_zero, axis=0)
        scores = tl.where(valid, scores, -float("inf"))
        new_max = tl.maximum(running_max, tl.max(tl.max(scores, axis=1), axis=0))
        correction = tl.exp(running_max - new_max)
        p = tl.exp(scores - new_max)  # [NB, PB]
        running_sum = running_sum * correction + tl.sum(tl.sum(p, axis=1), axis=0)
        # values: codes packed along channels; (scale, zero) per (token, group of GV channels)
        v_byte = tl.load(vc_base + t[:, :, None] * DP + j[None, None, :], mask=valid[:, :, None], other=0)
        v_code = ((v_byte[:, :, :, None] >> shifts[None, None, None, :]) & mask_bits).to(tl.float32)  # [NB,PB,DP,PB]
        if GV == D:  # one (scale, zero) per token: Σ_t p_t (s_t c_td + z_t) = Σ_t (p_t s_t) c_td + Σ_t p_t z_t
            v_scale = tl.load(vs_ptr + bh * vs_bh + t, mask=valid, other=0).to(tl.float32)
            v_zero = tl.load(vz_ptr + bh * vs_bh + t, mask=valid, other=0).to(tl.float32)
            weights = (p * v_scale)[:, :, None, None]
            offset = tl.sum(tl.sum(p * v_zero, axis=1), axis=0)
        else:  # channel PB·j + c lies in group j // (GV / PB): GV is a multiple of PB
            where = t[:, :, None] * (D // GV) + j[None, None, :] // (GV // PB)
            v_scale = tl.load(vs_ptr + bh * vs_bh + where, mask=valid[:, :, None], other=0).to(tl.float32)
            v_zero = tl.load(vz_ptr + bh * vs_bh + where, mask=valid[:, :, None], other=0).to(tl.float32)
            weights = (p[:, :, None] * v_scale)[:, :, :, None]
            offset = tl.reshape(tl.broadcast_to(tl.sum(tl.sum(p[:, :, None] * v_zero, axis=1), axis=0)[:, None],
                                                (DP, PB)), (D,))
        block_out = tl.reshape(tl.sum(tl.sum(weights * v_code, axis=1), axis=0), (D,)) + offset  # channel PB·j + c
        acc = acc * correction + block_out
        running_max = new_max
    tl.store(out_ptr + (bh * n_splits + split) * D + d, acc / running_sum)
    tl.store(lse_ptr + bh * n_splits + split, running_max + tl.log(running_sum))


@triton.jit
def _kivi_merge_kernel(q_ptr, part_out_ptr, part_lse_ptr, rk_ptr, rv_ptr, out_ptr, S, R, sm_scale, r_bh,
                       D: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_R: tl.constexpr):
    """One program per (batch · head): attention over the R < G fp16 residual tokens, merged with the S chunk
    results of _kivi_decode_kernel by their log-sum-exp — one launch, so decode costs two launches in all."""
    bh = tl.program_id(0).to(tl.int64)
    d = tl.arange(0, D)
    s = tl.arange(0, BLOCK_S)
    lse = tl.load(part_lse_ptr + bh * S + s, mask=s < S, other=-float("inf"))
    parts = tl.load(part_out_ptr + (bh * S + s[:, None]) * D + d[None, :], mask=(s < S)[:, None], other=0.0)
    r = tl.arange(0, BLOCK_R)
    q = tl.load(q_ptr + bh * D + d).to(tl.float32) * sm_scale
    keys = tl.load(rk_ptr + bh * r_bh + r[:, None] * D + d[None, :], mask=(r < R)[:, None], other=0.0)
    scores = tl.where(r < R, tl.sum(keys.to(tl.float32) * q[None, :], axis=1), -float("inf"))
    top = tl.maximum(tl.max(lse, axis=0), tl.max(scores, axis=0))
    w_parts = tl.exp(lse - top)
    w_res = tl.exp(scores - top)
    values = tl.load(rv_ptr + bh * r_bh + r[:, None] * D + d[None, :], mask=(r < R)[:, None], other=0.0)
    num = tl.sum(w_parts[:, None] * parts, axis=0) + tl.sum(w_res[:, None] * values.to(tl.float32), axis=0)
    den = tl.sum(w_parts, axis=0) + tl.sum(w_res, axis=0)
    tl.store(out_ptr + bh * D + d, (num / den).to(out_ptr.dtype.element_ty))


def kivi_decode_attention(q: torch.Tensor, cache: KIVICache, block_tokens: int = 64,
                          num_warps: int = 2) -> torch.Tensor:
    """softmax(q Kᵀ / √D) V for one new query per (batch, head) over the whole cache (quantized + residual).
    block_tokens (a power of two) and num_warps shape the Triton decode kernel's programs; the defaults were the
    fastest of bench_kivi's grid on an H100 (results/h100/kernels/kivi.rows.jsonl)."""
    d = q.shape[-1]
    if _powers_of_two(d, cache.group, cache.channel_group(d), block_tokens) and triton_runs_on(q):
        return _decode_triton(q.contiguous(), cache, d**-0.5, min(block_tokens, cache.group), num_warps)
    return _decode_torch(q, cache, d**-0.5)


def _decode_triton(q: torch.Tensor, cache: KIVICache, sm_scale: float, block_t: int, num_warps: int) -> torch.Tensor:
    b, h, d = q.shape
    quantized = cache.quantized()
    n_splits = 0
    part_out = part_lse = q  # placeholders when nothing is quantized yet (S = 0: never read)
    if quantized is not None:
        t = quantized["value_codes"].shape[2]
        chunk = _chunk_tokens(t, b * h, block_t)
        n_splits = triton.cdiv(t, chunk)
        part_out = torch.empty(b, h, n_splits, d, dtype=torch.float32, device=q.device)
        part_lse = torch.empty(b, h, n_splits, dtype=torch.float32, device=q.device)
        names = ("key_codes", "key_scale", "key_zero", "value_codes", "value_scale", "value_zero")
        _kivi_decode_kernel[(b * h, n_splits)](
            q, *(quantized[n] for n in names), part_out, part_lse, t, chunk, sm_scale,
            quantized["key_codes"].stride(1), quantized["key_scale"].stride(1),
            quantized["value_codes"].stride(1), quantized["value_scale"].stride(1),
            D=d, G=cache.group, GV=cache.channel_group(d), BITS=cache.bits, BLOCK_T=block_t, num_warps=num_warps)
    residual = cache.residual_k is not None and cache.residual_k.shape[2] > 0
    rk = cache.residual_k.contiguous() if residual else q
    rv = cache.residual_v.contiguous() if residual else q
    r = cache.residual_k.shape[2] if residual else 0
    out = torch.empty_like(q)
    _kivi_merge_kernel[(b * h,)](q, part_out, part_lse, rk, rv, out, n_splits, r, sm_scale, r * d, D=d,
                                 BLOCK_S=triton.next_power_of_2(max(n_splits, 1)),
                                 BLOCK_R=triton.next_power_of_2(max(r, 1)))
    return out


def _decode_torch(q: torch.Tensor, cache: KIVICache, sm_scale: float) -> torch.Tensor:
    """Plain-torch path (CPU jobs, or sizes that are not powers of two): the same math over the dequantized cache."""
    keys, values = cache.dequantized()
    scores = torch.einsum("bhd,bhtd->bht", q.float() * sm_scale, keys)
    return torch.einsum("bht,bhtd->bhd", torch.softmax(scores, dim=-1), values).to(q.dtype)


def _chunk_tokens(tokens: int, programs: int, block_t: int, target_programs: int = 512) -> int:
    """Tokens per program, a multiple of block_t: enough chunks that (batch · heads) × chunks gives a few programs
    per SM (an H100 has 132)."""
    splits = max(1, min(triton.cdiv(target_programs, programs), triton.cdiv(tokens, block_t)))
    return triton.cdiv(triton.cdiv(tokens, splits), block_t) * block_t
