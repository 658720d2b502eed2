"""Fused attention in Triton, forward and backward, FlashAttention-2 style: tiled, online softmax in
registers, the [Sq, Sk] scores never written to memory.

Semantics and layouts are the contract in csrc/fastformer.cpp: q [B, H, Sq, D], k, v [B, Hkv, Sk, D]
(any strides, last dim contiguous); out [B, H, Sq, D] and lse [B, H, Sq] (fp32, natural log, +inf for
a row with no kept key) contiguous; s = scale * q.k + bias, masked keys -inf; causal keeps key j for
query i iff j <= i + Sk - Sq; dropout keeps (b, h, i, j) iff tl.rand(seed, ((b*H + h)*Sq + i)*Sk + j) >= p.

Rows: the GROUP = H / Hkv query heads sharing one key/value head are packed on one row axis (row
r = g * Sq + i is query i of head hkv * GROUP + g), and one program serves BLOCK_M rows of one (b, hkv).
Every K/V tile loaded then feeds all heads of its group: grouped-query decode (Sq = 1, GROUP = 8) fills
8 rows of the tile instead of 1. With GROUP = 1 this is the plain per-head layout.

T5 relative bias arrives as dist_bias [H, Sq + Sk - 1] (fp32): the bias of head h at distance index
j - i + Sq - 1 (the launcher looks the buckets up once per call, O(H * (Sq + Sk)), never [H, Sq, Sk]);
its gradient comes back the same shape, accumulated with atomics.

Forward: grid (row blocks, B * Hkv, splits). Decode (few row blocks, long Sk) splits the keys over
several programs per row block that write partial (out, lse) in fp32, merged by a combine kernel, so
one query still fills the GPU. Key blocks wholly inside the causal/sequence bounds skip the bounds
mask (MASK_COLS=False); only boundary blocks pay for it.

Backward: delta = rowsum(dO * O) (valid with dropout too: rowsum(dP * P) = rowsum(dO * O)) is computed
by the dq kernel, which runs first and also writes dS for a bias that needs grad and the T5 distance
gradient; the dk/dv kernel then owns BLOCK_N keys of one (b, hkv) and loops over the query rows of
every head in the group, so neither kernel needs atomics for dq, dk or dv. The dk/dv kernel works on
transposed tiles (keys on rows, s^T = k q^T) so its products take loaded tiles as they are instead of
transposing computed register tiles (which made every config spill when compiled for sm_90).

Interpreter (TRITON_INTERPRET=1): tl.dot inputs are upcast to fp32 (interpreted bf16 tl.dot returns
garbage) and each kernel has a single autotune config (several need a GPU to benchmark).
"""
import torch
import triton
import triton.language as tl

from fastformer._backends import triton_interpreting

_LOG2E = tl.constexpr(1.4426950408889634)  # scores are kept in log2 units so the softmax uses exp2
_LN2 = tl.constexpr(0.6931471805599453)

# Interpreted runs cost ~1 ms per program instance: one mid-size config, and a small pretend SM count
# so that tests with Sk ~ 100 already take the split-K decode path.
_INTERPRETED_BLOCK = 32
_INTERPRETED_SMS = 4
# Keys per split are a multiple of the largest BLOCK_N any config uses, so every config tiles a split.
_SPLIT_GRANULE_GPU = 128
_MIN_SPLIT_KEYS_GPU = 256
_MAX_SPLITS = 64
MAX_HEAD_DIM = 256  # the largest class of the autotune tables below


# ---- configs ------------------------------------------------------------------------------------

def _config(block_m, block_n, num_warps, num_stages):
    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=num_warps, num_stages=num_stages)


def _autotune_table(regular, lean):
    """(all configs, prune function) from {max BLOCK_D: [(BLOCK_M, BLOCK_N, warps, stages)]} tables.

    The prune keeps the configs of the smallest class holding BLOCK_D, from `lean` where registers are
    scarce: fp32 inputs (their exact-fp32 dot runs on FMA units and holds both operands in registers)
    and dropout (Philox state per score). Compiled for sm_90, the regular tiles spill there.
    """
    if triton_interpreting():
        return [_config(_INTERPRETED_BLOCK, _INTERPRETED_BLOCK, 4, 1)], None
    tables = {name: {max_d: [_config(*c) for c in rows] for max_d, rows in sorted(table.items())}
              for name, table in (("regular", regular), ("lean", lean))}

    def prune(configs, named_args, **kwargs):
        args = {**named_args, **kwargs}
        table = tables["lean" if args["HAS_DROPOUT"] or args["DOT_DTYPE"] == tl.float32 else "regular"]
        return next(cfgs for max_d, cfgs in table.items() if args["BLOCK_D"] <= max_d)

    return [c for table in tables.values() for cfgs in table.values() for c in cfgs], {"early_config_prune": prune}


# Register budget: the fp32 accumulator holds BLOCK_M * BLOCK_D values (64 per thread at 128 x 128 over
# 8 warps); head dim 256 therefore uses 64-row tiles and fewer pipeline stages (K and V tiles of
# 64 x 256 fp16 are 32 KiB each per stage). 16-row tiles serve decode (one query per head).
_LEAN = {
    64: [(64, 32, 4, 2), (32, 32, 4, 2), (64, 64, 8, 2), (16, 64, 4, 2)],
    128: [(64, 32, 4, 2), (32, 32, 4, 2), (64, 64, 8, 2), (16, 64, 4, 2)],
    256: [(32, 32, 4, 2), (64, 32, 8, 2), (16, 32, 4, 2)],
}
_FWD_CONFIGS, _FWD_PRUNE = _autotune_table({
    64: [(128, 64, 4, 3), (128, 128, 8, 3), (64, 64, 4, 3), (64, 128, 4, 3), (16, 128, 4, 3)],
    128: [(128, 64, 8, 3), (64, 64, 4, 3), (128, 128, 8, 2), (16, 128, 4, 3)],
    256: [(64, 64, 8, 2), (64, 32, 4, 2), (128, 32, 8, 2), (16, 64, 4, 2)],
}, _LEAN)
_BWD_DQ_CONFIGS, _BWD_DQ_PRUNE = _autotune_table({
    64: [(128, 64, 8, 3), (64, 64, 4, 3), (128, 32, 4, 3)],
    128: [(128, 64, 8, 2), (64, 64, 4, 2), (64, 32, 4, 3)],
    256: [(32, 64, 4, 2), (64, 32, 8, 1), (32, 32, 4, 2)],
}, _LEAN)
# dk and dv accumulate BLOCK_N * BLOCK_D fp32 values each besides the K and V tiles: 8 warps (with 4,
# every config spilled when compiled for sm_90).
_BWD_DKDV_CONFIGS, _BWD_DKDV_PRUNE = _autotune_table({
    64: [(32, 128, 8, 2), (64, 128, 8, 2), (64, 64, 8, 3)],
    128: [(32, 128, 8, 2), (64, 64, 8, 2), (32, 64, 8, 3)],
    256: [(32, 32, 8, 2), (16, 32, 4, 2), (32, 64, 8, 1)],
}, _LEAN)
# Autotune keys: sequence lengths enter as power-of-2 buckets, so a decode loop whose Sk grows by one
# per step retunes only when Sk crosses a power of 2 (names a kernel lacks are ignored).
_KEY = ["BLOCK_D", "GROUP", "rows_bucket", "seq_k_bucket", "IS_CAUSAL", "HAS_BIAS", "HAS_KPM", "HAS_DIST_BIAS",
        "HAS_DROPOUT", "SPLIT", "BIAS_GRAD", "DIST_GRAD"]


# ---- shared tile helpers ----------------------------------------------------------------------------

@triton.jit
def _load_tile(ptrs, row_valid, d, MASK_ROWS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """A [rows, BLOCK_D] tile of a [..., HEAD_DIM] tensor, 0 for invalid rows (MASK_ROWS) and past
    HEAD_DIM. Masks that are statically all-true are left out, so interior tiles load unpredicated."""
    if MASK_ROWS:
        mask = row_valid[:, None]
        if BLOCK_D != HEAD_DIM:
            mask = mask & (d < HEAD_DIM)[None, :]
        tile = tl.load(ptrs, mask=mask, other=0.0)
    elif BLOCK_D != HEAD_DIM:
        tile = tl.load(ptrs, mask=(d < HEAD_DIM)[None, :], other=0.0)
    else:
        tile = tl.load(ptrs)
    return tile


@triton.jit
def _load_key_block(K, V, start_n, d, seq_k, stride_kn, stride_vn, MASK_COLS: tl.constexpr, DOT_DTYPE: tl.constexpr,
                    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """(cols, k, v) of keys [start_n, start_n + BLOCK_N): [BLOCK_N, BLOCK_D] tiles in the dot dtype, 0 past
    seq_k when MASK_COLS."""
    cols = start_n + tl.arange(0, BLOCK_N)
    cols64 = cols[:, None].to(tl.int64)
    k = _load_tile(K + cols64 * stride_kn + d[None, :], cols < seq_k, d, MASK_COLS, HEAD_DIM, BLOCK_D)
    v = _load_tile(V + cols64 * stride_vn + d[None, :], cols < seq_k, d, MASK_COLS, HEAD_DIM, BLOCK_D)
    return cols, k.to(DOT_DTYPE), v.to(DOT_DTYPE)


@triton.jit
def _masked_scores(q, k, i, row_valid, cols, bias_rows, kpm_row, DistBias, dist_rows, seq_q, seq_k, qk_scale,
                   stride_bias_n, stride_kpm_n,
                   HAS_BIAS: tl.constexpr, HAS_KPM: tl.constexpr, HAS_DIST_BIAS: tl.constexpr,
                   IS_CAUSAL: tl.constexpr, MASK_COLS: tl.constexpr, KEYS_ON_ROWS: tl.constexpr,
                   ACC: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """Scores of a tile in log2 units, (scale * q.k + bias) * log2(e), -inf where masked: [BLOCK_M, BLOCK_N]
    (queries on rows), or [BLOCK_N, BLOCK_M] with KEYS_ON_ROWS (k q^T, what the dk/dv kernel multiplies
    on without transposing register tiles).

    q [BLOCK_M, D], k [BLOCK_N, D]; per query: i (index), row_valid, bias_rows (base pointers, + key *
    stride), dist_rows (offsets into DistBias, + key); per key: cols; kpm_row: the batch's key padding
    row. MASK_COLS=False promises every key is < seq_k and causally visible from every valid query.
    """
    if KEYS_ON_ROWS:
        s = tl.dot(k, tl.trans(q), input_precision=INPUT_PRECISION, out_dtype=ACC)
        query_i, query_valid, key_j = i[None, :], row_valid[None, :], cols[:, None]
        bias_base, dist_base = bias_rows[None, :], dist_rows[None, :]
    else:
        s = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION, out_dtype=ACC)
        query_i, query_valid, key_j = i[:, None], row_valid[:, None], cols[None, :]
        bias_base, dist_base = bias_rows[:, None], dist_rows[:, None]
    s = s * qk_scale
    in_seq = key_j < seq_k
    if MASK_COLS:
        load_mask = query_valid & in_seq
    else:
        load_mask = query_valid
    if HAS_BIAS:
        s += tl.load(bias_base + key_j * stride_bias_n, mask=load_mask, other=0.0).to(ACC) * _LOG2E
    if HAS_DIST_BIAS:
        s += tl.load(DistBias + dist_base + key_j, mask=load_mask, other=0.0).to(ACC) * _LOG2E
    if MASK_COLS:
        keep = in_seq
        if IS_CAUSAL:
            keep = keep & (key_j <= query_i + (seq_k - seq_q))
        if HAS_KPM:
            keep = keep & (tl.load(kpm_row + key_j * stride_kpm_n, mask=in_seq, other=0) != 0)
        s = tl.where(keep, s, float("-inf"))
    elif HAS_KPM:
        s = tl.where(tl.load(kpm_row + key_j * stride_kpm_n) != 0, s, float("-inf"))
    return s


@triton.jit
def _dropout_keep(seed, row_global, cols, seq_k, dropout_p, KEYS_ON_ROWS: tl.constexpr):
    """bool tile (oriented like _masked_scores): element (query, key) survives dropout, per the
    contract's Philox offset ((b*H + h)*Sq + i)*Sk + j."""
    if KEYS_ON_ROWS:
        offsets = row_global[None, :] * seq_k + cols[:, None]  # int64: B*H*Sq*Sk may pass 2^31
    else:
        offsets = row_global[:, None] * seq_k + cols[None, :]
    return tl.rand(seed, offsets) >= dropout_p


@triton.jit
def _packed_rows(pid_m, pid_bh, H, GROUP, seq_q, BLOCK_M: tl.constexpr):
    """Rows r of a block of the packed (head in group, query) axis of one (b, hkv) = pid_bh.

    Returns (row_valid, b, hkv, h, i, row_global), row_global = (b*H + h)*Sq + i (int64).
    """
    h_kv = H // GROUP
    b = pid_bh // h_kv
    hkv = pid_bh % h_kv
    r = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_valid = r < GROUP * seq_q
    h = hkv * GROUP + r // seq_q
    i = r % seq_q
    # (b*H + hkv*GROUP) * Sq + r == (b*H + h)*Sq + i, since b*H + hkv*GROUP == pid_bh * GROUP.
    row_global = pid_bh.to(tl.int64) * GROUP * seq_q + r
    return row_valid, b.to(tl.int64), hkv.to(tl.int64), h.to(tl.int64), i, row_global


@triton.jit
def _key_range(i, row_valid, seq_q, seq_k, IS_CAUSAL: tl.constexpr, BLOCK_N: tl.constexpr):
    """(full, hi): keys [0, hi) are visible to some valid row, keys [0, full) (a multiple of BLOCK_N)
    to every valid row and inside the sequence, so they need no bounds mask."""
    if IS_CAUSAL:
        visible = tl.minimum(tl.maximum(i + (seq_k - seq_q) + 1, 0), seq_k)  # keys query i may see
        hi = tl.max(tl.where(row_valid, visible, 0), axis=0)
        full = tl.min(tl.where(row_valid, visible, seq_k), axis=0)
    else:
        hi = seq_k
        full = seq_k
    return (full // BLOCK_N) * BLOCK_N, hi


# ---- forward --------------------------------------------------------------------------------------

@triton.jit
def _fwd_block(acc, l_i, m_i, q, K, V, start_n, i, row_valid, row_global, d, bias_rows, kpm_row,
               DistBias, dist_rows, seq_q, seq_k, qk_scale, dropout_p, seed, stride_kn, stride_vn, stride_bias_n,
               stride_kpm_n,
               HAS_BIAS: tl.constexpr, HAS_KPM: tl.constexpr, HAS_DIST_BIAS: tl.constexpr,
               IS_CAUSAL: tl.constexpr, HAS_DROPOUT: tl.constexpr, MASK_COLS: tl.constexpr,
               DOT_DTYPE: tl.constexpr, ACC: tl.constexpr, INPUT_PRECISION: tl.constexpr,
               HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """One key block of the online softmax: returns the updated (acc, l_i, m_i)."""
    cols, k, v = _load_key_block(K, V, start_n, d, seq_k, stride_kn, stride_vn, MASK_COLS, DOT_DTYPE, HEAD_DIM,
                                 BLOCK_D, BLOCK_N)
    s = _masked_scores(q, k, i, row_valid, cols, bias_rows, kpm_row, DistBias, dist_rows, seq_q, seq_k,
                       qk_scale, stride_bias_n, stride_kpm_n, HAS_BIAS, HAS_KPM, HAS_DIST_BIAS, IS_CAUSAL,
                       MASK_COLS, False, ACC, INPUT_PRECISION)
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    # A row with no kept key so far has m = -inf; shifting by 0 keeps exp2(-inf - shift) = 0, not NaN.
    shift = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(s - shift[:, None])
    alpha = tl.exp2(m_i - shift)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    if HAS_DROPOUT:
        p = tl.where(_dropout_keep(seed, row_global, cols, seq_k, dropout_p, False), p, 0.0)
    acc = tl.dot(p.to(DOT_DTYPE), v, acc * alpha[:, None], input_precision=INPUT_PRECISION, out_dtype=ACC)
    return acc, l_i, m_new


@triton.autotune(configs=_FWD_CONFIGS, key=_KEY, prune_configs_by=_FWD_PRUNE)
@triton.jit
def _attn_fwd_kernel(
    Q, K, V, Bias, KPM, DistBias, Out, Lse,
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_bias_b, stride_bias_h, stride_bias_m, stride_bias_n, stride_kpm_b, stride_kpm_n,
    H, GROUP, seq_q, seq_k, keys_per_split, qk_scale, dropout_p, seed,
    rows_bucket, seq_k_bucket,  # autotune keys only
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_KPM: tl.constexpr, HAS_DIST_BIAS: tl.constexpr, IS_CAUSAL: tl.constexpr,
    HAS_DROPOUT: tl.constexpr, SPLIT: tl.constexpr,
    DOT_DTYPE: tl.constexpr, ACC: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Without SPLIT: Out [B, H, Sq, D], Lse [B, H, Sq]. With SPLIT: program_id(2) handles keys
    [split * keys_per_split, +keys_per_split) and writes Out [splits, B*H*Sq, D] fp32 normalized
    within the split and Lse [splits, B*H*Sq] (-inf for a split with no kept key)."""
    pid_bh = tl.program_id(1)
    row_valid, b, hkv, h, i, row_global = _packed_rows(tl.program_id(0), pid_bh, H, GROUP, seq_q, BLOCK_M)
    d = tl.arange(0, BLOCK_D)
    i64 = i.to(tl.int64)
    q = _load_tile(Q + b * stride_qb + h[:, None] * stride_qh + i64[:, None] * stride_qm + d[None, :],
                   row_valid, d, True, HEAD_DIM, BLOCK_D).to(DOT_DTYPE)
    K += b * stride_kb + hkv * stride_kh
    V += b * stride_vb + hkv * stride_vh
    bias_rows = Bias + b * stride_bias_b + h * stride_bias_h + i64 * stride_bias_m
    kpm_row = KPM + b * stride_kpm_b
    dist_rows = h * (seq_q + seq_k - 1) + (seq_q - 1) - i64  # + column: offset of (h, j - i + Sq - 1)

    full, hi = _key_range(i, row_valid, seq_q, seq_k, IS_CAUSAL, BLOCK_N)
    if SPLIT:
        lo = tl.program_id(2) * keys_per_split
        hi = tl.minimum(lo + keys_per_split, hi)
    else:
        lo = 0
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=ACC)
    l_i = tl.zeros([BLOCK_M], dtype=ACC)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=ACC)
    for start_n in range(lo, tl.minimum(full, hi), BLOCK_N):
        acc, l_i, m_i = _fwd_block(acc, l_i, m_i, q, K, V, start_n, i, row_valid, row_global, d,
                                   bias_rows, kpm_row, DistBias, dist_rows, seq_q, seq_k, qk_scale, dropout_p,
                                   seed, stride_kn, stride_vn, stride_bias_n, stride_kpm_n, HAS_BIAS, HAS_KPM,
                                   HAS_DIST_BIAS, IS_CAUSAL, HAS_DROPOUT, False, DOT_DTYPE, ACC,
                                   INPUT_PRECISION, HEAD_DIM, BLOCK_D, BLOCK_N)
    for start_n in range(tl.maximum(full, lo), hi, BLOCK_N):
        acc, l_i, m_i = _fwd_block(acc, l_i, m_i, q, K, V, start_n, i, row_valid, row_global, d,
                                   bias_rows, kpm_row, DistBias, dist_rows, seq_q, seq_k, qk_scale, dropout_p,
                                   seed, stride_kn, stride_vn, stride_bias_n, stride_kpm_n, HAS_BIAS, HAS_KPM,
                                   HAS_DIST_BIAS, IS_CAUSAL, HAS_DROPOUT, True, DOT_DTYPE, ACC,
                                   INPUT_PRECISION, HEAD_DIM, BLOCK_D, BLOCK_N)

    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    if HAS_DROPOUT:
        out = out * (1.0 / (1.0 - dropout_p))
    lse = (m_i + tl.log2(tl.where(empty, 1.0, l_i))) * _LN2
    if SPLIT:
        lse = tl.where(empty, float("-inf"), lse)
        row_global += tl.program_id(2).to(tl.int64) * tl.num_programs(1) * GROUP * seq_q
    else:
        lse = tl.where(empty, float("inf"), lse)
    tl.store(Out + row_global[:, None] * HEAD_DIM + d[None, :], out.to(Out.dtype.element_ty),
             mask=row_valid[:, None] & (d < HEAD_DIM)[None, :])
    tl.store(Lse + row_global, lse.to(Lse.dtype.element_ty), mask=row_valid)


@triton.jit
def _attn_fwd_combine_kernel(PartOut, PartLse, Out, Lse, rows, num_splits,
                             HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr):
    """Merges the split partials of one row: out = sum_s w_s out_s / sum_s w_s, w_s = exp(lse_s - max)."""
    row = tl.program_id(0).to(tl.int64)
    s = tl.arange(0, BLOCK_S).to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    lse_s = tl.load(PartLse + s * rows + row, mask=s < num_splits, other=float("-inf"))
    top = tl.max(lse_s, axis=0)
    shift = tl.where(top == float("-inf"), 0.0, top)
    w = tl.exp(lse_s - shift)
    denom = tl.sum(w, axis=0)
    part = tl.load(PartOut + (s[:, None] * rows + row) * HEAD_DIM + d[None, :],
                   mask=(s < num_splits)[:, None] & (d < HEAD_DIM)[None, :], other=0.0)
    out = tl.sum(part * w[:, None], axis=0) / tl.where(denom == 0.0, 1.0, denom)
    lse = tl.where(denom == 0.0, float("inf"), shift + tl.log(tl.where(denom == 0.0, 1.0, denom)))
    tl.store(Out + row * HEAD_DIM + d, out.to(Out.dtype.element_ty), mask=d < HEAD_DIM)
    tl.store(Lse + row, lse.to(Lse.dtype.element_ty))


# ---- backward -------------------------------------------------------------------------------------

@triton.jit
def _bwd_probs(q, k, i, row_valid, cols, lse2, bias_rows, kpm_row, DistBias, dist_rows, seq_q, seq_k,
               qk_scale, stride_bias_n, stride_kpm_n,
               HAS_BIAS: tl.constexpr, HAS_KPM: tl.constexpr, HAS_DIST_BIAS: tl.constexpr,
               IS_CAUSAL: tl.constexpr, MASK_COLS: tl.constexpr, KEYS_ON_ROWS: tl.constexpr,
               ACC: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """The softmax probabilities of a tile (oriented like _masked_scores), recomputed from lse2 (lse in
    log2 units per query; +inf for empty and invalid queries, whose p is then 0)."""
    s = _masked_scores(q, k, i, row_valid, cols, bias_rows, kpm_row, DistBias, dist_rows, seq_q, seq_k,
                       qk_scale, stride_bias_n, stride_kpm_n, HAS_BIAS, HAS_KPM, HAS_DIST_BIAS, IS_CAUSAL,
                       MASK_COLS, KEYS_ON_ROWS, ACC, INPUT_PRECISION)
    if KEYS_ON_ROWS:
        p = tl.exp2(s - lse2[None, :])
    else:
        p = tl.exp2(s - lse2[:, None])
    return p


@triton.jit
def _dq_block(dq, q, do, delta, lse2, K, V, DBias, DDist, start_n, i, row_valid, row_global, d,
              bias_rows, kpm_row, DistBias, dist_rows, seq_q, seq_k, qk_scale, dropout_p, seed, stride_kn, stride_vn,
              stride_bias_n, stride_kpm_n,
              HAS_BIAS: tl.constexpr, HAS_KPM: tl.constexpr, HAS_DIST_BIAS: tl.constexpr,
              IS_CAUSAL: tl.constexpr, HAS_DROPOUT: tl.constexpr, MASK_COLS: tl.constexpr,
              BIAS_GRAD: tl.constexpr, DIST_GRAD: tl.constexpr,
              DOT_DTYPE: tl.constexpr, ACC: tl.constexpr, INPUT_PRECISION: tl.constexpr,
              HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """One key block of dq (and of dS for the bias / T5 gradients): returns the updated dq."""
    cols, k, v = _load_key_block(K, V, start_n, d, seq_k, stride_kn, stride_vn, MASK_COLS, DOT_DTYPE, HEAD_DIM,
                                 BLOCK_D, BLOCK_N)
    p = _bwd_probs(q, k, i, row_valid, cols, lse2, bias_rows, kpm_row, DistBias, dist_rows, seq_q, seq_k,
                   qk_scale, stride_bias_n, stride_kpm_n, HAS_BIAS, HAS_KPM, HAS_DIST_BIAS, IS_CAUSAL, MASK_COLS,
                   False, ACC, INPUT_PRECISION)
    dp = tl.dot(do, tl.trans(v), input_precision=INPUT_PRECISION, out_dtype=ACC)
    if HAS_DROPOUT:
        keep = _dropout_keep(seed, row_global, cols, seq_k, dropout_p, False)
        dp = tl.where(keep, dp * (1.0 / (1.0 - dropout_p)), 0.0)
    ds = p * (dp - delta[:, None])  # gradient of the scores scale * q.k + bias
    dq = tl.dot(ds.to(DOT_DTYPE), k, dq, input_precision=INPUT_PRECISION, out_dtype=ACC)
    tile_mask = row_valid[:, None] & (cols < seq_k)[None, :]
    if BIAS_GRAD:
        tl.store(DBias + row_global[:, None] * seq_k + cols[None, :], ds.to(DBias.dtype.element_ty), mask=tile_mask)
    if DIST_GRAD:
        tl.atomic_add(DDist + dist_rows[:, None] + cols[None, :], ds.to(DDist.dtype.element_ty), mask=tile_mask)
    return dq


@triton.autotune(configs=_BWD_DQ_CONFIGS, key=_KEY, prune_configs_by=_BWD_DQ_PRUNE, reset_to_zero=["DDist"])
@triton.jit
def _attn_bwd_dq_kernel(
    Q, K, V, Bias, KPM, DistBias, DO, O, Lse, Delta, DQ, DBias, DDist,
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_bias_b, stride_bias_h, stride_bias_m, stride_bias_n, stride_kpm_b, stride_kpm_n,
    stride_dob, stride_doh, stride_dom, stride_ob, stride_oh, stride_om,
    H, GROUP, seq_q, seq_k, qk_scale, scale, dropout_p, seed,
    rows_bucket, seq_k_bucket,  # autotune keys only
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_KPM: tl.constexpr, HAS_DIST_BIAS: tl.constexpr, IS_CAUSAL: tl.constexpr,
    HAS_DROPOUT: tl.constexpr, BIAS_GRAD: tl.constexpr, DIST_GRAD: tl.constexpr,
    DOT_DTYPE: tl.constexpr, ACC: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dq for BLOCK_M packed rows; also writes Delta = rowsum(dO * O), dS into DBias [B, H, Sq, Sk]
    (BIAS_GRAD) and adds dS into DDist [H, Sq + Sk - 1] by distance (DIST_GRAD)."""
    pid_bh = tl.program_id(1)
    row_valid, b, hkv, h, i, row_global = _packed_rows(tl.program_id(0), pid_bh, H, GROUP, seq_q, BLOCK_M)
    d = tl.arange(0, BLOCK_D)
    i64 = i.to(tl.int64)
    q = _load_tile(Q + b * stride_qb + h[:, None] * stride_qh + i64[:, None] * stride_qm + d[None, :],
                   row_valid, d, True, HEAD_DIM, BLOCK_D)
    do = _load_tile(DO + b * stride_dob + h[:, None] * stride_doh + i64[:, None] * stride_dom + d[None, :],
                    row_valid, d, True, HEAD_DIM, BLOCK_D)
    o = _load_tile(O + b * stride_ob + h[:, None] * stride_oh + i64[:, None] * stride_om + d[None, :],
                   row_valid, d, True, HEAD_DIM, BLOCK_D)
    delta = tl.sum(do.to(ACC) * o.to(ACC), axis=1)
    tl.store(Delta + row_global, delta, mask=row_valid)
    lse2 = tl.load(Lse + row_global, mask=row_valid, other=float("inf")).to(ACC) * _LOG2E
    q = q.to(DOT_DTYPE)
    do = do.to(DOT_DTYPE)
    K += b * stride_kb + hkv * stride_kh
    V += b * stride_vb + hkv * stride_vh
    bias_rows = Bias + b * stride_bias_b + h * stride_bias_h + i64 * stride_bias_m
    kpm_row = KPM + b * stride_kpm_b
    dist_rows = h * (seq_q + seq_k - 1) + (seq_q - 1) - i64  # + column: offset of (h, j - i + Sq - 1)

    full, hi = _key_range(i, row_valid, seq_q, seq_k, IS_CAUSAL, BLOCK_N)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=ACC)
    for start_n in range(0, full, BLOCK_N):
        dq = _dq_block(dq, q, do, delta, lse2, K, V, DBias, DDist, start_n, i, row_valid, row_global, d,
                       bias_rows, kpm_row, DistBias, dist_rows, seq_q, seq_k, qk_scale, dropout_p, seed,
                       stride_kn, stride_vn, stride_bias_n, stride_kpm_n, HAS_BIAS, HAS_KPM, HAS_DIST_BIAS, IS_CAUSAL,
                       HAS_DROPOUT, False, BIAS_GRAD, DIST_GRAD, DOT_DTYPE, ACC, INPUT_PRECISION, HEAD_DIM,
                       BLOCK_D, BLOCK_N)
    for start_n in range(full, hi, BLOCK_N):
        dq = _dq_block(dq, q, do, delta, lse2, K, V, DBias, DDist, start_n, i, row_valid, row_global, d,
                       bias_rows, kpm_row, DistBias, dist_rows, seq_q, seq_k, qk_scale, dropout_p, seed,
                       stride_kn, stride_vn, stride_bias_n, stride_kpm_n, HAS_BIAS, HAS_KPM, HAS_DIST_BIAS, IS_CAUSAL,
                       HAS_DROPOUT, True, BIAS_GRAD, DIST_GRAD, DOT_DTYPE, ACC, INPUT_PRECISION, HEAD_DIM,
                       BLOCK_D, BLOCK_N)
    if BIAS_GRAD:
        # Keys no row of this block can see (causal) still need their zero gradient.
        for start_n in range(hi // BLOCK_N * BLOCK_N, seq_k, BLOCK_N):
            cols = start_n + tl.arange(0, BLOCK_N)
            zero_mask = row_valid[:, None] & (cols >= hi)[None, :] & (cols < seq_k)[None, :]
            tl.store(DBias + row_global[:, None] * seq_k + cols[None, :],
                     tl.zeros([BLOCK_M, BLOCK_N], dtype=DBias.dtype.element_ty), mask=zero_mask)
    tl.store(DQ + row_global[:, None] * HEAD_DIM + d[None, :], (dq * scale).to(DQ.dtype.element_ty),
             mask=row_valid[:, None] & (d < HEAD_DIM)[None, :])


@triton.jit
def _dkdv_rows(dk, dv, k, v, Q, DO, Lse, Delta, start_m, row_end, b, h, cols, d, bias_h, kpm_row,
               DistBias, dist_h, H, seq_q, seq_k, qk_scale, dropout_p, seed, stride_qh, stride_qm, stride_doh,
               stride_dom, stride_bias_m, stride_bias_n, stride_kpm_n,
               HAS_BIAS: tl.constexpr, HAS_KPM: tl.constexpr, HAS_DIST_BIAS: tl.constexpr,
               IS_CAUSAL: tl.constexpr, HAS_DROPOUT: tl.constexpr, MASK_COLS: tl.constexpr,
               DOT_DTYPE: tl.constexpr, ACC: tl.constexpr, INPUT_PRECISION: tl.constexpr,
               HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr):
    """Adds the contribution of queries [start_m, min(start_m + BLOCK_M, row_end)) of head h."""
    i = start_m + tl.arange(0, BLOCK_M)
    row_valid = i < row_end
    i64 = i.to(tl.int64)
    row_global = (b * H + h) * seq_q + i64
    q = _load_tile(Q + h * stride_qh + i64[:, None] * stride_qm + d[None, :], row_valid, d, True, HEAD_DIM, BLOCK_D)
    do = _load_tile(DO + h * stride_doh + i64[:, None] * stride_dom + d[None, :], row_valid, d, True, HEAD_DIM,
                    BLOCK_D)
    q = q.to(DOT_DTYPE)
    do = do.to(DOT_DTYPE)
    lse2 = tl.load(Lse + row_global, mask=row_valid, other=float("inf")).to(ACC) * _LOG2E
    delta = tl.load(Delta + row_global, mask=row_valid, other=0.0)
    # Tiles are [BLOCK_N, BLOCK_M] (keys on rows), so every product takes loaded tiles as they are.
    p_t = _bwd_probs(q, k, i, row_valid, cols, lse2, bias_h + i64 * stride_bias_m, kpm_row, DistBias,
                     dist_h - i64, seq_q, seq_k, qk_scale, stride_bias_n, stride_kpm_n, HAS_BIAS, HAS_KPM,
                     HAS_DIST_BIAS, IS_CAUSAL, MASK_COLS, True, ACC, INPUT_PRECISION)
    dp_t = tl.dot(v, tl.trans(do), input_precision=INPUT_PRECISION, out_dtype=ACC)
    if HAS_DROPOUT:
        keep = _dropout_keep(seed, row_global, cols, seq_k, dropout_p, True)
        inv_keep = 1.0 / (1.0 - dropout_p)
        dv = tl.dot(tl.where(keep, p_t * inv_keep, 0.0).to(DOT_DTYPE), do, dv, input_precision=INPUT_PRECISION,
                    out_dtype=ACC)
        dp_t = tl.where(keep, dp_t * inv_keep, 0.0)
    else:
        dv = tl.dot(p_t.to(DOT_DTYPE), do, dv, input_precision=INPUT_PRECISION, out_dtype=ACC)
    ds_t = p_t * (dp_t - delta[None, :])
    dk = tl.dot(ds_t.to(DOT_DTYPE), q, dk, input_precision=INPUT_PRECISION, out_dtype=ACC)
    return dk, dv


@triton.autotune(configs=_BWD_DKDV_CONFIGS, key=_KEY, prune_configs_by=_BWD_DKDV_PRUNE)
@triton.jit
def _attn_bwd_dkdv_kernel(
    Q, K, V, Bias, KPM, DistBias, DO, Lse, Delta, DK, DV,
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_bias_b, stride_bias_h, stride_bias_m, stride_bias_n, stride_kpm_b, stride_kpm_n,
    stride_dob, stride_doh, stride_dom,
    H, GROUP, seq_q, seq_k, qk_scale, scale, dropout_p, seed,
    rows_bucket, seq_k_bucket,  # autotune keys only
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_KPM: tl.constexpr, HAS_DIST_BIAS: tl.constexpr, IS_CAUSAL: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    DOT_DTYPE: tl.constexpr, ACC: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dk, dv for keys [pid_n * BLOCK_N, +BLOCK_N) of one (b, hkv), summed over the GROUP query heads."""
    pid_bh = tl.program_id(1)
    h_kv = H // GROUP
    b = (pid_bh // h_kv).to(tl.int64)
    hkv = (pid_bh % h_kv).to(tl.int64)
    start_n = tl.program_id(0) * BLOCK_N
    cols = start_n + tl.arange(0, BLOCK_N)
    col_valid = cols < seq_k
    d = tl.arange(0, BLOCK_D)
    cols64 = cols[:, None].to(tl.int64)
    k = _load_tile(K + b * stride_kb + hkv * stride_kh + cols64 * stride_kn + d[None, :], col_valid, d, True,
                   HEAD_DIM, BLOCK_D)
    v = _load_tile(V + b * stride_vb + hkv * stride_vh + cols64 * stride_vn + d[None, :], col_valid, d, True,
                   HEAD_DIM, BLOCK_D)
    k = k.to(DOT_DTYPE)
    v = v.to(DOT_DTYPE)
    Q += b * stride_qb
    DO += b * stride_dob
    kpm_row = KPM + b * stride_kpm_b

    # Causal: query i sees this block iff i >= start_n - (Sk - Sq); it sees all of it (no bounds mask)
    # from i >= start_n + BLOCK_N - 1 - (Sk - Sq) on, and only if the block lies inside the sequence.
    if IS_CAUSAL:
        first_row = tl.minimum(tl.maximum(start_n - (seq_k - seq_q), 0), seq_q)
        full_row = tl.minimum(tl.maximum(start_n + BLOCK_N - 1 - (seq_k - seq_q), first_row), seq_q)
    else:
        first_row = 0
        full_row = 0
    # The tail key block always needs the column bounds (a select, not a runtime `if`, which would
    # rebind an int to a tensor and fail to compile).
    full_row = tl.where(start_n + BLOCK_N > seq_k, seq_q, full_row)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=ACC)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=ACC)
    for g in range(GROUP):
        h = hkv * GROUP + g
        bias_h = Bias + b * stride_bias_b + h * stride_bias_h
        dist_h = h * (seq_q + seq_k - 1) + (seq_q - 1)
        for start_m in range(first_row, full_row, BLOCK_M):
            dk, dv = _dkdv_rows(dk, dv, k, v, Q, DO, Lse, Delta, start_m, full_row, b, h, cols, d, bias_h,
                                kpm_row, DistBias, dist_h, H, seq_q, seq_k, qk_scale, dropout_p, seed, stride_qh,
                                stride_qm, stride_doh, stride_dom, stride_bias_m, stride_bias_n, stride_kpm_n, HAS_BIAS,
                                HAS_KPM, HAS_DIST_BIAS, IS_CAUSAL, HAS_DROPOUT, True, DOT_DTYPE, ACC,
                                INPUT_PRECISION, HEAD_DIM, BLOCK_D, BLOCK_M)
        for start_m in range(full_row, seq_q, BLOCK_M):
            dk, dv = _dkdv_rows(dk, dv, k, v, Q, DO, Lse, Delta, start_m, seq_q, b, h, cols, d, bias_h,
                                kpm_row, DistBias, dist_h, H, seq_q, seq_k, qk_scale, dropout_p, seed, stride_qh,
                                stride_qm, stride_doh, stride_dom, stride_bias_m, stride_bias_n, stride_kpm_n, HAS_BIAS,
                                HAS_KPM, HAS_DIST_BIAS, IS_CAUSAL, HAS_DROPOUT, False, DOT_DTYPE, ACC,
                                INPUT_PRECISION, HEAD_DIM, BLOCK_D, BLOCK_M)
    out_offsets = (pid_bh.to(tl.int64) * seq_k + cols64) * HEAD_DIM + d[None, :]
    out_mask = col_valid[:, None] & (d < HEAD_DIM)[None, :]
    tl.store(DK + out_offsets, (dk * scale).to(DK.dtype.element_ty), mask=out_mask)
    tl.store(DV + out_offsets, dv.to(DV.dtype.element_ty), mask=out_mask)


# ---- launchers ------------------------------------------------------------------------------------

def _dot_dtype(dtype: torch.dtype):
    if dtype == torch.float64:
        return tl.float64
    if dtype == torch.float32 or triton_interpreting():
        return tl.float32
    return tl.float16 if dtype == torch.float16 else tl.bfloat16


def block_d(head_dim: int) -> int:
    """The register block holding a head of head_dim values: a power of 2 (tl.arange) and at least 16
    (tl.dot's minimum K); the columns past head_dim are masked on every load and store. Any head_dim up to
    MAX_HEAD_DIM; the autotune tables stop there (the 256-wide fp32 accumulator takes the register budget)."""
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"head dim D={head_dim} must be in [1, {MAX_HEAD_DIM}] for the Triton attention kernels")
    return max(16, triton.next_power_of_2(head_dim))


def _common_meta(q, k, bias, key_padding_mask, dist_bias, causal: bool, dropout_p: float) -> dict:
    """Constexpr flags and autotune keys shared by the three attention kernels."""
    _, heads, seq_q, head_dim = q.shape
    group = heads // k.shape[1]
    return dict(
        rows_bucket=triton.next_power_of_2(group * seq_q), seq_k_bucket=triton.next_power_of_2(k.shape[2]),
        HEAD_DIM=head_dim, BLOCK_D=block_d(head_dim),
        HAS_BIAS=bias is not None, HAS_KPM=key_padding_mask is not None, HAS_DIST_BIAS=dist_bias is not None,
        IS_CAUSAL=causal, HAS_DROPOUT=dropout_p > 0.0,
        DOT_DTYPE=_dot_dtype(q.dtype), ACC=tl.float64 if q.dtype == torch.float64 else tl.float32,
        # fp32 inputs keep fp32 products (torch's default matmul precision), not TF32.
        INPUT_PRECISION="ieee" if q.dtype in (torch.float32, torch.float64) else "tf32",
    )


def _common_args(q, k, v, bias, key_padding_mask) -> list:
    """Strides of q, k, v (batch, head, row), the expanded bias (4) and the key padding mask (2)."""
    bias_strides = bias.stride() if bias is not None else (0, 0, 0, 0)
    kpm_strides = key_padding_mask.stride() if key_padding_mask is not None else (0, 0)
    return [*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *bias_strides, *kpm_strides]


def _num_splits(programs: int, seq_k: int, device: torch.device) -> tuple[int, int]:
    """(splits, keys_per_split) for the forward: split the keys when the row blocks alone leave the
    GPU mostly idle (fewer programs than SMs), aiming at ~2 programs per SM."""
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        granule, min_keys = _SPLIT_GRANULE_GPU, _MIN_SPLIT_KEYS_GPU
    else:
        sms, granule, min_keys = _INTERPRETED_SMS, _INTERPRETED_BLOCK, _INTERPRETED_BLOCK
    if programs >= sms or seq_k < 2 * min_keys:
        return 1, seq_k
    splits = min(triton.cdiv(2 * sms, programs), seq_k // min_keys, _MAX_SPLITS)
    keys_per_split = triton.cdiv(triton.cdiv(seq_k, splits), granule) * granule
    return triton.cdiv(seq_k, keys_per_split), keys_per_split


def attention_fwd(q, k, v, bias, key_padding_mask, dist_bias, causal: bool, scale: float, dropout_p: float,
                  seed: int):
    """(out [B, H, Sq, D], lse [B, H, Sq] fp32) for well-formed inputs (see the module docstring).

    bias: None or [B, H, Sq, Sk] (any strides, e.g. expanded); key_padding_mask: None or bool [B, Sk];
    dist_bias: None or [H, Sq + Sk - 1] fp32 contiguous (T5 bias by distance index j - i + Sq - 1).
    """
    batch, heads, seq_q, head_dim = q.shape
    heads_kv, seq_k = k.shape[1], k.shape[2]
    group = heads // heads_kv
    out = torch.empty((batch, heads, seq_q, head_dim), dtype=q.dtype, device=q.device)  # [B, H, Sq, D]
    lse = torch.empty((batch, heads, seq_q), dtype=torch.float32, device=q.device)  # [B, H, Sq]
    if out.numel() == 0 or seq_k == 0:
        return out.zero_(), lse.fill_(float("inf"))
    meta = _common_meta(q, k, bias, key_padding_mask, dist_bias, causal, dropout_p)
    estimated_row_blocks = triton.cdiv(group * seq_q, 64)
    splits, keys_per_split = _num_splits(estimated_row_blocks * batch * heads_kv, seq_k, q.device)
    acc_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    if splits > 1:
        rows = batch * heads * seq_q
        part_out = torch.empty((splits, rows, head_dim), dtype=acc_dtype, device=q.device)  # [S, B*H*Sq, D]
        part_lse = torch.empty((splits, rows), dtype=acc_dtype, device=q.device)  # [S, B*H*Sq]
        dest_out, dest_lse = part_out, part_lse
    else:
        dest_out, dest_lse = out, lse
    grid = lambda meta_: (triton.cdiv(group * seq_q, meta_["BLOCK_M"]), batch * heads_kv, splits)  # noqa: E731
    _attn_fwd_kernel[grid](
        q, k, v, bias if bias is not None else q, key_padding_mask if key_padding_mask is not None else q,
        dist_bias if dist_bias is not None else q, dest_out, dest_lse,
        *_common_args(q, k, v, bias, key_padding_mask),
        heads, group, seq_q, seq_k, keys_per_split, scale * 1.4426950408889634, dropout_p, seed,
        SPLIT=splits > 1, **meta,
    )
    if splits > 1:
        _attn_fwd_combine_kernel[(batch * heads * seq_q,)](
            part_out, part_lse, out, lse, batch * heads * seq_q, splits,
            HEAD_DIM=head_dim, BLOCK_D=meta["BLOCK_D"], BLOCK_S=triton.next_power_of_2(splits),
            num_warps=4 if splits * meta["BLOCK_D"] <= 4096 else 8,
        )
    return out, lse


def attention_bwd(grad_out, q, k, v, out, lse, bias, key_padding_mask, dist_bias, causal: bool, scale: float,
                  dropout_p: float, seed: int, bias_needs_grad: bool, dist_needs_grad: bool):
    """(grad_q, grad_k, grad_v, grad_bias [B, H, Sq, Sk] or empty, grad_dist [H, Sq + Sk - 1] or empty).

    grad_out, out: [B, H, Sq, D] with the last dim contiguous; lse [B, H, Sq] fp32 contiguous.
    grad_q/k/v are contiguous in the dtypes of q/k/v; grad_bias in the dtype of bias; grad_dist fp32
    (fp64 for fp64 inputs).
    """
    batch, heads, seq_q, head_dim = q.shape
    heads_kv, seq_k = k.shape[1], k.shape[2]
    group = heads // heads_kv
    device = q.device
    acc_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    grad_q = torch.empty((batch, heads, seq_q, head_dim), dtype=q.dtype, device=device)  # [B, H, Sq, D]
    grad_k = torch.empty((batch, heads_kv, seq_k, head_dim), dtype=k.dtype, device=device)  # [B, Hkv, Sk, D]
    grad_v = torch.empty((batch, heads_kv, seq_k, head_dim), dtype=v.dtype, device=device)
    grad_bias = torch.empty((batch, heads, seq_q, seq_k) if bias_needs_grad else (0,),
                            dtype=bias.dtype if bias is not None else q.dtype, device=device)  # [B, H, Sq, Sk]
    grad_dist = torch.zeros((heads, seq_q + seq_k - 1) if dist_needs_grad else (0,), dtype=acc_dtype,
                            device=device)  # [H, Sq + Sk - 1]
    if grad_q.numel() == 0 or grad_k.numel() == 0:
        return grad_q.zero_(), grad_k.zero_(), grad_v.zero_(), grad_bias.zero_(), grad_dist
    delta = torch.empty((batch, heads, seq_q), dtype=acc_dtype, device=device)  # [B, H, Sq]
    meta = _common_meta(q, k, bias, key_padding_mask, dist_bias, causal, dropout_p)
    common = _common_args(q, k, v, bias, key_padding_mask)
    bias_arg = bias if bias is not None else q
    kpm_arg = key_padding_mask if key_padding_mask is not None else q
    dist_arg = dist_bias if dist_bias is not None else q
    qk_scale = scale * 1.4426950408889634
    _attn_bwd_dq_kernel[lambda m: (triton.cdiv(group * seq_q, m["BLOCK_M"]), batch * heads_kv)](
        q, k, v, bias_arg, kpm_arg, dist_arg, grad_out, out, lse, delta, grad_q,
        grad_bias if bias_needs_grad else q, grad_dist if dist_needs_grad else delta,
        *common, *grad_out.stride()[:3], *out.stride()[:3],
        heads, group, seq_q, seq_k, qk_scale, scale, dropout_p, seed,
        BIAS_GRAD=bias_needs_grad, DIST_GRAD=dist_needs_grad, **meta,
    )
    _attn_bwd_dkdv_kernel[lambda m: (triton.cdiv(seq_k, m["BLOCK_N"]), batch * heads_kv)](
        q, k, v, bias_arg, kpm_arg, dist_arg, grad_out, lse, delta, grad_k, grad_v,
        *common, *grad_out.stride()[:3],
        heads, group, seq_q, seq_k, qk_scale, scale, dropout_p, seed, **meta,
    )
    return grad_q, grad_k, grad_v, grad_bias, grad_dist
