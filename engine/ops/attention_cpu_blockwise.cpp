// Blockwise (memory-linear) causal attention on the CPU, standard and runway-rewired:
// the kernels behind AttentionImpl::Blockwise (engine/ops/attention.h) and the ops
// attention_blockwise, rewired_attention_blockwise and qkv_attention_blockwise, held equal
// to the materialised kernels (tests/test_attention_cpu_blockwise.cpp) and run through the
// same float64 gradcheck samples (the op table's *_blockwise rows).
//
// No (T x T) map is kept. Queries are taken in blocks of kQueryBlock rows; block
// I = [i0, i1) only sees keys [0, i1), so its logits are one (rows x i1) stripe: the
// transient memory is O(kQueryBlock * T) per thread and what the forward saves for the
// backward is O(B H T + B T): y, the log-sum-exp of every row of S'_h, that of the
// runway head's un-rewired rows, and absorption's state after the last row (runway_acc).
// The backward recomputes each stripe from them.
// On a GPU a tile of keys sits in shared memory and the softmax is taken online over
// key tiles (cuda/ops/attention_blockwise.cu); on a CPU a whole stripe of 64 rows fits
// in the L2 cache up to T ~ 2k and its products are a few large gemms, so the stripe
// is computed at once instead.
//
// The runway state follows the spec's incremental decoding (docs/attention.md,
// "Blockwise"): absorption carries acc[j] = sum_{j<k<i0} P[k,j] from one query block to
// the next, so the forward walks the query blocks of a batch item in order and saves the
// final acc (the column totals, in double); the backward walks them in reverse, carrying
// dacc[j] = sum_{i>=i1} dR[i,j], and gets each block's acc back by subtracting the
// block's column sums from that total (in double).
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

// Row softmax of the logits stripe over j <= i into s (in place when logits is s), zeros
// after; lse[r] receives each row's log-sum-exp (max + log sum exp(s - max)).
template <typename T>
void stripe_softmax(const Block& blk, const T* logits, T* s, T* lse) {
  const int64_t n = blk.width();
  for (int64_t r = 0; r < blk.rows(); ++r) {
    const int64_t i = blk.i0 + r;
    RowArray<T> row(s + r * n, i + 1);
    const Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>> in(logits + r * n, i + 1);
    const T m = in.maxCoeff();
    row = (in - m).exp();
    const T total = row.sum();
    row *= T(1) / total;
    lse[r] = m + std::log(total);
    std::fill(s + r * n + i + 1, s + (r + 1) * n, T(0));
  }
}

// The stripe's probabilities from saved row log-sum-exps: s = exp(logits - lse) (in place
// when logits is s), zeros after j = i.
template <typename T>
void stripe_probabilities(const Block& blk, const T* lse, const T* logits, T* s) {
  const int64_t n = blk.width();
  for (int64_t r = 0; r < blk.rows(); ++r) {
    const int64_t i = blk.i0 + r;
    RowArray<T> row(s + r * n, i + 1);
    const Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>> in(logits + r * n, i + 1);
    row = (in - lse[r]).exp();
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
    const int64_t below = std::clamp(i, c0, c1);  // columns j < i
    for (int64_t j = c0; j < below; ++j) {
      out[j] = static_cast<T>(state[j - c0]);
      state[j - c0] += static_cast<double>(p[r * n + j]);
    }
    std::fill(out + below, out + c1, T(0));
  }
}

// acc[j] -= sum over the block's rows k > j of P[k,j], on columns [c0, c1): the state at
// the block's end back to its start.
template <typename T>
void subtract_block_columns(const Block& blk, const T* p, double* acc, int64_t c0, int64_t c1) {
  const int64_t n = blk.width();
  for (int64_t r = 0; r < blk.rows(); ++r) {
    const int64_t k = blk.i0 + r;
    for (int64_t j = c0; j < std::min(c1, k); ++j) acc[j] -= static_cast<double>(p[r * n + j]);
  }
}

// out (n x D) += alpha M^T X on columns [c_begin, c_end) of a block's stripe M (rows x n,
// zeros past j = i) with its rows' X (rows x D): the products behind dv and dk. Taken in
// tiles of kTransposedTile output rows, of which a tile [c0, c1) only needs the block's
// rows i >= c0: OpenBLAS multiplies such a (32 x D x rows) tile with its unpacked
// small-matrix kernel, where the whole (n x D) product packs the stripe first
// (docs/performance.md, "Blockwise attention": a T = 1024 rewired forward + backward on
// one thread went from 30.0 to 22.3 ms).
constexpr int64_t kTransposedTile = 32;
template <typename T>
void add_stripe_transposed_times(const Block& blk, const T* m, const T* x_rows, int64_t dim, T alpha, T* out,
                                 int64_t c_begin, int64_t c_end) {
  const int64_t n = blk.width();
  for (int64_t c0 = c_begin; c0 < c_end; c0 += kTransposedTile) {
    const int64_t c1 = std::min(c_end, c0 + kTransposedTile);
    const int64_t r0 = std::max<int64_t>(0, c0 - blk.i0);
    tile_gemm<T>(true, false, c1 - c0, dim, blk.rows() - r0, alpha, m + r0 * n + c0, n, x_rows + r0 * dim, dim, T(1),
                 out + c0 * dim, dim);
  }
}

// Rows per query block: kQueryBlock, or twice that when one team of threads shares each
// block of a rewired batch item (fewer items than threads): every block then costs the
// team a barrier or two (the steps of rewired_forward_item and absorption_backward_item),
// which under the PASSIVE wait policy are futex wake-ups (docs/performance.md,
// "Blockwise attention").
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
// log-sum-exps are written there (forward), else read from lse_in (backward). With
// `logits`, S_r's stripe stays there too, for the runway head's own A' (one product
// fewer per block); without, p holds it on the way.
template <typename T>
void runway_probabilities(const AttentionArgs& a, const Plan& pl, int64_t b, const Block& blk, const T* q,
                          const T* k, T* p, T* lse_out, const T* lse_in, T* logits) {
  const int64_t off = pl.head(b, a.runway_head);
  if (!logits) logits = p;
  stripe_logits(q + off, k + off, blk, pl.D, a.scale, slope_of(a, a.runway_head), logits);
  if (lse_out)
    stripe_softmax(blk, logits, p, lse_out);
  else
    stripe_probabilities(blk, lse_in, logits, p);
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
                            lse_in ? lse_in + r0 : nullptr, nullptr);
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

// S_h's stripe into s: the product, or a copy of `logits` when the runway step already
// made it (h is the runway head).
template <typename T>
void head_logits(const AttentionArgs& a, const Plan& pl, int64_t b, int64_t h, const Block& blk, const T* q,
                 const T* k, const T* logits, T* s) {
  const int64_t off = pl.head(b, h), n = blk.width();
  if (!logits) return stripe_logits(q + off, k + off, blk, pl.D, a.scale, slope_of(a, h), s);
  for (int64_t r = 0; r < blk.rows(); ++r) std::copy(logits + r * n, logits + r * n + blk.i0 + r + 1, s + r * n);
}

// One head's forward on one query block: s (scratch stripe) = softmax(S_h - beta R),
// lse of its rows, y rows = A' v. runway_logits: S_r's stripe, when h is the runway head.
template <typename T>
void head_block_forward(const AttentionArgs& a, const Plan& pl, int64_t b, int64_t h, const Block& blk, const T* q,
                        const T* k, const T* v, const T* r_stripe, const T* runway_logits, T* s, T* y, T* lse) {
  const int64_t off = pl.head(b, h);
  head_logits(a, pl, b, h, blk, q, k, runway_logits, s);
  if (r_stripe) subtract_runway(blk, a.beta, r_stripe, s);
  stripe_softmax(blk, s, s, lse + pl.row(b, h) + blk.i0);
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
                         const T* k, const T* v, const T* y, const T* lse, const T* dy, const T* r_stripe,
                         const T* runway_logits, T* s, T* ds, T* dq, T* dk, T* dv, bool logits_grads = true) {
  const int64_t off = pl.head(b, h), n = blk.width(), rows = blk.rows(), D = pl.D;
  head_logits(a, pl, b, h, blk, q, k, runway_logits, s);
  if (r_stripe) subtract_runway(blk, a.beta, r_stripe, s);
  stripe_probabilities(blk, lse + pl.row(b, h) + blk.i0, s, s);
  const T* dy_rows = dy + off + blk.i0 * D;
  tile_gemm<T>(false, true, rows, n, D, T(1), dy_rows, D, v + off, D, T(0), ds, n);  // dA'
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = blk.i0 + r;
    T dot = 0;
    for (int64_t c = 0; c < D; ++c) dot += dy_rows[r * D + c] * y[off + i * D + c];
    for (int64_t j = 0; j <= i; ++j) ds[r * n + j] = s[r * n + j] * (ds[r * n + j] - dot);
    std::fill(ds + r * n + i + 1, ds + (r + 1) * n, T(0));
  }
  add_stripe_transposed_times<T>(blk, s, dy_rows, D, T(1), dv + off, 0, n);
  if (!logits_grads) return;
  tile_gemm<T>(false, false, rows, D, n, static_cast<T>(a.scale), ds, n, k + off, D, T(0), dq + off + blk.i0 * D, D);
  add_stripe_transposed_times<T>(blk, ds, q + off + blk.i0 * D, D, static_cast<T>(a.scale), dk + off, 0, n);
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
      head_block_forward<T>(a, pl, b, h, pl.block(blk), q, k, v, nullptr, nullptr, s[0], y, lse);
    }
  }
}

// Rewired forward of batch item b: query blocks in order, carrying the runway state. The
// threads of one team share each block unless the caller already runs batch items in
// parallel (then this item has a team of one).
//
// Each barrier of a shared team costs a futex wake-up (50-90 us under the PASSIVE wait
// policy, docs/performance.md), so the team runs a pipeline with one barrier per step:
// step t is one list of tasks, the heads of block t, R of block t + 1 (absorption's
// column chunks, carrying acc) and P of block t + 2 (row chunks, keeping S_r for the
// runway head's own A'). Each task reads only what earlier steps wrote. P and R
// alternate between two stripes and S_r among three, so a step never writes a stripe
// that the same step reads. two_hop's R, which needs every earlier block's P, is made
// by the team at the start of the step instead.
template <typename T>
void rewired_forward_item(const AttentionArgs& a, const Plan& pl, int64_t b, const T* q, const T* k, const T* v, T* y,
                          T* lse, T* runway_lse, double* runway_acc, bool team) {
  Stripes<T> p(2, pl.rows, pl.T), r_stripe(2, pl.rows, pl.T), runway_logits(3, pl.rows, pl.T);
  Stripes<T> two_hop_scratch(a.two_hop ? 2 : 0, pl.rows, pl.T);  // pk, first
  Stripes<T> head_scratch(team ? omp_get_max_threads() : 1, pl.rows, pl.T);  // a head's logits, per thread
  std::vector<double> acc(static_cast<size_t>(pl.T), 0.0);
  const auto in_range = [&](int64_t ib) { return ib >= 0 && ib < pl.blocks; };
#pragma omp parallel if (team)
  for (int64_t t = -2; t < pl.blocks; ++t) {
    if (a.two_hop && in_range(t + 1))
      team_two_hop_stripe<T>(a, pl, b, pl.block(t + 1), q, k, p[(t + 1) % 2], runway_lse, two_hop_scratch[0],
                             two_hop_scratch[1], r_stripe[(t + 1) % 2]);
    const int64_t heads = in_range(t) ? pl.H : 0;
    const int64_t r_chunks = !a.two_hop && in_range(t + 1) ? chunks(pl.block(t + 1).width(), kColumnChunk) : 0;
    const int64_t p_chunks = in_range(t + 2) ? chunks(pl.block(t + 2).rows(), kRowChunk) : 0;
#pragma omp for schedule(dynamic)
    for (int64_t task = 0; task < heads + r_chunks + p_chunks; ++task) {
      if (task < heads) {
        const int64_t h = task;
        head_block_forward<T>(a, pl, b, h, pl.block(t), q, k, v, r_stripe[t % 2],
                              h == a.runway_head ? runway_logits[t % 3] : nullptr, head_scratch[omp_get_thread_num()],
                              y, lse);
      } else if (task < heads + r_chunks) {
        const Block blk = pl.block(t + 1);
        const int64_t c0 = (task - heads) * kColumnChunk, c1 = std::min(blk.width(), c0 + kColumnChunk);
        absorption_columns<T>(blk, p[(t + 1) % 2], acc.data() + c0, r_stripe[(t + 1) % 2], c0, c1);
      } else {
        const Block blk = pl.block(t + 2);
        const int64_t r0 = (task - heads - r_chunks) * kRowChunk, n = blk.width();
        runway_probabilities<T>(a, pl, b, blk.part(r0, r0 + kRowChunk), q, k, p[(t + 2) % 2] + r0 * n,
                                runway_lse + b * pl.T + blk.i0 + r0, nullptr, runway_logits[(t + 2) % 3] + r0 * n);
      }
    }
  }
  std::copy(acc.begin(), acc.end(), runway_acc + b * pl.T);  // two_hop: zeros, never read
}

template <typename T>
void blockwise_forward(const AttentionArgs& a, const T* q, const T* k, const T* v, T* y, T* lse, T* runway_lse,
                       double* runway_acc) {
  const Plan pl(a);
  if (!a.rewired) return standard_forward(a, pl, q, k, v, y, lse);
  if (parallel_over_batch(pl)) {
#pragma omp parallel for schedule(dynamic)
    for (int64_t b = 0; b < pl.B; ++b) rewired_forward_item(a, pl, b, q, k, v, y, lse, runway_lse, runway_acc, false);
  } else {
    for (int64_t b = 0; b < pl.B; ++b) rewired_forward_item(a, pl, b, q, k, v, y, lse, runway_lse, runway_acc, true);
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
        head_block_backward<T>(a, pl, b, h, pl.block(ib), q, k, v, y, lse, dy, nullptr, nullptr, s[0], s[1], dq, dk,
                               dv);
    }
  }
}

// Absorption's backward through R into the runway head, block by block (docs/attention.md
// section (g)):
//   dR = -beta sum_h dS'_h (i - j >= 2);  dP[m,j] = dacc[j] + sum_{i in block, i>m} dR[i,j] (j < m)
//   dS_r = dS'_r + P * (dP - rowsum(dP * P));  dq_r rows = dS_r k_r * scale;  dk_r += dS_r^T q_r * scale
// in three kinds of task: dR and dP by column chunks (carrying dacc), dS_r and dq_r by
// row chunks, dk_r by column chunks.

// dR row by row and dP on columns [c0, c1), bottom row up from dacc; dacc moves to the
// block's start. ds: every head's dS' stripe of the block.
template <typename T>
void runway_dp_columns(const AttentionArgs& a, const Block& blk, const std::vector<const T*>& ds, double* dacc,
                       T* dp, int64_t c0, int64_t c1) {
  const int64_t n = blk.width(), width = c1 - c0;
  const T minus_beta = static_cast<T>(-a.beta);
  T dr[kColumnChunk];
  for (int64_t r = blk.rows() - 1; r >= 0; --r) {
    const int64_t m = blk.i0 + r;
    std::copy(ds[0] + r * n + c0, ds[0] + r * n + c1, dr);
    for (size_t h = 1; h < ds.size(); ++h)
      for (int64_t j = 0; j < width; ++j) dr[j] += ds[h][r * n + c0 + j];
    const int64_t below = std::clamp(m, c0, c1), reach = std::clamp(m - 1, c0, c1);  // j < m; j + 1 < m
    for (int64_t j = c0; j < reach; ++j) {
      dp[r * n + j] = static_cast<T>(dacc[j]);
      dacc[j] += static_cast<double>(minus_beta * dr[j - c0]);
    }
    for (int64_t j = reach; j < below; ++j) dp[r * n + j] = static_cast<T>(dacc[j]);
    std::fill(dp + r * n + below, dp + r * n + c1, T(0));
  }
}

// The runway head's whole dS on the block's rows [r0, r1) (dP[m, m] = 0: the diagonal
// keeps -P dot), from its own dS' (ds_direct), P and dP, and its dq rows from it.
template <typename T>
void runway_ds_rows(const AttentionArgs& a, const Plan& pl, int64_t b, const Block& blk, const T* k, const T* p,
                    const T* dp, const T* ds_direct, T* dsr, T* dq, int64_t r0, int64_t r1) {
  const int64_t n = blk.width(), off_r = pl.head(b, a.runway_head);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t m = blk.i0 + r;
    const T *dp_row = dp + r * n, *p_row = p + r * n, *direct = ds_direct + r * n;
    T* out = dsr + r * n;
    double dot = 0;
    for (int64_t j = 0; j < m; ++j) dot += static_cast<double>(dp_row[j]) * static_cast<double>(p_row[j]);
    for (int64_t j = 0; j < m; ++j)
      out[j] = direct[j] + static_cast<T>(static_cast<double>(p_row[j]) * (static_cast<double>(dp_row[j]) - dot));
    out[m] = direct[m] + static_cast<T>(static_cast<double>(p_row[m]) * -dot);
    std::fill(out + m + 1, out + n, T(0));
  }
  tile_gemm<T>(false, false, r1 - r0, pl.D, n, static_cast<T>(a.scale), dsr + r0 * n, n, k + off_r, pl.D, T(0),
               dq + off_r + (blk.i0 + r0) * pl.D, pl.D);
}

// absorption, batch item b: query blocks in reverse. acc starts as the forward's state
// after the last row (runway_acc, the total over every row); each block subtracts its
// own column sums (in double) to get back to its start, where its R stripe begins.
//
// As in the forward, the team runs a pipeline of steps that each end with one barrier,
// two per block instead of nine (seven steps, and two of a first pass that summed acc). For block I, walking down:
//   step A(I): the heads of I (A' and dS'_h from R(I)), dS_r and dq_r of I + 1 (from
//              dP(I + 1)), and P and S_r of I - 1 (row chunks);
//   step B(I): dR and dP of I (from every dS'_h of I), dk_r of I + 1 (from dS_r(I + 1)),
//              and R of I - 1 (from P(I - 1), walking acc back).
// P lives for three blocks (made in A(I + 1), read in B(I + 1) and A(I - 1)), so it
// rotates among three stripes; S_r and the runway head's dS' among two.
template <typename T>
void absorption_backward_item(const AttentionArgs& a, const Plan& pl, int64_t b, const T* q, const T* k, const T* v,
                              const T* y, const T* lse, const T* runway_lse, const double* runway_acc, const T* dy,
                              T* dq, T* dk, T* dv, bool team) {
  const int64_t H = pl.H, D = pl.D, off_r = pl.head(b, a.runway_head);
  const bool through_r = !a.detach;  // gradients flow through R into the runway head
  Stripes<T> p(3, pl.rows, pl.T), runway_logits(2, pl.rows, pl.T), runway_ds(2, pl.rows, pl.T);
  Stripes<T> r_stripe(1, pl.rows, pl.T), dp(1, pl.rows, pl.T), dsr(1, pl.rows, pl.T);
  Stripes<T> ds(H, pl.rows, pl.T);                                           // dS'_h
  Stripes<T> head_scratch(team ? omp_get_max_threads() : 1, pl.rows, pl.T);  // a head's A', per thread
  std::vector<double> acc(runway_acc + b * pl.T, runway_acc + (b + 1) * pl.T), dacc(static_cast<size_t>(pl.T), 0.0);
  const auto in_range = [&](int64_t ib) { return ib >= 0 && ib < pl.blocks; };
  // Block ib's dS' stripe of head h (the runway head's alternates).
  const auto ds_of = [&](int64_t h, int64_t ib) { return h == a.runway_head ? runway_ds[ib % 2] : ds[h]; };
  for (int64_t h = 0; h < H; ++h) {
    std::fill(dk + pl.head(b, h), dk + pl.head(b, h) + pl.T * D, T(0));
    std::fill(dv + pl.head(b, h), dv + pl.head(b, h) + pl.T * D, T(0));
  }
  const int64_t last = pl.blocks - 1;
#pragma omp parallel if (team)
  for (int64_t ib = last + 1; ib >= -1; --ib) {
    // Step A(ib). The pipeline fills and drains: A(last + 1) only makes P and S_r of the
    // last block, A(-1) only dS_r of the first.
    const int64_t heads = in_range(ib) ? H : 0;
    const int64_t ds_chunks = through_r && in_range(ib + 1) ? chunks(pl.block(ib + 1).rows(), kRowChunk) : 0;
    const int64_t p_chunks = in_range(ib - 1) ? chunks(pl.block(ib - 1).rows(), kRowChunk) : 0;
#pragma omp for schedule(dynamic)
    for (int64_t task = 0; task < heads + ds_chunks + p_chunks; ++task) {
      if (task < heads) {
        const int64_t h = task;
        head_block_backward<T>(a, pl, b, h, pl.block(ib), q, k, v, y, lse, dy, r_stripe[0],
                               h == a.runway_head ? runway_logits[ib % 2] : nullptr, head_scratch[omp_get_thread_num()],
                               ds_of(h, ib), dq, dk, dv, !through_r || h != a.runway_head);
      } else if (task < heads + ds_chunks) {
        const Block blk = pl.block(ib + 1);
        const int64_t r0 = (task - heads) * kRowChunk;
        runway_ds_rows<T>(a, pl, b, blk, k, p[(ib + 1) % 3], dp[0], ds_of(a.runway_head, ib + 1), dsr[0], dq, r0,
                          std::min(blk.rows(), r0 + kRowChunk));
      } else {
        const Block blk = pl.block(ib - 1);
        const int64_t r0 = (task - heads - ds_chunks) * kRowChunk, n = blk.width();
        runway_probabilities<T>(a, pl, b, blk.part(r0, r0 + kRowChunk), q, k, p[(ib - 1) % 3] + r0 * n, nullptr,
                                runway_lse + b * pl.T + blk.i0 + r0, runway_logits[(ib - 1) % 2] + r0 * n);
      }
    }
    // Step B(ib).
    const int64_t dp_chunks = through_r && in_range(ib) ? chunks(pl.block(ib).width(), kColumnChunk) : 0;
    const int64_t dk_chunks = through_r && in_range(ib + 1) ? chunks(pl.block(ib + 1).width(), kColumnChunk) : 0;
    const int64_t r_chunks = in_range(ib - 1) ? chunks(pl.block(ib - 1).width(), kColumnChunk) : 0;
    std::vector<const T*> block_ds;  // every head's dS' of block ib
    for (int64_t h = 0; h < H && dp_chunks > 0; ++h) block_ds.push_back(ds_of(h, ib));
#pragma omp for schedule(dynamic)
    for (int64_t task = 0; task < dp_chunks + dk_chunks + r_chunks; ++task) {
      if (task < dp_chunks) {
        const Block blk = pl.block(ib);
        const int64_t c0 = task * kColumnChunk;
        runway_dp_columns<T>(a, blk, block_ds, dacc.data(), dp[0], c0, std::min(blk.width(), c0 + kColumnChunk));
      } else if (task < dp_chunks + dk_chunks) {
        const Block blk = pl.block(ib + 1);
        const int64_t c0 = (task - dp_chunks) * kColumnChunk;
        add_stripe_transposed_times<T>(blk, dsr[0], q + off_r + blk.i0 * D, D, static_cast<T>(a.scale), dk + off_r, c0,
                                       std::min(blk.width(), c0 + kColumnChunk));
      } else {
        const Block blk = pl.block(ib - 1);
        const int64_t c0 = (task - dp_chunks - dk_chunks) * kColumnChunk, c1 = std::min(blk.width(), c0 + kColumnChunk);
        subtract_block_columns<T>(blk, p[(ib - 1) % 3], acc.data(), c0, c1);
        std::vector<double> state(acc.begin() + c0, acc.begin() + c1);
        absorption_columns<T>(blk, p[(ib - 1) % 3], state.data(), r_stripe[0], c0, c1);
      }
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
                        const T* runway_lse, const double* runway_acc, const T* dy, T* dq, T* dk, T* dv) {
  const Plan pl(a);
  if (!a.rewired) return standard_backward(a, pl, q, k, v, y, lse, dy, dq, dk, dv);
  if (a.two_hop) {
    for (int64_t b = 0; b < pl.B; ++b) two_hop_backward_item(a, pl, b, q, k, v, dy, dq, dk, dv);
    return;
  }
  if (parallel_over_batch(pl)) {
#pragma omp parallel for schedule(dynamic)
    for (int64_t b = 0; b < pl.B; ++b)
      absorption_backward_item(a, pl, b, q, k, v, y, lse, runway_lse, runway_acc, dy, dq, dk, dv, false);
  } else {
    for (int64_t b = 0; b < pl.B; ++b)
      absorption_backward_item(a, pl, b, q, k, v, y, lse, runway_lse, runway_acc, dy, dq, dk, dv, true);
  }
}

}  // namespace

}  // namespace cpu

// The CPU backend's implementations of the kernels below.
static void cpu_blockwise_forward(Backend&, DType dt, const AttentionArgs& a, const void* q, const void* k,
                                  const void* v, void* y, void* lse, void* runway_lse, void* runway_acc) {
  cpu::dispatch_float(dt, "attention_blockwise_forward", [&](auto t) {
    using T = decltype(t);
    cpu::blockwise_forward<T>(a, static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v),
                              static_cast<T*>(y), static_cast<T*>(lse), static_cast<T*>(runway_lse),
                              static_cast<double*>(runway_acc));
  });
}

static void cpu_blockwise_backward(Backend&, DType dt, const AttentionArgs& a, const void* q, const void* k,
                                   const void* v, const void* y, const void* lse, const void* runway_lse,
                                   const void* runway_acc, const void* dy, void* dq, void* dk, void* dv) {
  cpu::dispatch_float(dt, "attention_blockwise_backward", [&](auto t) {
    using T = decltype(t);
    cpu::blockwise_backward<T>(a, static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v),
                               static_cast<const T*>(y), static_cast<const T*>(lse),
                               static_cast<const T*>(runway_lse), static_cast<const double*>(runway_acc),
                               static_cast<const T*>(dy), static_cast<T*>(dq),
                               static_cast<T*>(dk), static_cast<T*>(dv));
  });
}

// ---- the defaults: the materialised kernels in scratch --------------------------------------
// A backend without blockwise kernels computes the same numbers through its (possibly
// default) materialised attention, holding the maps only for the duration of the call:
// correct everywhere, memory-linear only where a backend implements the pair. Its lse,
// runway_lse and runway_acc are not computed (filled with 0): its backward recomputes the
// forward.

void attention_blockwise_forward_default(Backend& b, DType dt, const AttentionArgs& a, const void* q, const void* k,
                                         const void* v, void* y, void* lse, void* runway_lse, void* runway_acc) {
  const int64_t TT = a.seq * a.seq;
  op_helpers::Scratch attn(b, dt, a.batch * a.heads * TT), p(b, dt, a.rewired ? a.batch * TT : 0),
      r(b, dt, a.rewired ? a.batch * TT : 0);
  b.attention_forward(dt, a, q, k, v, y, attn.get(), p.get(), r.get());
  b.fill(dt, lse, a.batch * a.heads * a.seq, 0.0);
  if (a.rewired) {
    b.fill(dt, runway_lse, a.batch * a.seq, 0.0);
    b.fill(DType::Float64, runway_acc, a.batch * a.seq, 0.0);
  }
}

void attention_blockwise_backward_default(Backend& b, DType dt, const AttentionArgs& a, const void* q, const void* k,
                                          const void* v, const void*, const void*, const void*, const void*,
                                          const void* dy, void* dq, void* dk, void* dv) {
  const int64_t TT = a.seq * a.seq;
  op_helpers::Scratch y(b, dt, a.batch * a.heads * a.seq * a.head_dim), attn(b, dt, a.batch * a.heads * TT),
      p(b, dt, a.rewired ? a.batch * TT : 0), r(b, dt, a.rewired ? a.batch * TT : 0);
  b.attention_forward(dt, a, q, k, v, y.get(), attn.get(), p.get(), r.get());
  b.attention_backward(dt, a, q, k, v, attn.get(), p.get(), dy, dq, dk, dv);
}

// ---- the kernels (engine/fused_kernel.h); CUDA's implementations: cuda/ops/attention_blockwise.cu

static const FusedKernel<DType, const AttentionArgs&, const void*, const void*, const void*, void*, void*, void*, void*>
    blockwise_forward_kernel("attention_blockwise_forward", &attention_blockwise_forward_default,
                             &cpu_blockwise_forward);
static const FusedKernel<DType, const AttentionArgs&, const void*, const void*, const void*, const void*,
                         const void*, const void*, const void*, const void*, void*, void*, void*>
    blockwise_backward_kernel("attention_blockwise_backward", &attention_blockwise_backward_default,
                              &cpu_blockwise_backward);

void Backend::attention_blockwise_forward(DType dt, const AttentionArgs& args, const void* q, const void* k,
                                          const void* v, void* y, void* lse, void* runway_lse, void* runway_acc) {
  blockwise_forward_kernel(*this, dt, args, q, k, v, y, lse, runway_lse, runway_acc);
}

void Backend::attention_blockwise_backward(DType dt, const AttentionArgs& args, const void* q, const void* k,
                                           const void* v, const void* y, const void* lse, const void* runway_lse,
                                           const void* runway_acc, const void* dy, void* dq, void* dk, void* dv) {
  blockwise_backward_kernel(*this, dt, args, q, k, v, y, lse, runway_lse, runway_acc, dy, dq, dk, dv);
}

}  // namespace runway
