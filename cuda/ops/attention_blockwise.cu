// Blockwise (memory-linear, "flash-style") causal attention on CUDA: the kernels behind
// the kernels attention_blockwise_forward/backward (engine/ops/attention_cpu_blockwise.cpp), which run the ops
// attention_blockwise, rewired_attention_blockwise and qkv_attention_blockwise; equal in what
// they compute and save to the CPU kernels (engine/ops/attention_cpu_blockwise.cpp); the
// math and names are those of engine/ops/attention.h and docs/attention.md.
//
// What runs where:
//   * standard attention and the runway-rewired absorption summary: the kernels below;
//   * two_hop: the Backend default (the materialised kernels with the maps in scratch),
//     see attention_blockwise_forward at the bottom;
//   * a head_dim too large for the shared memory of even the smallest tile: the
//     Backend default as well (see blockwise_tile).
//
// Layout of the work. Queries and keys are cut into tiles of `tile` rows (32, or 16 / 8
// when a large head_dim would not fit in shared memory); every kernel is launched with
// kThreads threads per block and one block per unit of work, flattened into blockIdx.x:
//   forward            one block per (b, h, query tile t): walks key tiles kt <= t,
//                      online softmax (running max m and sum l per row), y in shared memory
//   backward dq        one block per (b, h, query tile t): walks key tiles kt <= t
//   backward dk, dv    one block per (b, h, key tile kt): walks query tiles t >= kt
// so each block owns the rows it writes and no atomics are needed. Inside a block, an
// S tile (tile x tile) is computed one element per thread (a dot product over D from
// shared memory), row statistics one thread per row, the (tile x D) products one
// element per thread.
//
// Absorption (R[i,j] = sum_{j<k<i} P[k,j], P the runway head's softmax of S_r):
//   forward   (a) the runway head's row lse (runway_lse, saved) by the forward kernel
//                 without y;
//             (b) colsum[b][t][j] = sum_{k in tile t, k>j} P[k,j], one block per
//                 (b, t, kt), then an exclusive prefix over t: acc[b][t][j] =
//                 sum_{j<k<i0(t)} P[k,j], the spec's incremental-decoding state at the
//                 start of query tile t;
//             (c) the forward kernel, whose R tile for (t, kt) is acc[b][t][j] plus the
//                 rows of tile t above i (P tile recomputed from q_r, k_r, runway_lse).
//   backward  the same acc; dq and dk, dv of every head as for standard attention with
//             S' = S - beta R; then, unless detached (or beta == 0, where dR = 0):
//               dR[i,j] = -beta sum_h dS'_h[i,j] (i - j >= 2);  dP[k,j] = sum_{i>k} dR[i,j]
//             with the same trick in reverse: column sums of dR per query tile, one block
//             per (b, t, kt), then an exclusive suffix over t: dacc[b][t][j] =
//             sum_{i>=i1(t)} dR[i,j]; dP of a tile = dacc plus the rows of the tile below k.
//               dS_r += P * (dP - rowsum(dP * P));  dq_r += scale dS_r k_r;  dk_r += scale dS_r^T q_r
//             by one block per (b, query tile) (row sums, then dq_r) and one per (b, key
//             tile) (dk_r). Each dR tile is recomputed from every head's tiles where it is
//             needed (four times: the column sums, two sweeps for dq_r, one for dk_r): compute
//             traded for memory.
// Memory: besides the O(B H T) saved statistics, the absorption scratch acc, dacc are
// (B, T/tile, T) doubles: O(T^2 / tile) per batch item (16 MiB each at T = 8192, tile 32),
// a tile-fold saving over one (T, T) map of doubles, not linear. Nothing else is O(T^2).
// Accumulations that the CPU does in double (acc, dacc, the row sums of dP * P) are in
// double here too.
//
// These kernels are kept plain (shared-memory tiles, scalar loops, no tensor cores):
// written without a GPU to run them on, they aim to be obviously equal to the CPU
// kernels; tests/cuda/test_cuda_blockwise.cpp and the op table's *_blockwise rows
// (tests/cuda/test_cuda_parity.cpp) hold them to it.
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>

#include "cuda/cuda_backend.h"
#include "engine/ops/attention_blockwise.h"
#include "engine/fused_kernel.h"
#include "cuda/cuda_check.h"
#include "cuda/cuda_common.cuh"
#include "cuda/cuda_kernels.cuh"

namespace runway {
namespace cuda_kernels {
namespace blockwise {

constexpr int kLargestTile = 32;
constexpr size_t kAbsent = ~size_t{0};

// Which shared-memory parts a kernel uses (the q, k and s tiles and the per-row values
// are always there).
enum SmemPart : unsigned {
  kPartV = 1u << 0,            // v tile (tile x D)
  kPartDy = 1u << 1,           // dy tile (tile x D)
  kPartAcc = 1u << 2,          // accumulator (tile x D): y, dq or dk
  kPartAcc2 = 1u << 3,         // second accumulator (tile x D): dv
  kPartW = 1u << 4,            // second (tile x tile) work tile
  kPartRunway = 1u << 5,       // q_r, k_r tiles, P and R tiles, runway lse rows
  kPartRunwayGrad = 1u << 6,   // dR and dP tiles, double row sums of dP * P
};

// Byte offsets of the parts in dynamic shared memory (kAbsent when not used), computed
// on the host and passed to the kernel, so that the two cannot disagree. Doubles first
// (8-byte aligned), then T arrays.
struct SmemLayout {
  size_t drow_r;                                   // tile doubles
  size_t q, k, v, dy, qr, kr, acc, acc2;           // tile x D
  size_t s, w, p, r, dr, dp;                       // tile x tile
  size_t lse, drow, m, l, alpha, lse_r;            // tile
  size_t bytes;
};

inline size_t take(size_t& at, size_t bytes) {
  const size_t offset = at;
  at += bytes;
  return offset;
}

inline SmemLayout smem_layout(int tile, int64_t D, unsigned parts, size_t elem) {
  const size_t t = static_cast<size_t>(tile), d = static_cast<size_t>(D);
  // Key-side tiles (k, v, k_r) have rows of D + 1: the threads of a warp read rows c
  // of them at once (one S element each), and a stride of D words would put all 32 in
  // one bank for D = 32.
  const size_t mat = t * d * elem, key_mat = t * (d + 1) * elem, sq = t * t * elem, row = t * elem;
  auto part = [parts](unsigned p) { return (parts & p) != 0; };
  SmemLayout L{};
  size_t at = 0;
  L.drow_r = part(kPartRunwayGrad) ? take(at, t * sizeof(double)) : kAbsent;
  L.q = take(at, mat);
  L.k = take(at, key_mat);
  L.v = part(kPartV) ? take(at, key_mat) : kAbsent;
  L.dy = part(kPartDy) ? take(at, mat) : kAbsent;
  L.qr = part(kPartRunway) ? take(at, mat) : kAbsent;
  L.kr = part(kPartRunway) ? take(at, key_mat) : kAbsent;
  L.acc = part(kPartAcc) ? take(at, mat) : kAbsent;
  L.acc2 = part(kPartAcc2) ? take(at, mat) : kAbsent;
  L.s = take(at, sq);
  L.w = part(kPartW) ? take(at, sq) : kAbsent;
  L.p = part(kPartRunway) ? take(at, sq) : kAbsent;
  L.r = part(kPartRunway) ? take(at, sq) : kAbsent;
  L.dr = part(kPartRunwayGrad) ? take(at, sq) : kAbsent;
  L.dp = part(kPartRunwayGrad) ? take(at, sq) : kAbsent;
  L.lse = take(at, row);
  L.drow = take(at, row);
  L.m = take(at, row);
  L.l = take(at, row);
  L.alpha = take(at, row);
  L.lse_r = part(kPartRunway) ? take(at, row) : kAbsent;
  L.bytes = at;
  return L;
}

// The parts as pointers inside a kernel (nullptr when absent).
template <typename T>
struct Tiles {
  double* drow_r;
  T *q, *k, *v, *dy, *qr, *kr, *acc, *acc2;
  T *s, *w, *p, *r, *dr, *dp;
  T *lse, *drow, *m, *l, *alpha, *lse_r;
};

template <typename P>
__device__ inline P* at_offset(unsigned char* base, size_t offset) {
  return offset == kAbsent ? nullptr : reinterpret_cast<P*>(base + offset);
}

template <typename T>
__device__ inline Tiles<T> carve(unsigned char* base, const SmemLayout& L) {
  Tiles<T> t;
  t.drow_r = at_offset<double>(base, L.drow_r);
  t.q = at_offset<T>(base, L.q);
  t.k = at_offset<T>(base, L.k);
  t.v = at_offset<T>(base, L.v);
  t.dy = at_offset<T>(base, L.dy);
  t.qr = at_offset<T>(base, L.qr);
  t.kr = at_offset<T>(base, L.kr);
  t.acc = at_offset<T>(base, L.acc);
  t.acc2 = at_offset<T>(base, L.acc2);
  t.s = at_offset<T>(base, L.s);
  t.w = at_offset<T>(base, L.w);
  t.p = at_offset<T>(base, L.p);
  t.r = at_offset<T>(base, L.r);
  t.dr = at_offset<T>(base, L.dr);
  t.dp = at_offset<T>(base, L.dp);
  t.lse = at_offset<T>(base, L.lse);
  t.drow = at_offset<T>(base, L.drow);
  t.m = at_offset<T>(base, L.m);
  t.l = at_offset<T>(base, L.l);
  t.alpha = at_offset<T>(base, L.alpha);
  t.lse_r = at_offset<T>(base, L.lse_r);
  return t;
}

// Everything a kernel reads, passed by value. Shapes: q, k, v, y, dy (B, H, T, D);
// lse, drow (B, H, T); runway_lse (B, T); acc, dacc (B, nt, T) doubles; drow_r (B, T)
// doubles; slopes (H) doubles on the device, or null without ALiBi.
template <typename T>
struct Args {
  const T *q = nullptr, *k = nullptr, *v = nullptr, *y = nullptr, *dy = nullptr;
  const T* lse = nullptr;         // saved row lse of S'_h (backward)
  const T* runway_lse = nullptr;  // saved row lse of S_r (rewired)
  const T* drow = nullptr;        // dy . y per row (backward)
  const double* slopes = nullptr;
  const double* acc = nullptr;    // absorption: sum_{j<k<i0(t)} P[k,j] per query tile t
  const double* dacc = nullptr;   // absorption backward: sum_{i>=i1(t)} dR[i,j]
  const double* drow_r = nullptr; // absorption backward: rowsum(dP * P) of the runway head
  int64_t B = 0, H = 0, seq = 0, D = 0;
  int64_t nt = 0;                 // tiles along T
  int64_t kld = 0;                // row stride of the key-side tiles k, v, k_r in shared memory: D + 1
  int tile = kLargestTile;
  T scale = T(1);
  T beta = T(0);
  int64_t runway_head = 0;
  SmemLayout L{};

  __device__ int64_t head_offset(int64_t b, int64_t h) const { return (b * H + h) * seq * D; }
  __device__ int64_t row_offset(int64_t b, int64_t h) const { return (b * H + h) * seq; }
  __device__ double slope(int64_t h) const { return slopes != nullptr ? slopes[h] : 0.0; }
};

// The sizes and inputs every kernel of a call shares (the rest is set per call).
template <typename T>
Args<T> make_args(const AttentionArgs& a, int tile, const T* q, const T* k, const T* v) {
  Args<T> args;
  args.q = q;
  args.k = k;
  args.v = v;
  args.B = a.batch;
  args.H = a.heads;
  args.seq = a.seq;
  args.D = a.head_dim;
  args.tile = tile;
  args.nt = (a.seq + tile - 1) / tile;
  args.kld = a.head_dim + 1;
  args.scale = static_cast<T>(a.scale);
  args.beta = static_cast<T>(a.beta);
  args.runway_head = a.runway_head;
  return args;
}

// Rows [i0, i0 + rows) of the queries against keys [j0, j0 + cols). Element (r, c) is
// query i = i0 + r, key j = j0 + c; it is inside the causal map when j <= i.
struct TilePair {
  int64_t i0, rows, j0, cols;
  __device__ bool valid(int r, int c) const { return r < rows && c < cols && j0 + c <= i0 + r; }
};

__device__ inline TilePair tile_pair(int64_t t, int64_t kt, int tile, int64_t T) {
  const int64_t i0 = t * tile, j0 = kt * tile;
  return {i0, T - i0 < tile ? T - i0 : tile, j0, T - j0 < tile ? T - j0 : tile};
}

// dst (tile rows of stride ld >= D) = rows [row0, row0 + rows) of src (a (T, D) matrix);
// rows after are 0.
template <typename T>
__device__ void load_rows(const T* src, int64_t row0, int64_t rows, int tile, int64_t D, int64_t ld, T* dst) {
  for (int64_t e = threadIdx.x; e < tile * D; e += blockDim.x) {
    const int64_t r = e / D, d = e % D;
    dst[r * ld + d] = r < rows ? src[(row0 + r) * D + d] : T(0);
  }
}

// dst (tile) = src[row0, row0 + rows); 0 after.
template <typename T>
__device__ void load_values(const T* src, int64_t row0, int64_t rows, int tile, T* dst) {
  for (int r = threadIdx.x; r < tile; r += blockDim.x) dst[r] = r < rows ? src[row0 + r] : T(0);
}

template <typename T>
__device__ void zero(T* dst, int64_t n) {
  for (int64_t e = threadIdx.x; e < n; e += blockDim.x) dst[e] = T(0);
}

template <typename T>
__device__ inline T dot(const T* a, const T* b, int64_t D) {
  T s = T(0);
  for (int64_t d = 0; d < D; ++d) s += a[d] * b[d];
  return s;
}

// The logit of a valid tile element (r, c), from sq (query rows) and sk (key rows):
//   S[i,j] = (q_i . k_j) * scale - slope * (i - j),  and with the R tile r_tile
//   S'[i,j] = S[i,j] - beta R[i,j]  for j < i - 1 (R is 0 elsewhere)
// in the CPU kernels' order of operations.
template <typename T>
__device__ inline T tile_logit(const Args<T>& a, const T* sq, const T* sk, const TilePair& tp, int r, int c,
                               double slope, const T* r_tile) {
  T s = dot(sq + r * a.D, sk + c * a.kld, a.D) * a.scale;
  const int64_t i = tp.i0 + r, j = tp.j0 + c;
  if (slope != 0.0) s -= static_cast<T>(slope * static_cast<double>(i - j));
  if (r_tile != nullptr && j + 1 < i) s -= a.beta * r_tile[r * a.tile + c];
  return s;
}

// ---- the runway head's tiles (absorption) ------------------------------------------------

// sm.p (tile x tile) = P[i,j] = exp(S_r[i,j] - runway_lse[i]) for the pair's valid
// elements, 0 elsewhere; loads q_r rows (query tile) into sm.qr and k_r rows (key tile)
// into sm.kr, which stay there for the caller. Starts and ends with a barrier.
template <typename T>
__device__ void runway_p_tile(const Args<T>& a, const Tiles<T>& sm, int64_t b, const TilePair& tp) {
  const int64_t off = a.head_offset(b, a.runway_head);
  __syncthreads();  // earlier readers of these slots are done
  load_rows(a.q + off, tp.i0, tp.rows, a.tile, a.D, a.D, sm.qr);
  load_rows(a.k + off, tp.j0, tp.cols, a.tile, a.D, a.kld, sm.kr);
  load_values(a.runway_lse + b * a.seq, tp.i0, tp.rows, a.tile, sm.lse_r);
  __syncthreads();
  const double slope = a.slope(a.runway_head);
  for (int e = threadIdx.x; e < a.tile * a.tile; e += blockDim.x) {
    const int r = e / a.tile, c = e % a.tile;
    sm.p[e] = tp.valid(r, c) ? dev_exp(tile_logit<T>(a, sm.qr, sm.kr, tp, r, c, slope, nullptr) - sm.lse_r[r]) : T(0);
  }
  __syncthreads();
}

// sm.r (tile x tile) = R[i,j] = acc[t][j] + sum_{k in tile t, j<k<i} P[k,j] for j < i - 1,
// 0 elsewhere (from sm.p of the same pair), one thread per column walking down the rows
// in double, as the CPU's acc. Ends with a barrier.
template <typename T>
__device__ void absorption_r_tile(const Args<T>& a, const Tiles<T>& sm, int64_t b, int64_t t, const TilePair& tp) {
  const double* acc = a.acc + (b * a.nt + t) * a.seq;
  for (int c = threadIdx.x; c < a.tile; c += blockDim.x) {
    const int64_t j = tp.j0 + c;
    double run = c < tp.cols ? acc[j] : 0.0;
    for (int r = 0; r < a.tile; ++r) {
      const int64_t i = tp.i0 + r;
      sm.r[r * a.tile + c] = tp.valid(r, c) && j + 1 < i ? static_cast<T>(run) : T(0);
      if (tp.valid(r, c) && j < i) run += static_cast<double>(sm.p[r * a.tile + c]);
    }
  }
  __syncthreads();
}

// sm.dr (tile x tile) = dR[i,j] = -beta sum_h dS'_h[i,j] for i - j >= 2, 0 elsewhere,
// where per head (from the saved lse_h and drow_h = dy_h . y_h):
//   A'_h = exp(S'_h - lse_h);  dS'_h = A'_h * (dy_h v_h^T - drow_h)
// Needs sm.r of the pair; uses (overwrites) sm.q, sm.k, sm.v, sm.dy, sm.lse, sm.drow.
// Ends with a barrier.
template <typename T>
__device__ void absorption_dr_tile(const Args<T>& a, const Tiles<T>& sm, int64_t b, const TilePair& tp) {
  zero(sm.dr, a.tile * a.tile);
  for (int64_t h = 0; h < a.H; ++h) {
    const int64_t off = a.head_offset(b, h);
    __syncthreads();  // the previous head's tiles are read
    load_rows(a.q + off, tp.i0, tp.rows, a.tile, a.D, a.D, sm.q);
    load_rows(a.dy + off, tp.i0, tp.rows, a.tile, a.D, a.D, sm.dy);
    load_rows(a.k + off, tp.j0, tp.cols, a.tile, a.D, a.kld, sm.k);
    load_rows(a.v + off, tp.j0, tp.cols, a.tile, a.D, a.kld, sm.v);
    load_values(a.lse + a.row_offset(b, h), tp.i0, tp.rows, a.tile, sm.lse);
    load_values(a.drow + a.row_offset(b, h), tp.i0, tp.rows, a.tile, sm.drow);
    __syncthreads();
    const double slope = a.slope(h);
    for (int e = threadIdx.x; e < a.tile * a.tile; e += blockDim.x) {
      const int r = e / a.tile, c = e % a.tile;
      if (!tp.valid(r, c)) continue;
      const T attn = dev_exp(tile_logit(a, sm.q, sm.k, tp, r, c, slope, sm.r) - sm.lse[r]);
      sm.dr[e] += attn * (dot(sm.dy + r * a.D, sm.v + c * a.kld, a.D) - sm.drow[r]);
    }
  }
  __syncthreads();
  for (int e = threadIdx.x; e < a.tile * a.tile; e += blockDim.x) {
    const int r = e / a.tile, c = e % a.tile;
    const bool two_apart = tp.valid(r, c) && tp.j0 + c + 1 < tp.i0 + r;
    sm.dr[e] = two_apart ? -a.beta * sm.dr[e] : T(0);
  }
  __syncthreads();
}

// sm.dp (tile x tile) = dP[k,j] = dacc[t][j] + sum_{i in tile t, i>k} dR[i,j] for j < k,
// 0 elsewhere (from sm.dr), one thread per column walking up the rows in double.
// Ends with a barrier.
template <typename T>
__device__ void absorption_dp_tile(const Args<T>& a, const Tiles<T>& sm, int64_t b, int64_t t, const TilePair& tp) {
  const double* dacc = a.dacc + (b * a.nt + t) * a.seq;
  for (int c = threadIdx.x; c < a.tile; c += blockDim.x) {
    const int64_t j = tp.j0 + c;
    double run = c < tp.cols ? dacc[j] : 0.0;
    for (int r = a.tile - 1; r >= 0; --r) {
      const int64_t k = tp.i0 + r;
      sm.dp[r * a.tile + c] = tp.valid(r, c) && j < k ? static_cast<T>(run) : T(0);
      run += static_cast<double>(sm.dr[r * a.tile + c]);
    }
  }
  __syncthreads();
}

// P, R, dR and dP tiles of pair (t, kt): what the runway-head gradient kernels need.
template <typename T>
__device__ void absorption_grad_tiles(const Args<T>& a, const Tiles<T>& sm, int64_t b, int64_t t, const TilePair& tp) {
  runway_p_tile(a, sm, b, tp);
  absorption_r_tile(a, sm, b, t, tp);
  absorption_dr_tile(a, sm, b, tp);
  absorption_dp_tile(a, sm, b, t, tp);
}

// ============================================================================
// Kernels
// ============================================================================

// Forward, one block per (b, hh, query tile t), hh < grid_heads, head h = head0 + hh.
// Online softmax over the key tiles kt <= t of S'_h (S_h when not `runway`):
//   m_new = max(m, max_c s);  alpha = exp(m - m_new);  p = exp(s - m_new)
//   l = l alpha + sum_c p;  acc = acc alpha + p v          (acc only when y is given)
// then y rows = acc / l and lse[b*lse_b_stride + h*lse_h_stride + i] = m + log l.
// Without y (the runway head's lse pass) v is not read. Every row i of tile t has key
// j0 (kt) <= i0 (t) <= i in every key tile it visits, so each tile's max is finite.
template <typename T>
__global__ void blockwise_forward_kernel(Args<T> a, int64_t head0, int64_t grid_heads, bool runway, T* y, T* lse,
                                         int64_t lse_b_stride, int64_t lse_h_stride) {
  extern __shared__ __align__(16) unsigned char smem[];
  const Tiles<T> sm = carve<T>(smem, a.L);
  const int64_t t = blockIdx.x % a.nt;
  const int64_t h = head0 + (blockIdx.x / a.nt) % grid_heads;
  const int64_t b = blockIdx.x / (a.nt * grid_heads);
  const int64_t off = a.head_offset(b, h), D = a.D;
  const int tile = a.tile;
  const double slope = a.slope(h);
  const TilePair rows_of_t = tile_pair(t, 0, tile, a.seq);
  const int64_t i0 = rows_of_t.i0, rows = rows_of_t.rows;

  load_rows(a.q + off, i0, rows, tile, D, D, sm.q);
  if (y != nullptr) zero(sm.acc, tile * D);
  for (int r = threadIdx.x; r < tile; r += blockDim.x) {
    sm.m[r] = neg_infinity<T>();
    sm.l[r] = T(0);
  }
  for (int64_t kt = 0; kt <= t; ++kt) {
    const TilePair tp = tile_pair(t, kt, tile, a.seq);
    if (runway) {
      runway_p_tile(a, sm, b, tp);
      absorption_r_tile(a, sm, b, t, tp);
    }
    __syncthreads();  // the previous key tile's s and v are read
    load_rows(a.k + off, tp.j0, tp.cols, tile, D, a.kld, sm.k);
    if (y != nullptr) load_rows(a.v + off, tp.j0, tp.cols, tile, D, a.kld, sm.v);
    __syncthreads();
    for (int e = threadIdx.x; e < tile * tile; e += blockDim.x) {
      const int r = e / tile, c = e % tile;
      sm.s[e] = tp.valid(r, c) ? tile_logit(a, sm.q, sm.k, tp, r, c, slope, runway ? sm.r : nullptr)
                               : neg_infinity<T>();
    }
    __syncthreads();
    for (int r = threadIdx.x; r < rows; r += blockDim.x) {
      T* srow = sm.s + r * tile;
      T tile_max = neg_infinity<T>();
      for (int c = 0; c < tile; ++c) tile_max = MaxOp()(tile_max, srow[c]);
      const T m_new = MaxOp()(sm.m[r], tile_max);
      const T alpha = dev_exp(sm.m[r] - m_new);  // 0 on the first tile (m = -inf)
      T sum = T(0);
      for (int c = 0; c < tile; ++c) {
        const T pe = dev_exp(srow[c] - m_new);  // 0 outside the map (s = -inf)
        srow[c] = pe;
        sum += pe;
      }
      sm.l[r] = sm.l[r] * alpha + sum;
      sm.m[r] = m_new;
      sm.alpha[r] = alpha;
    }
    __syncthreads();
    if (y != nullptr) {
      for (int64_t e = threadIdx.x; e < rows * D; e += blockDim.x) {
        const int64_t r = e / D, d = e % D;
        T acc = sm.acc[e] * sm.alpha[r];
        for (int64_t c = 0; c < tp.cols; ++c) acc += sm.s[r * tile + c] * sm.v[c * a.kld + d];
        sm.acc[e] = acc;
      }
    }
  }
  __syncthreads();
  if (y != nullptr) {
    for (int64_t e = threadIdx.x; e < rows * D; e += blockDim.x) y[off + i0 * D + e] = sm.acc[e] / sm.l[e / D];
  }
  for (int r = threadIdx.x; r < rows; r += blockDim.x) {
    lse[b * lse_b_stride + h * lse_h_stride + i0 + r] = sm.m[r] + dev_log(sm.l[r]);
  }
}

// Backward dq, one block per (b, h, query tile t), over key tiles kt <= t:
//   A' = exp(S'_h - lse_h);  dS' = A' * (dy v^T - drow_h);  dq rows = scale * dS' k
// (overwrites dq; with `runway`, S' = S - beta R from the pair's R tile).
template <typename T>
__global__ void blockwise_dq_kernel(Args<T> a, bool runway, T* dq) {
  extern __shared__ __align__(16) unsigned char smem[];
  const Tiles<T> sm = carve<T>(smem, a.L);
  const int64_t t = blockIdx.x % a.nt;
  const int64_t h = (blockIdx.x / a.nt) % a.H;
  const int64_t b = blockIdx.x / (a.nt * a.H);
  const int64_t off = a.head_offset(b, h), D = a.D;
  const int tile = a.tile;
  const double slope = a.slope(h);
  const TilePair rows_of_t = tile_pair(t, 0, tile, a.seq);
  const int64_t i0 = rows_of_t.i0, rows = rows_of_t.rows;

  load_rows(a.q + off, i0, rows, tile, D, D, sm.q);
  load_rows(a.dy + off, i0, rows, tile, D, D, sm.dy);
  load_values(a.lse + a.row_offset(b, h), i0, rows, tile, sm.lse);
  load_values(a.drow + a.row_offset(b, h), i0, rows, tile, sm.drow);
  zero(sm.acc, tile * D);
  for (int64_t kt = 0; kt <= t; ++kt) {
    const TilePair tp = tile_pair(t, kt, tile, a.seq);
    if (runway) {
      runway_p_tile(a, sm, b, tp);
      absorption_r_tile(a, sm, b, t, tp);
    }
    __syncthreads();  // the previous key tile's s and k are read
    load_rows(a.k + off, tp.j0, tp.cols, tile, D, a.kld, sm.k);
    load_rows(a.v + off, tp.j0, tp.cols, tile, D, a.kld, sm.v);
    __syncthreads();
    for (int e = threadIdx.x; e < tile * tile; e += blockDim.x) {
      const int r = e / tile, c = e % tile;
      T ds = T(0);
      if (tp.valid(r, c)) {
        const T attn = dev_exp(tile_logit(a, sm.q, sm.k, tp, r, c, slope, runway ? sm.r : nullptr) - sm.lse[r]);
        ds = attn * (dot(sm.dy + r * D, sm.v + c * a.kld, D) - sm.drow[r]);
      }
      sm.s[e] = ds;
    }
    __syncthreads();
    for (int64_t e = threadIdx.x; e < rows * D; e += blockDim.x) {
      const int64_t r = e / D, d = e % D;
      T acc = sm.acc[e];
      for (int64_t c = 0; c < tp.cols; ++c) acc += sm.s[r * tile + c] * sm.k[c * a.kld + d];
      sm.acc[e] = acc;
    }
  }
  __syncthreads();
  for (int64_t e = threadIdx.x; e < rows * D; e += blockDim.x) dq[off + i0 * D + e] = a.scale * sm.acc[e];
}

// Backward dk, dv, one block per (b, h, key tile kt), over query tiles t >= kt:
//   dv rows += A'^T dy;  dk rows += scale * dS'^T q      (overwrites dk, dv)
template <typename T>
__global__ void blockwise_dkdv_kernel(Args<T> a, bool runway, T* dk, T* dv) {
  extern __shared__ __align__(16) unsigned char smem[];
  const Tiles<T> sm = carve<T>(smem, a.L);
  const int64_t kt = blockIdx.x % a.nt;
  const int64_t h = (blockIdx.x / a.nt) % a.H;
  const int64_t b = blockIdx.x / (a.nt * a.H);
  const int64_t off = a.head_offset(b, h), D = a.D;
  const int tile = a.tile;
  const double slope = a.slope(h);
  const TilePair cols_of_kt = tile_pair(kt, kt, tile, a.seq);
  const int64_t j0 = cols_of_kt.j0, cols = cols_of_kt.cols;

  load_rows(a.k + off, j0, cols, tile, D, a.kld, sm.k);
  load_rows(a.v + off, j0, cols, tile, D, a.kld, sm.v);
  zero(sm.acc, tile * D);
  zero(sm.acc2, tile * D);
  for (int64_t t = kt; t < a.nt; ++t) {
    const TilePair tp = tile_pair(t, kt, tile, a.seq);
    if (runway) {
      runway_p_tile(a, sm, b, tp);
      absorption_r_tile(a, sm, b, t, tp);
    }
    __syncthreads();  // the previous query tile's s, w, q, dy are read
    load_rows(a.q + off, tp.i0, tp.rows, tile, D, D, sm.q);
    load_rows(a.dy + off, tp.i0, tp.rows, tile, D, D, sm.dy);
    load_values(a.lse + a.row_offset(b, h), tp.i0, tp.rows, tile, sm.lse);
    load_values(a.drow + a.row_offset(b, h), tp.i0, tp.rows, tile, sm.drow);
    __syncthreads();
    for (int e = threadIdx.x; e < tile * tile; e += blockDim.x) {
      const int r = e / tile, c = e % tile;
      T attn = T(0), ds = T(0);
      if (tp.valid(r, c)) {
        attn = dev_exp(tile_logit(a, sm.q, sm.k, tp, r, c, slope, runway ? sm.r : nullptr) - sm.lse[r]);
        ds = attn * (dot(sm.dy + r * D, sm.v + c * a.kld, D) - sm.drow[r]);
      }
      sm.w[e] = attn;
      sm.s[e] = ds;
    }
    __syncthreads();
    for (int64_t e = threadIdx.x; e < cols * D; e += blockDim.x) {
      const int64_t c = e / D, d = e % D;
      T dk_acc = sm.acc[e], dv_acc = sm.acc2[e];
      for (int64_t r = 0; r < tp.rows; ++r) {
        dv_acc += sm.w[r * tile + c] * sm.dy[r * D + d];
        dk_acc += sm.s[r * tile + c] * sm.q[r * D + d];
      }
      sm.acc[e] = dk_acc;
      sm.acc2[e] = dv_acc;
    }
  }
  __syncthreads();
  for (int64_t e = threadIdx.x; e < cols * D; e += blockDim.x) {
    dk[off + j0 * D + e] = a.scale * sm.acc[e];
    dv[off + j0 * D + e] = sm.acc2[e];
  }
}

// Row dots: out[row] = dy[row] . y[row] over D, rows of (B, H, T, D). One thread per row.
template <typename T>
__global__ void row_dot_kernel(const T* dy, const T* y, T* out, int64_t rows, int64_t D) {
  for (int64_t row = grid_start(); row < rows; row += grid_step()) out[row] = dot(dy + row * D, y + row * D, D);
}

// The block of a column-sum kernel, one per (b, query tile t, key tile kt): its tile pair
// and its slice of the (B, nt, T) output. Tiles above the diagonal (kt > t) hold only
// zeros of P and dR: their output is zeroed here and `live` is false (the whole block then
// leaves together, before any barrier).
struct ColumnSumBlock {
  int64_t b, t;
  TilePair tp;
  double* out;
  bool live;
};

template <typename T>
__device__ ColumnSumBlock column_sum_block(const Args<T>& a, double* sums) {
  const int64_t kt = blockIdx.x % a.nt;
  const int64_t t = (blockIdx.x / a.nt) % a.nt;
  const int64_t b = blockIdx.x / (a.nt * a.nt);
  const TilePair tp = tile_pair(t, kt, a.tile, a.seq);
  double* out = sums + (b * a.nt + t) * a.seq + tp.j0;
  if (kt > t)
    for (int c = threadIdx.x; c < tp.cols; c += blockDim.x) out[c] = 0.0;
  return {b, t, tp, out, kt <= t};
}

// Absorption column sums, one block per (b, query tile t, key tile kt):
//   colsum[b][t][j] = sum_{k in tile t, k > j} P[k,j]   for j in key tile kt
// (0 for kt > t, where every P[k,j] of the tile is 0).
template <typename T>
__global__ void absorption_colsum_kernel(Args<T> a, double* colsum) {
  extern __shared__ __align__(16) unsigned char smem[];
  const Tiles<T> sm = carve<T>(smem, a.L);
  const ColumnSumBlock cb = column_sum_block(a, colsum);
  if (!cb.live) return;
  const TilePair tp = cb.tp;
  double* out = cb.out;
  runway_p_tile(a, sm, cb.b, tp);
  for (int c = threadIdx.x; c < tp.cols; c += blockDim.x) {
    double sum = 0.0;
    for (int r = 0; r < tp.rows; ++r)
      if (tp.i0 + r > tp.j0 + c) sum += static_cast<double>(sm.p[r * a.tile + c]);
    out[c] = sum;
  }
}

// Absorption backward column sums of dR, one block per (b, query tile t, key tile kt):
//   drcol[b][t][j] = sum_{i in tile t} dR[i,j]   for j in key tile kt   (0 for kt > t)
template <typename T>
__global__ void absorption_dr_colsum_kernel(Args<T> a, double* drcol) {
  extern __shared__ __align__(16) unsigned char smem[];
  const Tiles<T> sm = carve<T>(smem, a.L);
  const ColumnSumBlock cb = column_sum_block(a, drcol);
  if (!cb.live) return;
  const int64_t b = cb.b, t = cb.t;
  const TilePair tp = cb.tp;
  double* out = cb.out;
  runway_p_tile(a, sm, b, tp);
  absorption_r_tile(a, sm, b, t, tp);
  absorption_dr_tile(a, sm, b, tp);
  for (int c = threadIdx.x; c < tp.cols; c += blockDim.x) {
    double sum = 0.0;
    for (int r = 0; r < tp.rows; ++r) sum += static_cast<double>(sm.dr[r * a.tile + c]);
    out[c] = sum;
  }
}

// Exclusive scans over the tile index of (B, nt, T) doubles, in place, one thread per
// (b, j): forward, buf[t] = sum_{t' < t} buf[t']; reverse, buf[t] = sum_{t' > t} buf[t'].
__global__ void tile_scan_kernel(double* buf, int64_t batch, int64_t nt, int64_t seq, bool reverse) {
  for (int64_t idx = grid_start(); idx < batch * seq; idx += grid_step()) {
    const int64_t b = idx / seq, j = idx % seq;
    double* col = buf + b * nt * seq + j;
    double run = 0.0;
    for (int64_t s = 0; s < nt; ++s) {
      const int64_t t = reverse ? nt - 1 - s : s;
      const double x = col[t * seq];
      col[t * seq] = run;
      run += x;
    }
  }
}

// Runway head dq, one block per (b, query tile t). Two sweeps over key tiles kt <= t:
//   1. drow_r[k] = sum_j dP[k,j] P[k,j]  (double; written to drow_r_out for the dk kernel)
//   2. dS_r = P * (dP - drow_r);  dq_r rows += scale * dS_r k_r
template <typename T>
__global__ void absorption_runway_dq_kernel(Args<T> a, double* drow_r_out, T* dq) {
  extern __shared__ __align__(16) unsigned char smem[];
  const Tiles<T> sm = carve<T>(smem, a.L);
  const int64_t t = blockIdx.x % a.nt;
  const int64_t b = blockIdx.x / a.nt;
  const int64_t off = a.head_offset(b, a.runway_head), D = a.D;
  const int tile = a.tile;
  const TilePair rows_of_t = tile_pair(t, 0, tile, a.seq);
  const int64_t i0 = rows_of_t.i0, rows = rows_of_t.rows;

  for (int r = threadIdx.x; r < tile; r += blockDim.x) sm.drow_r[r] = 0.0;
  zero(sm.acc, tile * D);
  for (int64_t kt = 0; kt <= t; ++kt) {
    const TilePair tp = tile_pair(t, kt, tile, a.seq);
    absorption_grad_tiles(a, sm, b, t, tp);
    for (int r = threadIdx.x; r < rows; r += blockDim.x) {
      double sum = 0.0;
      for (int c = 0; c < tile; ++c) sum += static_cast<double>(sm.dp[r * tile + c]) * sm.p[r * tile + c];
      sm.drow_r[r] += sum;
    }
  }
  __syncthreads();
  for (int r = threadIdx.x; r < rows; r += blockDim.x) drow_r_out[b * a.seq + i0 + r] = sm.drow_r[r];
  for (int64_t kt = 0; kt <= t; ++kt) {
    const TilePair tp = tile_pair(t, kt, tile, a.seq);
    absorption_grad_tiles(a, sm, b, t, tp);
    for (int e = threadIdx.x; e < tile * tile; e += blockDim.x) {
      const int r = e / tile, c = e % tile;
      sm.s[e] = tp.valid(r, c) ? static_cast<T>(static_cast<double>(sm.p[e]) *
                                                (static_cast<double>(sm.dp[e]) - sm.drow_r[r]))
                               : T(0);
    }
    __syncthreads();
    for (int64_t e = threadIdx.x; e < rows * D; e += blockDim.x) {
      const int64_t r = e / D, d = e % D;
      T acc = sm.acc[e];
      for (int64_t c = 0; c < tp.cols; ++c) acc += sm.s[r * tile + c] * sm.kr[c * a.kld + d];
      sm.acc[e] = acc;
    }
  }
  __syncthreads();
  for (int64_t e = threadIdx.x; e < rows * D; e += blockDim.x) dq[off + i0 * D + e] += a.scale * sm.acc[e];
}

// Runway head dk, one block per (b, key tile kt), over query tiles t >= kt:
//   dS_r = P * (dP - drow_r);  dk_r rows += scale * dS_r^T q_r     (drow_r from the dq kernel)
template <typename T>
__global__ void absorption_runway_dk_kernel(Args<T> a, T* dk) {
  extern __shared__ __align__(16) unsigned char smem[];
  const Tiles<T> sm = carve<T>(smem, a.L);
  const int64_t kt = blockIdx.x % a.nt;
  const int64_t b = blockIdx.x / a.nt;
  const int64_t off = a.head_offset(b, a.runway_head), D = a.D;
  const int tile = a.tile;
  const TilePair cols_of_kt = tile_pair(kt, kt, tile, a.seq);
  const int64_t j0 = cols_of_kt.j0, cols = cols_of_kt.cols;

  zero(sm.acc, tile * D);
  for (int64_t t = kt; t < a.nt; ++t) {
    const TilePair tp = tile_pair(t, kt, tile, a.seq);
    absorption_grad_tiles(a, sm, b, t, tp);
    for (int e = threadIdx.x; e < tile * tile; e += blockDim.x) {
      const int r = e / tile, c = e % tile;
      sm.s[e] = tp.valid(r, c) ? static_cast<T>(static_cast<double>(sm.p[e]) *
                                                (static_cast<double>(sm.dp[e]) - a.drow_r[b * a.seq + tp.i0 + r]))
                               : T(0);
    }
    __syncthreads();
    for (int64_t e = threadIdx.x; e < cols * D; e += blockDim.x) {
      const int64_t c = e / D, d = e % D;
      T acc = sm.acc[e];
      for (int64_t r = 0; r < tp.rows; ++r) acc += sm.s[r * tile + c] * sm.qr[r * D + d];
      sm.acc[e] = acc;
    }
  }
  __syncthreads();
  for (int64_t e = threadIdx.x; e < cols * D; e += blockDim.x) dk[off + j0 * D + e] += a.scale * sm.acc[e];
}

}  // namespace blockwise
}  // namespace cuda_kernels

using namespace cuda_kernels;  // kThreads, elementwise_grid's constants
using namespace cuda_host;     // cuda/cuda_common.cuh
namespace bw = cuda_kernels::blockwise;

namespace {

// Every part a call's kernels may use: the tile is chosen so that the largest fits.
unsigned all_parts(const AttentionArgs& a) {
  unsigned parts = bw::kPartV | bw::kPartDy | bw::kPartAcc | bw::kPartAcc2 | bw::kPartW;
  if (a.rewired) parts |= bw::kPartRunway | bw::kPartRunwayGrad;
  return parts;
}

// Grid of `blocks` blocks, checked against the launch limit.
unsigned block_grid(const char* kernel, int64_t blocks) {
  if (blocks > INT_MAX) {
    throw Error(std::string("cuda attention_blockwise: ") + kernel + " needs " + std::to_string(blocks) +
                " blocks, more than one launch takes");
  }
  return static_cast<unsigned>(blocks);
}

// Allows `kernel` its dynamic shared memory (above the 48 KiB default when needed).
template <typename Kernel>
void allow_smem(Kernel* kernel, size_t bytes) {
  RUNWAY_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

}  // namespace

// The largest tile (32, 16 or 8) whose biggest kernel fits in the device's shared memory
// per block (with opt-in), or 0 when none does (the caller then runs the Backend default).
int CudaBackend::blockwise_tile(DType dt, const AttentionArgs& a) {
  int limit = 0;
  RUNWAY_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device_index_));
  for (int tile = bw::kLargestTile; tile >= 8; tile /= 2) {
    if (bw::smem_layout(tile, a.head_dim, all_parts(a), dtype_size(dt)).bytes <= static_cast<size_t>(limit)) return tile;
  }
  return 0;
}

// Forward: (rewired) runway lse, acc, then every head (see the top of the file).
template <typename T>
void CudaBackend::blockwise_forward_impl(const AttentionArgs& a, int tile, const T* q, const T* k, const T* v, T* y,
                                         T* lse, T* runway_lse) {
  const int64_t B = a.batch, H = a.heads, N = a.seq, D = a.head_dim;
  if (B == 0 || H == 0 || N == 0) return;
  bw::Args<T> args = bw::make_args<T>(a, tile, q, k, v);
  args.runway_lse = runway_lse;
  const int64_t nt = args.nt;

  std::unique_ptr<ScratchBuffer> slopes_buf, acc_buf;
  if (!a.alibi_slopes.empty()) {
    slopes_buf.reset(new ScratchBuffer(*allocator_, sizeof(double) * H));
    copy_from_host(slopes_buf->as<void>(), a.alibi_slopes.data(), sizeof(double) * H);
    args.slopes = slopes_buf->as<double>();
  }

  if (a.rewired) {
    // (a) runway_lse (B, T): the forward kernel on the runway head alone, without y.
    bw::Args<T> lse_args = args;
    lse_args.L = bw::smem_layout(tile, D, 0, sizeof(T));
    allow_smem(bw::blockwise_forward_kernel<T>, lse_args.L.bytes);
    bw::blockwise_forward_kernel<T><<<block_grid("blockwise_forward_kernel", B * nt), kThreads, lse_args.L.bytes,
                                      stream_>>>(lse_args, a.runway_head, 1, false, nullptr, runway_lse, N, 0);
    RUNWAY_CUDA_LAUNCH_CHECK("blockwise_forward_kernel (runway lse)");
    // (b) acc (B, nt, T): column sums per query tile, then an exclusive prefix over tiles.
    acc_buf.reset(new ScratchBuffer(*allocator_, sizeof(double) * B * nt * N));
    bw::Args<T> p_args = args;
    p_args.L = bw::smem_layout(tile, D, bw::kPartRunway, sizeof(T));
    allow_smem(bw::absorption_colsum_kernel<T>, p_args.L.bytes);
    bw::absorption_colsum_kernel<T><<<block_grid("absorption_colsum_kernel", B * nt * nt), kThreads, p_args.L.bytes,
                                      stream_>>>(p_args, acc_buf->as<double>());
    RUNWAY_CUDA_LAUNCH_CHECK("absorption_colsum_kernel");
    bw::tile_scan_kernel<<<elementwise_grid(B * N), kThreads, 0, stream_>>>(acc_buf->as<double>(), B, nt, N, false);
    RUNWAY_CUDA_LAUNCH_CHECK("tile_scan_kernel (acc)");
    args.acc = acc_buf->as<double>();
  }

  // (c) every head: y and lse (B, H, T).
  args.L = bw::smem_layout(tile, D, bw::kPartV | bw::kPartAcc | (a.rewired ? bw::kPartRunway : 0u), sizeof(T));
  allow_smem(bw::blockwise_forward_kernel<T>, args.L.bytes);
  bw::blockwise_forward_kernel<T><<<block_grid("blockwise_forward_kernel", B * H * nt), kThreads, args.L.bytes,
                                    stream_>>>(args, 0, H, a.rewired, y, lse, H * N, N);
  RUNWAY_CUDA_LAUNCH_CHECK("blockwise_forward_kernel");
}

// Backward: drow = dy . y, (rewired) acc, dq and dk, dv of every head, then (absorption,
// not detached) dR's suffix state dacc and the runway head's extra dq, dk.
template <typename T>
void CudaBackend::blockwise_backward_impl(const AttentionArgs& a, int tile, const T* q, const T* k, const T* v,
                                          const T* y, const T* lse, const T* runway_lse, const T* dy, T* dq, T* dk,
                                          T* dv) {
  const int64_t B = a.batch, H = a.heads, N = a.seq, D = a.head_dim;
  if (B == 0 || H == 0 || N == 0 || D == 0) return;
  if (a.rewired && runway_lse == nullptr) throw Error("cuda attention_blockwise_backward: rewired needs runway_lse");
  bw::Args<T> args = bw::make_args<T>(a, tile, q, k, v);
  args.y = y;
  args.dy = dy;
  args.lse = lse;
  args.runway_lse = runway_lse;
  const int64_t nt = args.nt;
  const unsigned runway_part = a.rewired ? bw::kPartRunway : 0u;

  std::unique_ptr<ScratchBuffer> slopes_buf, acc_buf;
  if (!a.alibi_slopes.empty()) {
    slopes_buf.reset(new ScratchBuffer(*allocator_, sizeof(double) * H));
    copy_from_host(slopes_buf->as<void>(), a.alibi_slopes.data(), sizeof(double) * H);
    args.slopes = slopes_buf->as<double>();
  }

  // drow (B, H, T) = rowsum(dy * y): the softmax backward's row term, from the saved y.
  ScratchBuffer drow_buf(*allocator_, sizeof(T) * B * H * N);
  bw::row_dot_kernel<T><<<elementwise_grid(B * H * N), kThreads, 0, stream_>>>(dy, y, drow_buf.as<T>(), B * H * N, D);
  RUNWAY_CUDA_LAUNCH_CHECK("row_dot_kernel");
  args.drow = drow_buf.as<T>();

  if (a.rewired) {  // acc, as in the forward
    acc_buf.reset(new ScratchBuffer(*allocator_, sizeof(double) * B * nt * N));
    bw::Args<T> p_args = args;
    p_args.L = bw::smem_layout(tile, D, bw::kPartRunway, sizeof(T));
    allow_smem(bw::absorption_colsum_kernel<T>, p_args.L.bytes);
    bw::absorption_colsum_kernel<T><<<block_grid("absorption_colsum_kernel", B * nt * nt), kThreads, p_args.L.bytes,
                                      stream_>>>(p_args, acc_buf->as<double>());
    RUNWAY_CUDA_LAUNCH_CHECK("absorption_colsum_kernel");
    bw::tile_scan_kernel<<<elementwise_grid(B * N), kThreads, 0, stream_>>>(acc_buf->as<double>(), B, nt, N, false);
    RUNWAY_CUDA_LAUNCH_CHECK("tile_scan_kernel (acc)");
    args.acc = acc_buf->as<double>();
  }

  // Every head: dq (per query tile), dk and dv (per key tile).
  {
    bw::Args<T> dq_args = args;
    dq_args.L = bw::smem_layout(tile, D, bw::kPartV | bw::kPartDy | bw::kPartAcc | runway_part, sizeof(T));
    allow_smem(bw::blockwise_dq_kernel<T>, dq_args.L.bytes);
    bw::blockwise_dq_kernel<T><<<block_grid("blockwise_dq_kernel", B * H * nt), kThreads, dq_args.L.bytes,
                                 stream_>>>(dq_args, a.rewired, dq);
    RUNWAY_CUDA_LAUNCH_CHECK("blockwise_dq_kernel");
    bw::Args<T> dkdv_args = args;
    dkdv_args.L = bw::smem_layout(tile, D, bw::kPartV | bw::kPartDy | bw::kPartAcc | bw::kPartAcc2 | bw::kPartW |
                                               runway_part, sizeof(T));
    allow_smem(bw::blockwise_dkdv_kernel<T>, dkdv_args.L.bytes);
    bw::blockwise_dkdv_kernel<T><<<block_grid("blockwise_dkdv_kernel", B * H * nt), kThreads, dkdv_args.L.bytes,
                                   stream_>>>(dkdv_args, a.rewired, dk, dv);
    RUNWAY_CUDA_LAUNCH_CHECK("blockwise_dkdv_kernel");
  }

  // Through R into the runway head. With beta == 0, dR = 0 and this adds exact zeros,
  // so it is skipped (as the materialised kernels skip it).
  if (!a.rewired || a.detach || a.beta == 0.0) return;
  blockwise_runway_backward_impl(a, args, dq, dk);
}

// dacc (B, nt, T): column sums of dR = -beta sum_h dS'_h per query tile, then an exclusive
// suffix over tiles; then the runway head's dq (and rowsum(dP * P)), then its dk.
template <typename T, typename KernelArgs>
void CudaBackend::blockwise_runway_backward_impl(const AttentionArgs& a, KernelArgs args, T* dq, T* dk) {
  const int64_t B = a.batch, N = a.seq, nt = args.nt;
  const int tile = args.tile;
  const int64_t D = a.head_dim;
  const unsigned grad_parts = bw::kPartV | bw::kPartDy | bw::kPartAcc | bw::kPartRunway | bw::kPartRunwayGrad;
  ScratchBuffer dacc_buf(*allocator_, sizeof(double) * B * nt * N);
  ScratchBuffer drow_r_buf(*allocator_, sizeof(double) * B * N);
  args.L = bw::smem_layout(tile, D, grad_parts, sizeof(T));
  // dacc (B, nt, T): column sums of dR per query tile, then an exclusive suffix over tiles.
  allow_smem(bw::absorption_dr_colsum_kernel<T>, args.L.bytes);
  bw::absorption_dr_colsum_kernel<T><<<block_grid("absorption_dr_colsum_kernel", B * nt * nt), kThreads,
                                       args.L.bytes, stream_>>>(args, dacc_buf.as<double>());
  RUNWAY_CUDA_LAUNCH_CHECK("absorption_dr_colsum_kernel");
  bw::tile_scan_kernel<<<elementwise_grid(B * N), kThreads, 0, stream_>>>(dacc_buf.as<double>(), B, nt, N, true);
  RUNWAY_CUDA_LAUNCH_CHECK("tile_scan_kernel (dacc)");
  args.dacc = dacc_buf.as<double>();
  // The runway head's dq (and drow_r), then its dk.
  allow_smem(bw::absorption_runway_dq_kernel<T>, args.L.bytes);
  bw::absorption_runway_dq_kernel<T><<<block_grid("absorption_runway_dq_kernel", B * nt), kThreads, args.L.bytes,
                                       stream_>>>(args, drow_r_buf.as<double>(), dq);
  RUNWAY_CUDA_LAUNCH_CHECK("absorption_runway_dq_kernel");
  args.drow_r = drow_r_buf.as<double>();
  allow_smem(bw::absorption_runway_dk_kernel<T>, args.L.bytes);
  bw::absorption_runway_dk_kernel<T><<<block_grid("absorption_runway_dk_kernel", B * nt), kThreads, args.L.bytes,
                                       stream_>>>(args, dk);
  RUNWAY_CUDA_LAUNCH_CHECK("absorption_runway_dk_kernel");
}

void CudaBackend::attention_blockwise_forward_cuda(DType dt, const AttentionArgs& args, const void* q,
                                                   const void* k,
                                              const void* v, void* y, void* lse, void* runway_lse,
                                              void* runway_acc) {
  check_attention_args("attention_blockwise_forward", args);
  // two_hop: R[i,j] = sum_{j<k<i} P[i,k] P[k,j] is O(T^3) by definition and its backward
  // needs dP = L(L(P)^T dR), a sum over every later row; the CPU materialises its
  // backward too. The kernel's default runs the materialised kernels with the maps in
  // scratch for the duration of the call (leaving lse and runway_lse at 0, which its
  // backward does not read). Likewise when no tile fits the shared memory.
  const int tile = args.two_hop && args.rewired ? 0 : blockwise_tile(dt, args);
  if (tile == 0) {
    attention_blockwise_forward_default(*this, dt, args, q, k, v, y, lse, runway_lse, runway_acc);
    return;
  }
  // The backward rebuilds acc per tile (column sums and a scan) rather than walking back
  // from the end state the CPU kernels save, so runway_acc is saved as zeros.
  if (args.rewired && runway_acc) fill(DType::Float64, runway_acc, args.batch * args.seq, 0.0);
  dispatch_float(dt, "attention_blockwise_forward", [&](auto tag) {
    using T = decltype(tag);
    blockwise_forward_impl<T>(args, tile, static_cast<const T*>(q), static_cast<const T*>(k),
                              static_cast<const T*>(v), static_cast<T*>(y), static_cast<T*>(lse),
                              static_cast<T*>(runway_lse));
  });
}

void CudaBackend::attention_blockwise_backward_cuda(DType dt, const AttentionArgs& args, const void* q,
                                                    const void* k,
                                               const void* v, const void* y, const void* lse,
                                               const void* runway_lse, const void* runway_acc, const void* dy,
                                               void* dq, void* dk, void* dv) {
  check_attention_args("attention_blockwise_backward", args);
  // Same choice as the forward (the tile depends only on dtype, head_dim and rewired):
  // a forward that fell back saved no lse, and its backward falls back too.
  const int tile = args.two_hop && args.rewired ? 0 : blockwise_tile(dt, args);
  if (tile == 0) {
    attention_blockwise_backward_default(*this, dt, args, q, k, v, y, lse, runway_lse, runway_acc, dy, dq, dk, dv);
    return;
  }
  dispatch_float(dt, "attention_blockwise_backward", [&](auto tag) {
    using T = decltype(tag);
    blockwise_backward_impl<T>(args, tile, static_cast<const T*>(q), static_cast<const T*>(k),
                               static_cast<const T*>(v), static_cast<const T*>(y), static_cast<const T*>(lse),
                               static_cast<const T*>(runway_lse), static_cast<const T*>(dy), static_cast<T*>(dq),
                               static_cast<T*>(dk), static_cast<T*>(dv));
  });
}

// The registered implementations (engine/fused_kernel.h) of the blockwise kernels.
static void cuda_blockwise_forward(Backend& b, DType dt, const AttentionArgs& args, const void* q, const void* k,
                                   const void* v, void* y, void* lse, void* runway_lse, void* runway_acc) {
  cuda_backend_of(b, "attention_blockwise_forward").attention_blockwise_forward_cuda(dt, args, q, k, v, y, lse,
                                                                                     runway_lse, runway_acc);
}

static void cuda_blockwise_backward(Backend& b, DType dt, const AttentionArgs& args, const void* q, const void* k,
                                    const void* v, const void* y, const void* lse, const void* runway_lse,
                                    const void* runway_acc, const void* dy, void* dq, void* dk, void* dv) {
  cuda_backend_of(b, "attention_blockwise_backward")
      .attention_blockwise_backward_cuda(dt, args, q, k, v, y, lse, runway_lse, runway_acc, dy, dq, dk, dv);
}

void register_attention_blockwise_cuda_kernels() {
  register_fused_kernel("attention_blockwise_forward", Device::CUDA, &cuda_blockwise_forward);
  register_fused_kernel("attention_blockwise_backward", Device::CUDA, &cuda_blockwise_backward);
}

}  // namespace runway
