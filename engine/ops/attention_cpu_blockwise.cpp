// Blockwise (memory-linear) causal attention on the CPU, standard and runway-rewired:
// the kernels behind AttentionImpl::Blockwise (engine/ops/attention.h) and the ops
// attention_blockwise, rewired_attention_blockwise and qkv_attention_blockwise, held equal
// to the materialised kernels (tests/test_attention_cpu_blockwise.cpp) and run through the
// same float64 gradcheck samples (the op table's *_blockwise rows).
//
// No (T x T) map is kept. Queries are taken in blocks of kQueryBlock rows; block
// I = [i0, i1) only sees keys [0, i1), so its logits are one (rows x i1) stripe: the
// transient memory is O(kQueryBlock * T) per thread and what the forward saves for the
// backward is O(B H T + B T): y, the log-sum-exp of every row of S'_h, and that of the
// runway head's un-rewired rows. The backward recomputes each stripe from them.
// On a GPU a tile of keys sits in shared memory and the softmax is taken online over
// key tiles (cuda/ops/attention_blockwise.cu); on a CPU a whole stripe of 64 rows fits
// in the L2 cache up to T ~ 2k and its products are a few large gemms, so the stripe
// is computed at once instead.
//
// The runway state follows the spec's incremental decoding (docs/attention.md,
// "Blockwise"): absorption carries acc[j] = sum_{j<k<i0} P[k,j] from one query block to
// the next, so the forward walks the query blocks of a batch item in order; the
// backward walks them in reverse, carrying dacc[j] = sum_{i>=i1} dR[i,j], and gets each
// block's acc back by subtracting the block's column sums from the total (in double).
// two_hop's R stripe is recomputed from P stripes of every earlier block (O(T^3) by
// definition); its backward needs dP = L(L(P)^T dR), a sum over every later row, so it
// materialises the maps of one batch item at a time (O(H T^2) transient) instead.
#include "engine/ops/attention_blockwise.h"

#include <fmt/format.h>
#include <omp.h>

#include <Eigen/Dense>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <vector>

#include "engine/cpu_backend.h"
#include "engine/cpu_kernels.h"
#include "engine/fused_kernel.h"
#include "engine/ops/cpu_gemm.h"
#include "engine/ops/attention_cpu_fast.h"
#include "engine/ops/op_helpers.h"

namespace runway {

namespace cpu {

namespace {

constexpr int64_t kQueryBlock = kBlockwiseQueryBlock;

template <typename T>
using RowArray = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>;

// Query rows [i0, i1) of a block whose stripe has width n (keys 0..n-1, n = the block's
// end): a whole block, or a part of its rows (same n) that one thread takes.
struct Block {
  int64_t i0, i1, n;
  int64_t rows() const { return i1 - i0; }
  int64_t width() const { return n; }
  Block part(int64_t r0, int64_t r1) const { return {i0 + r0, i0 + std::min(r1, rows()), n}; }
};

// Work is split into fixed chunks (never by thread count), so results do not depend on
// how many threads run: kRowChunk rows of a stripe, kColumnChunk of its columns.
constexpr int64_t kRowChunk = 8;
constexpr int64_t kColumnChunk = 256;
int64_t chunks(int64_t n, int64_t chunk) { return (n + chunk - 1) / chunk; }

// Logits stripe s (rows x i1): s[r][j] = (q_i . k_j) * scale - slope * (i - j) for j <= i
// (i = i0 + r); entries j > i are left as the product (never read: every consumer stops
// at j = i).
template <typename T>
void stripe_logits(const T* q, const T* k, const Block& blk, int64_t dim, double scale, double slope, T* s) {
  const int64_t n = blk.width();
  tile_gemm<T>(false, true, blk.rows(), n, dim, static_cast<T>(scale), q + blk.i0 * dim, dim, k, dim, T(0), s, n);
  if (slope == 0.0) return;
  for (int64_t r = 0; r < blk.rows(); ++r) {
    const int64_t i = blk.i0 + r;
    for (int64_t j = 0; j <= i; ++j) s[r * n + j] -= static_cast<T>(slope * static_cast<double>(i - j));
  }
}

// Row softmax of the stripe over j <= i, in place, zeros after; lse[r] receives each
// row's log-sum-exp (max + log sum exp(s - max)).
template <typename T>
void stripe_softmax(const Block& blk, T* s, T* lse) {
  const int64_t n = blk.width();
  for (int64_t r = 0; r < blk.rows(); ++r) {
    const int64_t i = blk.i0 + r;
    RowArray<T> row(s + r * n, i + 1);
    const T m = row.maxCoeff();
    row = (row - m).exp();
    const T total = row.sum();
    row *= T(1) / total;
    lse[r] = m + std::log(total);
    std::fill(s + r * n + i + 1, s + (r + 1) * n, T(0));
  }
}

// The stripe's probabilities from saved row log-sum-exps: s = exp(s - lse), zeros after j = i.
template <typename T>
void stripe_probabilities(const Block& blk, const T* lse, T* s) {
  const int64_t n = blk.width();
  for (int64_t r = 0; r < blk.rows(); ++r) {
    const int64_t i = blk.i0 + r;
    RowArray<T> row(s + r * n, i + 1);
    row = (row - lse[r]).exp();
    std::fill(s + r * n + i + 1, s + (r + 1) * n, T(0));
  }
}

// S'_h = S_h - beta R on the stripe (R is 0 for j >= i - 1; it is stored as 0 there).
template <typename T>
void subtract_runway(const Block& blk, double beta, const T* r_stripe, T* s) {
  const int64_t n = blk.width();
  const T b = static_cast<T>(beta);
  for (int64_t r = 0; r < blk.rows(); ++r) {
    const int64_t i = blk.i0 + r;
    for (int64_t j = 0; j + 1 < i; ++j) s[r * n + j] -= b * r_stripe[r * n + j];
  }
}

// absorption's R stripe on columns [c0, c1), from acc[j] = sum_{j<k<i0} P[k,j] (held in
// state[j - c0]) and the block's own P rows: R[i,j] = acc[j] + sum_{i0<=k<i, k>j} P[k,j]
// for j < i, 0 for j >= i. Leaves state as after the block (+= P[k,j] for every row k > j).
template <typename T>
void absorption_columns(const Block& blk, const T* p, double* state, T* r_stripe, int64_t c0, int64_t c1) {
  const int64_t n = blk.width();
  for (int64_t r = 0; r < blk.rows(); ++r) {
    const int64_t i = blk.i0 + r;
    T* out = r_stripe + r * n;
    for (int64_t j = c0; j < c1; ++j) out[j] = j < i ? static_cast<T>(state[j - c0]) : T(0);
    for (int64_t j = c0; j < std::min(c1, i); ++j) state[j - c0] += static_cast<double>(p[r * n + j]);
  }
}

// acc[j] += sign * sum over the block's rows k > j of P[k,j], on columns [c0, c1).
template <typename T>
void add_block_columns(const Block& blk, const T* p, double* acc, double sign, int64_t c0, int64_t c1) {
  const int64_t n = blk.width();
  for (int64_t r = 0; r < blk.rows(); ++r) {
    const int64_t k = blk.i0 + r;
    for (int64_t j = c0; j < std::min(c1, k); ++j) acc[j] += sign * static_cast<double>(p[r * n + j]);
  }
}

// Rows per query block: kQueryBlock, or twice that when one team of threads shares each
// block of a rewired batch item (fewer items than threads): every block then costs the
// team a few barriers, which under the PASSIVE wait policy are futex wake-ups
// (docs/performance.md, "Blockwise attention").
int64_t query_block_rows(const AttentionArgs& a) {
  return a.rewired && a.batch < omp_get_max_threads() ? 2 * kQueryBlock : kQueryBlock;
}

// The sizes of one call: B, H, T, D and the query blocks.
struct Plan {
  int64_t B, H, T, D;
  int64_t rows;  // per query block
  int64_t blocks;
  explicit Plan(const AttentionArgs& a)
      : B(a.batch), H(a.heads), T(a.seq), D(a.head_dim), rows(query_block_rows(a)), blocks((a.seq + rows - 1) / rows) {}
  Block block(int64_t b) const {
    const int64_t end = std::min(T, (b + 1) * rows);
    return {b * rows, end, end};
  }
  int64_t head(int64_t b, int64_t h) const { return (b * H + h) * T * D; }  // offset of (b, h) in (B,H,T,D)
  int64_t row(int64_t b, int64_t h) const { return (b * H + h) * T; }       // offset of (b, h) in (B,H,T)
};

double slope_of(const AttentionArgs& a, int64_t h) { return a.alibi_slopes.empty() ? 0.0 : a.alibi_slopes[h]; }

// The runway head's P stripe of block `blk` of batch item b into p; with lse_out its rows'
// log-sum-exps are written there (forward), else read from lse_in (backward).
template <typename T>
void runway_probabilities(const AttentionArgs& a, const Plan& pl, int64_t b, const Block& blk, const T* q,
                          const T* k, T* p, T* lse_out, const T* lse_in) {
  const int64_t off = pl.head(b, a.runway_head);
  stripe_logits(q + off, k + off, blk, pl.D, a.scale, slope_of(a, a.runway_head), p);
  if (lse_out)
    stripe_softmax(blk, p, lse_out);
  else
    stripe_probabilities(blk, lse_in, p);
}

// The same, shared by the team of threads of the enclosing parallel region (or run by
// the one caller outside any): rows in chunks of kRowChunk.
template <typename T>
void team_runway_probabilities(const AttentionArgs& a, const Plan& pl, int64_t b, const Block& blk, const T* q,
                               const T* k, T* p, T* lse_out, const T* lse_in) {
  const int64_t n = blk.width();
#pragma omp for schedule(static)
  for (int64_t c = 0; c < chunks(blk.rows(), kRowChunk); ++c) {
    const int64_t r0 = c * kRowChunk;
    runway_probabilities<T>(a, pl, b, blk.part(r0, r0 + kRowChunk), q, k, p + r0 * n, lse_out ? lse_out + r0 : nullptr,
                            lse_in ? lse_in + r0 : nullptr);
  }
}

// two_hop's R stripe: R[i,j] = sum_{j<k<i} P[i,k] P[k,j], over key-row blocks K of every
// earlier row k < i1 (P rows of K recomputed from runway_lse into pk).
template <typename T>
void team_two_hop_stripe(const AttentionArgs& a, const Plan& pl, int64_t b, const Block& blk, const T* q, const T* k,
                         const T* p, const T* runway_lse, T* pk, T* first, T* r_stripe) {
  const int64_t n = blk.width();
#pragma omp for schedule(static)
  for (int64_t c = 0; c < chunks(blk.rows(), kRowChunk); ++c) {
    const int64_t r0 = c * kRowChunk, r1 = std::min(blk.rows(), r0 + kRowChunk);
    std::fill(r_stripe + r0 * n, r_stripe + r1 * n, T(0));
  }
  for (int64_t kb = 0; kb * pl.rows < blk.i1; ++kb) {
    const Block kblk = pl.block(kb);
    const int64_t kn = kblk.width();
    team_runway_probabilities<T>(a, pl, b, kblk, q, k, pk, nullptr, runway_lse + b * pl.T + kblk.i0);
#pragma omp for schedule(static)
    for (int64_t c = 0; c < chunks(kblk.rows(), kRowChunk); ++c)  // L(P): keep j < k
      for (int64_t r = c * kRowChunk; r < std::min(kblk.rows(), (c + 1) * kRowChunk); ++r)
        std::fill(pk + r * kn + kblk.i0 + r, pk + (r + 1) * kn, T(0));
#pragma omp for schedule(static)
    for (int64_t c = 0; c < chunks(blk.rows(), kRowChunk); ++c) {
      const int64_t r0 = c * kRowChunk, r1 = std::min(blk.rows(), r0 + kRowChunk);
      for (int64_t r = r0; r < r1; ++r)  // P[i, K] with k < i only
        for (int64_t col = 0; col < kblk.rows(); ++col)
          first[r * pl.rows + col] = kblk.i0 + col < blk.i0 + r ? p[r * n + kblk.i0 + col] : T(0);
      // R rows += P[i, K] L(P)[K, :]
      tile_gemm<T>(false, false, r1 - r0, kn, kblk.rows(), T(1), first + r0 * pl.rows, pl.rows, pk, kn, T(1),
              r_stripe + r0 * n, n);
    }
  }
}

// One head's forward on one query block: s (scratch stripe) = softmax(S_h - beta R),
// lse of its rows, y rows = A' v.
template <typename T>
void head_block_forward(const AttentionArgs& a, const Plan& pl, int64_t b, int64_t h, const Block& blk, const T* q,
                        const T* k, const T* v, const T* r_stripe, T* s, T* y, T* lse) {
  const int64_t off = pl.head(b, h);
  stripe_logits(q + off, k + off, blk, pl.D, a.scale, slope_of(a, h), s);
  if (r_stripe) subtract_runway(blk, a.beta, r_stripe, s);
  stripe_softmax(blk, s, lse + pl.row(b, h) + blk.i0);
  tile_gemm<T>(false, false, blk.rows(), pl.D, blk.width(), T(1), s, blk.width(), v + off, pl.D, T(0),
          y + off + blk.i0 * pl.D, pl.D);
}

// One head's backward on one query block, from the saved lse and y:
//   A' = exp(S'_h - lse);  dA' = dy v^T;  dS' = A' * (dA' - rowsum(dy * y))
//   dv += A'^T dy;  dq rows = dS' k * scale;  dk += dS'^T q * scale
// ds (rows x i1) keeps dS' for the runway step. s is scratch. With logits_grads false
// the dq, dk products are left to the caller (the runway head adds dS_r to dS' first).
template <typename T>
void head_block_backward(const AttentionArgs& a, const Plan& pl, int64_t b, int64_t h, const Block& blk, const T* q,
                         const T* k, const T* v, const T* y, const T* lse, const T* dy, const T* r_stripe, T* s,
                         T* ds, T* dq, T* dk, T* dv, bool logits_grads = true) {
  const int64_t off = pl.head(b, h), n = blk.width(), rows = blk.rows(), D = pl.D;
  stripe_logits(q + off, k + off, blk, D, a.scale, slope_of(a, h), s);
  if (r_stripe) subtract_runway(blk, a.beta, r_stripe, s);
  stripe_probabilities(blk, lse + pl.row(b, h) + blk.i0, s);
  const T* dy_rows = dy + off + blk.i0 * D;
  tile_gemm<T>(false, true, rows, n, D, T(1), dy_rows, D, v + off, D, T(0), ds, n);  // dA'
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = blk.i0 + r;
    T dot = 0;
    for (int64_t c = 0; c < D; ++c) dot += dy_rows[r * D + c] * y[off + i * D + c];
    for (int64_t j = 0; j <= i; ++j) ds[r * n + j] = s[r * n + j] * (ds[r * n + j] - dot);
    std::fill(ds + r * n + i + 1, ds + (r + 1) * n, T(0));
  }
  tile_gemm<T>(true, false, n, D, rows, T(1), s, n, dy_rows, D, T(1), dv + off, D);
  if (!logits_grads) return;
  tile_gemm<T>(false, false, rows, D, n, static_cast<T>(a.scale), ds, n, k + off, D, T(0), dq + off + blk.i0 * D, D);
  tile_gemm<T>(true, false, n, D, rows, static_cast<T>(a.scale), ds, n, q + off + blk.i0 * D, D, T(1), dk + off, D);
}

// Scratch of n elements, 64-byte aligned. Eigen's vectorised exp and sums treat a row's
// unaligned head with scalar code, so a buffer placed differently from one call to the
// next would round differently and two backwards over one graph would not agree bit for bit.
// Not the CPU backend's caching allocator (attention_cpu_fast.cpp's Scratch): it keeps
// freed blocks (up to 2 GiB), so the forward's and the backward's stripes, of different
// sizes, would both stay resident; measured with bench_attention --memory, the peak
// resident set of a T = 4096 rewired forward + backward went from 21 to 35 MiB.
template <typename T>
class Aligned {
 public:
  explicit Aligned(int64_t n) {
    const size_t bytes = (static_cast<size_t>(std::max<int64_t>(1, n)) * sizeof(T) + 63) / 64 * 64;
    buf_ = static_cast<T*>(std::aligned_alloc(64, bytes));
    if (!buf_) throw Error(fmt::format("blockwise attention: out of memory allocating {} bytes of scratch", bytes));
  }
  ~Aligned() { std::free(buf_); }
  Aligned(const Aligned&) = delete;
  Aligned& operator=(const Aligned&) = delete;
  T* get() const { return buf_; }

 private:
  T* buf_ = nullptr;
};

// `count` stripes of (rows x T) elements, each 64-byte aligned.
template <typename T>
class Stripes {
 public:
  Stripes(int64_t count, int64_t rows, int64_t seq)
      : stride_((rows * seq * int64_t(sizeof(T)) + 63) / 64 * 64 / int64_t(sizeof(T))), buf_(count * stride_) {}
  T* operator[](int64_t i) { return buf_.get() + i * stride_; }

 private:
  int64_t stride_;
  Aligned<T> buf_;
};

bool parallel_over_batch(const Plan& pl) { return pl.B >= omp_get_max_threads(); }

// ---- forward ------------------------------------------------------------------------------

template <typename T>
void standard_forward(const AttentionArgs& a, const Plan& pl, const T* q, const T* k, const T* v, T* y, T* lse) {
  const int64_t tasks = pl.B * pl.H * pl.blocks;
#pragma omp parallel
  {
    Stripes<T> s(1, pl.rows, pl.T);
#pragma omp for schedule(dynamic)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t b = t / (pl.H * pl.blocks), h = t / pl.blocks % pl.H, blk = t % pl.blocks;
      head_block_forward<T>(a, pl, b, h, pl.block(blk), q, k, v, nullptr, s[0], y, lse);
    }
  }
}

// Rewired forward of batch item b: query blocks in order, carrying the runway state. The
// threads of one team share each block's steps (P rows, R columns, heads) unless the
// caller already runs batch items in parallel (then this item has one thread).
template <typename T>
void rewired_forward_item(const AttentionArgs& a, const Plan& pl, int64_t b, const T* q, const T* k, const T* v, T* y,
                          T* lse, T* runway_lse, bool team) {
  Stripes<T> work(a.two_hop ? 4 : 2, pl.rows, pl.T);  // p, r (+ pk, first for two_hop)
  Stripes<T> head_scratch(pl.H, pl.rows, pl.T);       // one logits stripe per head
  T *p = work[0], *r_stripe = work[1];
  std::vector<double> acc(static_cast<size_t>(pl.T), 0.0);
#pragma omp parallel if (team)
  for (int64_t ib = 0; ib < pl.blocks; ++ib) {
    const Block blk = pl.block(ib);
    team_runway_probabilities<T>(a, pl, b, blk, q, k, p, runway_lse + b * pl.T + blk.i0, nullptr);
    if (a.two_hop) {
      team_two_hop_stripe<T>(a, pl, b, blk, q, k, p, runway_lse, work[2], work[3], r_stripe);
    } else {
#pragma omp for schedule(static)
      for (int64_t c = 0; c < chunks(blk.width(), kColumnChunk); ++c)
        absorption_columns<T>(blk, p, acc.data() + c * kColumnChunk, r_stripe, c * kColumnChunk,
                              std::min(blk.width(), (c + 1) * kColumnChunk));
    }
#pragma omp for schedule(static)
    for (int64_t h = 0; h < pl.H; ++h)
      head_block_forward<T>(a, pl, b, h, blk, q, k, v, r_stripe, head_scratch[h], y, lse);
  }
}

template <typename T>
void blockwise_forward(const AttentionArgs& a, const T* q, const T* k, const T* v, T* y, T* lse, T* runway_lse) {
  const Plan pl(a);
  if (!a.rewired) return standard_forward(a, pl, q, k, v, y, lse);
  if (parallel_over_batch(pl)) {
#pragma omp parallel for schedule(dynamic)
    for (int64_t b = 0; b < pl.B; ++b) rewired_forward_item(a, pl, b, q, k, v, y, lse, runway_lse, false);
  } else {
    for (int64_t b = 0; b < pl.B; ++b) rewired_forward_item(a, pl, b, q, k, v, y, lse, runway_lse, true);
  }
}

// ---- backward -----------------------------------------------------------------------------

template <typename T>
void standard_backward(const AttentionArgs& a, const Plan& pl, const T* q, const T* k, const T* v, const T* y,
                       const T* lse, const T* dy, T* dq, T* dk, T* dv) {
#pragma omp parallel
  {
    Stripes<T> s(2, pl.rows, pl.T);
#pragma omp for schedule(dynamic)
    for (int64_t t = 0; t < pl.B * pl.H; ++t) {
      const int64_t b = t / pl.H, h = t % pl.H, off = pl.head(b, h);
      std::fill(dk + off, dk + off + pl.T * pl.D, T(0));
      std::fill(dv + off, dv + off + pl.T * pl.D, T(0));
      for (int64_t ib = 0; ib < pl.blocks; ++ib)
        head_block_backward<T>(a, pl, b, h, pl.block(ib), q, k, v, y, lse, dy, nullptr, s[0], s[1], dq, dk, dv);
    }
  }
}

// The scratch of one absorption backward item: P, R then dP, dR and dS_r stripes, one
// dS' stripe and one logits stripe per head, and the two carried states (in double).
template <typename T>
struct AbsorptionScratch {
  Stripes<T> work, ds, head_scratch;
  std::vector<double> acc, dacc;
  AbsorptionScratch(int64_t heads, int64_t rows, int64_t seq)
      : work(4, rows, seq), ds(heads, rows, seq), head_scratch(heads, rows, seq), acc(static_cast<size_t>(seq), 0.0),
        dacc(static_cast<size_t>(seq), 0.0) {}
  T* p() { return work[0]; }
  T* r() { return work[1]; }  // R, then dP
  T* dr() { return work[2]; }
  T* dsr() { return work[3]; }
};

// Through R into the runway head, on block `blk` (the team shares it; every head's dS'
// is in w.ds, P in w.p()):
//   dR = -beta sum_h dS'_h (i - j >= 2);  dP[m,j] = dacc[j] + sum_{i in block, i>m} dR[i,j] (j < m)
//   dS_r = dS'_r + P * (dP - rowsum(dP * P));  dq_r rows = dS_r k_r * scale;  dk_r += dS_r^T q_r * scale
template <typename T>
void team_runway_gradients(const AttentionArgs& a, const Plan& pl, int64_t b, const Block& blk, const T* q, const T* k,
                           AbsorptionScratch<T>& w, T* dq, T* dk) {
  const int64_t n = blk.width(), rows = blk.rows(), H = pl.H, D = pl.D, off_r = pl.head(b, a.runway_head);
  const T scale = static_cast<T>(a.scale);
  T *p = w.p(), *dp = w.r(), *dr = w.dr(), *dsr = w.dsr();
#pragma omp for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = blk.i0 + r;
    std::copy(w.ds[0] + r * n, w.ds[0] + (r + 1) * n, dr + r * n);
    for (int64_t h = 1; h < H; ++h)
      for (int64_t j = 0; j < n; ++j) dr[r * n + j] += w.ds[h][r * n + j];
    for (int64_t j = 0; j < n; ++j) dr[r * n + j] = j + 1 < i ? static_cast<T>(-a.beta) * dr[r * n + j] : T(0);
  }
  // dP by columns, bottom row up from dacc; dacc moves to the block's start.
#pragma omp for schedule(static)
  for (int64_t c = 0; c < chunks(n, kColumnChunk); ++c) {
    const int64_t c0 = c * kColumnChunk, c1 = std::min(n, c0 + kColumnChunk);
    for (int64_t r = rows - 1; r >= 0; --r) {
      const int64_t m = blk.i0 + r;
      for (int64_t j = c0; j < c1; ++j) {
        dp[r * n + j] = j < m ? static_cast<T>(w.dacc[j]) : T(0);
        w.dacc[j] += static_cast<double>(dr[r * n + j]);
      }
    }
  }
  // The runway head's whole dS, by rows (dP[m, m] = 0: the diagonal keeps -P dot), and
  // its dq rows from it.
  const T* ds_direct = w.ds[a.runway_head];
#pragma omp for schedule(static)
  for (int64_t c = 0; c < chunks(rows, kRowChunk); ++c) {
    const int64_t r0 = c * kRowChunk, r1 = std::min(rows, r0 + kRowChunk);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t m = blk.i0 + r;
      double dot = 0;
      for (int64_t j = 0; j < m; ++j) dot += static_cast<double>(dp[r * n + j]) * static_cast<double>(p[r * n + j]);
      for (int64_t j = 0; j < n; ++j)
        dsr[r * n + j] = j <= m ? ds_direct[r * n + j] +
                                      static_cast<T>(static_cast<double>(p[r * n + j]) *
                                                     ((j < m ? static_cast<double>(dp[r * n + j]) : 0.0) - dot))
                                : T(0);
    }
    tile_gemm<T>(false, false, r1 - r0, D, n, scale, dsr + r0 * n, n, k + off_r, D, T(0), dq + off_r + (blk.i0 + r0) * D, D);
  }
#pragma omp for schedule(static)
  for (int64_t c = 0; c < chunks(n, kQueryBlock); ++c) {
    const int64_t j0 = c * kQueryBlock, j1 = std::min(n, j0 + kQueryBlock);
    tile_gemm<T>(true, false, j1 - j0, D, rows, scale, dsr + j0, n, q + off_r + blk.i0 * D, D, T(1), dk + off_r + j0 * D, D);
  }
}

// absorption, batch item b: query blocks in reverse, the team sharing each step.
// acc starts as the total over every row; each block subtracts its own column sums
// (in double) to get back to its start, where its R stripe begins.
template <typename T>
void absorption_backward_item(const AttentionArgs& a, const Plan& pl, int64_t b, const T* q, const T* k, const T* v,
                              const T* y, const T* lse, const T* runway_lse, const T* dy, T* dq, T* dk, T* dv,
                              bool team) {
  const int64_t H = pl.H, D = pl.D;
  AbsorptionScratch<T> w(H, pl.rows, pl.T);
  T *p = w.p(), *r_stripe = w.r();
  for (int64_t h = 0; h < H; ++h) {
    std::fill(dk + pl.head(b, h), dk + pl.head(b, h) + pl.T * D, T(0));
    std::fill(dv + pl.head(b, h), dv + pl.head(b, h) + pl.T * D, T(0));
  }
#pragma omp parallel if (team)
  {
    for (int64_t ib = 0; ib < pl.blocks; ++ib) {  // acc = sum_{k>j} P[k,j] over every row
      const Block blk = pl.block(ib);
      team_runway_probabilities<T>(a, pl, b, blk, q, k, p, nullptr, runway_lse + b * pl.T + blk.i0);
#pragma omp for schedule(static)
      for (int64_t c = 0; c < chunks(blk.width(), kColumnChunk); ++c)
        add_block_columns<T>(blk, p, w.acc.data(), 1.0, c * kColumnChunk, std::min(blk.width(), (c + 1) * kColumnChunk));
    }
    for (int64_t ib = pl.blocks - 1; ib >= 0; --ib) {
      const Block blk = pl.block(ib);
      const int64_t n = blk.width();
      team_runway_probabilities<T>(a, pl, b, blk, q, k, p, nullptr, runway_lse + b * pl.T + blk.i0);
#pragma omp for schedule(static)
      for (int64_t c = 0; c < chunks(n, kColumnChunk); ++c) {
        const int64_t c0 = c * kColumnChunk, c1 = std::min(n, c0 + kColumnChunk);
        add_block_columns<T>(blk, p, w.acc.data(), -1.0, c0, c1);
        std::vector<double> state(w.acc.begin() + c0, w.acc.begin() + c1);
        absorption_columns<T>(blk, p, state.data(), r_stripe, c0, c1);
      }
#pragma omp for schedule(static)
      for (int64_t h = 0; h < H; ++h)
        head_block_backward<T>(a, pl, b, h, blk, q, k, v, y, lse, dy, r_stripe, w.head_scratch[h], w.ds[h], dq, dk, dv,
                               a.detach || h != a.runway_head);
      if (!a.detach) team_runway_gradients<T>(a, pl, b, blk, q, k, w, dq, dk);
    }
  }
}

// two_hop, batch item b: the materialised kernels on this item alone (see the top).
template <typename T>
void two_hop_backward_item(const AttentionArgs& a, const Plan& pl, int64_t b, const T* q, const T* k, const T* v,
                           const T* dy, T* dq, T* dk, T* dv) {
  AttentionArgs one = a;
  one.batch = 1;
  const int64_t off = pl.head(b, 0), TT = pl.T * pl.T;
  Aligned<T> y(pl.H * pl.T * pl.D), attn(pl.H * TT), p(TT), r(TT);
  attention_forward<T>(one, q + off, k + off, v + off, y.get(), attn.get(), p.get(), r.get());
  attention_backward<T>(one, q + off, k + off, v + off, attn.get(), p.get(), dy + off, dq + off, dk + off, dv + off);
}

template <typename T>
void blockwise_backward(const AttentionArgs& a, const T* q, const T* k, const T* v, const T* y, const T* lse,
                        const T* runway_lse, const T* dy, T* dq, T* dk, T* dv) {
  const Plan pl(a);
  if (!a.rewired) return standard_backward(a, pl, q, k, v, y, lse, dy, dq, dk, dv);
  if (a.two_hop) {
    for (int64_t b = 0; b < pl.B; ++b) two_hop_backward_item(a, pl, b, q, k, v, dy, dq, dk, dv);
    return;
  }
  if (parallel_over_batch(pl)) {
#pragma omp parallel for schedule(dynamic)
    for (int64_t b = 0; b < pl.B; ++b)
      absorption_backward_item(a, pl, b, q, k, v, y, lse, runway_lse, dy, dq, dk, dv, false);
  } else {
    for (int64_t b = 0; b < pl.B; ++b)
      absorption_backward_item(a, pl, b, q, k, v, y, lse, runway_lse, dy, dq, dk, dv, true);
  }
}

}  // namespace

}  // namespace cpu

// The CPU backend's implementations of the kernels below.
static void cpu_blockwise_forward(Backend&, DType dt, const AttentionArgs& a, const void* q, const void* k,
                                  const void* v, void* y, void* lse, void* runway_lse) {
  cpu::dispatch_float(dt, "attention_blockwise_forward", [&](auto t) {
    using T = decltype(t);
    cpu::blockwise_forward<T>(a, static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v),
                              static_cast<T*>(y), static_cast<T*>(lse), static_cast<T*>(runway_lse));
  });
}

static void cpu_blockwise_backward(Backend&, DType dt, const AttentionArgs& a, const void* q, const void* k,
                                   const void* v, const void* y, const void* lse, const void* runway_lse,
                                   const void* dy, void* dq, void* dk, void* dv) {
  cpu::dispatch_float(dt, "attention_blockwise_backward", [&](auto t) {
    using T = decltype(t);
    cpu::blockwise_backward<T>(a, static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v),
                               static_cast<const T*>(y), static_cast<const T*>(lse),
                               static_cast<const T*>(runway_lse), static_cast<const T*>(dy), static_cast<T*>(dq),
                               static_cast<T*>(dk), static_cast<T*>(dv));
  });
}

// ---- the defaults: the materialised kernels in scratch --------------------------------------
// A backend without blockwise kernels computes the same numbers through its (possibly
// default) materialised attention, holding the maps only for the duration of the call:
// correct everywhere, memory-linear only where a backend implements the pair. Its lse and
// runway_lse are not computed (filled with 0): its backward recomputes the forward.

void attention_blockwise_forward_default(Backend& b, DType dt, const AttentionArgs& a, const void* q, const void* k,
                                         const void* v, void* y, void* lse, void* runway_lse) {
  const int64_t TT = a.seq * a.seq;
  op_helpers::Scratch attn(b, dt, a.batch * a.heads * TT), p(b, dt, a.rewired ? a.batch * TT : 0),
      r(b, dt, a.rewired ? a.batch * TT : 0);
  b.attention_forward(dt, a, q, k, v, y, attn.get(), p.get(), r.get());
  b.fill(dt, lse, a.batch * a.heads * a.seq, 0.0);
  if (a.rewired) b.fill(dt, runway_lse, a.batch * a.seq, 0.0);
}

void attention_blockwise_backward_default(Backend& b, DType dt, const AttentionArgs& a, const void* q, const void* k,
                                          const void* v, const void*, const void*, const void*, const void* dy,
                                          void* dq, void* dk, void* dv) {
  const int64_t TT = a.seq * a.seq;
  op_helpers::Scratch y(b, dt, a.batch * a.heads * a.seq * a.head_dim), attn(b, dt, a.batch * a.heads * TT),
      p(b, dt, a.rewired ? a.batch * TT : 0), r(b, dt, a.rewired ? a.batch * TT : 0);
  b.attention_forward(dt, a, q, k, v, y.get(), attn.get(), p.get(), r.get());
  b.attention_backward(dt, a, q, k, v, attn.get(), p.get(), dy, dq, dk, dv);
}

// ---- the kernels (engine/fused_kernel.h); CUDA's implementations: cuda/ops/attention_blockwise.cu

static const FusedKernel<DType, const AttentionArgs&, const void*, const void*, const void*, void*, void*, void*>
    blockwise_forward_kernel("attention_blockwise_forward", &attention_blockwise_forward_default,
                             &cpu_blockwise_forward);
static const FusedKernel<DType, const AttentionArgs&, const void*, const void*, const void*, const void*,
                         const void*, const void*, const void*, void*, void*, void*>
    blockwise_backward_kernel("attention_blockwise_backward", &attention_blockwise_backward_default,
                              &cpu_blockwise_backward);

void Backend::attention_blockwise_forward(DType dt, const AttentionArgs& args, const void* q, const void* k,
                                          const void* v, void* y, void* lse, void* runway_lse) {
  blockwise_forward_kernel(*this, dt, args, q, k, v, y, lse, runway_lse);
}

void Backend::attention_blockwise_backward(DType dt, const AttentionArgs& args, const void* q, const void* k,
                                           const void* v, const void* y, const void* lse, const void* runway_lse,
                                           const void* dy, void* dq, void* dk, void* dv) {
  blockwise_backward_kernel(*this, dt, args, q, k, v, y, lse, runway_lse, dy, dq, dk, dv);
}

}  // namespace runway
