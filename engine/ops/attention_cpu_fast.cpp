// CPU causal attention, standard and runway-rewired, forward and backward: the tuned
// kernels behind the ops attention, rewired_attention and qkv_attention
// (engine/ops/attention.cpp), held equal to the plain-loop reference there.
//
// Layout: q, k, v, y, dq, dk, dv are (B, H, T, D) row-major; attn is (B, H, T, T);
// p and r are (B, T, T). Matrix products per (b, h) go through single-threaded
// OpenBLAS (engine/ops/cpu_gemm.h) inside the OpenMP loop over (b, h), so threads do not
// oversubscribe. The softmax is saved (attn), not recomputed: up to T ~ 1k the
// (B, H, T, T) buffer is affordable and the backward needs it whole; longer sequences
// run the blockwise kernels (engine/ops/attention_cpu_blockwise.cpp), which keep only
// per-row statistics.
//
// Names follow docs/attention.md: S logits, A' = attn, P runway-head probabilities,
// R runway coefficients, dS' the gradient of the rewired logits.
#include "engine/ops/attention_cpu_fast.h"

#include <Eigen/Dense>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "engine/cpu_backend.h"
#include "engine/cpu_kernels.h"
#include "engine/ops/cpu_gemm.h"

namespace runway::cpu {

namespace {

template <typename T>
using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <typename T>
using MapMat = Eigen::Map<Mat<T>>;
template <typename T>
using ConstMap = Eigen::Map<const Mat<T>>;

// Causal products are done in row blocks of kCausalBlock: block [r0, r1) of a lower-
// triangular (T x T) operand only has columns [0, r1), so about half the work of the
// full square is skipped, with a few large gemms rather than one per row.
constexpr int64_t kCausalBlock = 32;

// C = alpha L X for L lower triangular (T x T, row-major) and X (T x D). L's entries
// above the diagonal inside a row block are read, so they must be zeros.
template <typename T>
void lower_times(const T* l, const T* x, T* c, int64_t seq, int64_t dim, T alpha) {
  for (int64_t r0 = 0; r0 < seq; r0 += kCausalBlock) {
    const int64_t r1 = std::min(seq, r0 + kCausalBlock);
    tile_gemm<T>(false, false, r1 - r0, dim, r1, alpha, l + r0 * seq, seq, x, dim, T(0), c + r0 * dim, dim);
  }
}

// C = alpha L^T X for L lower triangular with zeros above the diagonal: row block
// [c0, c1) of C only needs rows [c0, T) of L.
template <typename T>
void lower_transposed_times(const T* l, const T* x, T* c, int64_t seq, int64_t dim, T alpha) {
  for (int64_t c0 = 0; c0 < seq; c0 += kCausalBlock) {
    const int64_t c1 = std::min(seq, c0 + kCausalBlock);
    tile_gemm<T>(true, false, c1 - c0, dim, seq - c0, alpha, l + c0 * seq + c0, seq, x + c0 * dim, dim, T(0),
            c + c0 * dim, dim);
  }
}

// The lower part (row blocks) of alpha X Y^T for X, Y (T x D) into s (T x T); entries
// above the diagonal within a block get values too, those past the block are untouched.
template <typename T>
void lower_of_outer(const T* x, const T* y, T* s, int64_t seq, int64_t dim, T alpha) {
  for (int64_t r0 = 0; r0 < seq; r0 += kCausalBlock) {
    const int64_t r1 = std::min(seq, r0 + kCausalBlock);
    tile_gemm<T>(false, true, r1 - r0, r1, dim, alpha, x + r0 * dim, dim, y, dim, T(0), s + r0 * seq, seq);
  }
}

// Causal logits of one head into s (T x T, row-major): S[i,j] = (q_i . k_j) * scale
// - slope * (i - j) for j <= i. Only the lower triangle is meaningful afterwards.
template <typename T>
void head_logits(const T* q, const T* k, int64_t seq, int64_t dim, double scale, double slope, T* s) {
  lower_of_outer(q, k, s, seq, dim, static_cast<T>(scale));
  if (slope != 0.0)
    for (int64_t i = 0; i < seq; ++i)
      for (int64_t j = 0; j <= i; ++j) s[i * seq + j] -= static_cast<T>(slope * static_cast<double>(i - j));
}

// Row-wise softmax over j <= i of logit(i, j); writes probabilities into out
// (T x T, zeros above the diagonal). Eigen arrays keep exp vectorised.
template <typename T, typename Logit>
void causal_softmax(int64_t seq, Logit logit, T* out) {
  using Row = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>;
  for (int64_t i = 0; i < seq; ++i) {
    T* row = out + i * seq;
    for (int64_t j = 0; j <= i; ++j) row[j] = logit(i, j);
    Row r(row, i + 1);
    r = (r - r.maxCoeff()).exp();
    r *= T(1) / r.sum();
    std::fill(row + i + 1, row + seq, T(0));
  }
}

// absorption: R[i,j] = sum_{j<k<i} P[k,j], one running sum per column j, exactly the
// state the spec's incremental decoding keeps (acc[j]).
template <typename T>
void absorption_summary(const T* p, T* r, int64_t seq) {
  std::vector<T> acc(seq, T(0));
  for (int64_t i = 0; i < seq; ++i) {
    T* row = r + i * seq;
    for (int64_t j = 0; j < i; ++j) row[j] = acc[j];
    std::fill(row + std::max<int64_t>(i, 0), row + seq, T(0));
    for (int64_t j = 0; j < i; ++j) acc[j] += p[i * seq + j];
  }
}

// Strictly lower part of P: L(P) in the spec.
template <typename T>
Mat<T> strictly_lower(const T* p, int64_t seq) {
  Mat<T> lp = ConstMap<T>(p, seq, seq);
  lp.template triangularView<Eigen::Upper>().setZero();
  return lp;
}

// two_hop: R = L(P) L(P), R[i,j] = sum_{j<k<i} P[i,k] P[k,j].
template <typename T>
void two_hop_summary(const T* p, T* r, int64_t seq) {
  const Mat<T> lp = strictly_lower(p, seq);
  MapMat<T>(r, seq, seq).noalias() = lp * lp;
}

// Softmax backward restricted to j <= i: dS[i,j] = A[i,j] (dA[i,j] - sum_j' A[i,j'] dA[i,j']).
template <typename T>
void causal_softmax_backward(const T* a, const T* da, T* ds, int64_t seq) {
  for (int64_t i = 0; i < seq; ++i) {
    const T* ar = a + i * seq;
    const T* gr = da + i * seq;
    T* out = ds + i * seq;
    T dot = 0;
    for (int64_t j = 0; j <= i; ++j) dot += ar[j] * gr[j];
    for (int64_t j = 0; j <= i; ++j) out[j] = ar[j] * (gr[j] - dot);
    std::fill(out + i + 1, out + seq, T(0));
  }
}

// Scratch memory from the CPU backend's caching allocator: a training step asks for the
// same sizes every time, and fresh multi-MiB blocks from new[] cost page faults and
// kernel zeroing on every call.
template <typename T>
class Scratch {
 public:
  explicit Scratch(int64_t n)
      : ptr_(n > 0 ? static_cast<T*>(backend_for(Device::CPU).allocate(static_cast<size_t>(n) * sizeof(T))) : nullptr) {}
  ~Scratch() {
    if (ptr_) backend_for(Device::CPU).deallocate(ptr_);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  T* get() const { return ptr_; }

 private:
  T* ptr_;
};

// One (T x T) scratch per thread for a head's logits or dA, kept between calls: a fresh
// heap block per head came back page-faulted whenever glibc had trimmed it.
template <typename T>
T* head_scratch(int64_t n, int slot = 0) {
  thread_local std::vector<T> buffers[2];
  std::vector<T>& buffer = buffers[slot];
  if (static_cast<int64_t>(buffer.size()) < n) buffer.resize(static_cast<size_t>(n));
  return buffer.data();
}

double slope_of(const AttentionArgs& a, int64_t h) {
  return a.alibi_slopes.empty() ? 0.0 : a.alibi_slopes[h];
}

}  // namespace

template <typename T>
void attention_forward(const AttentionArgs& a, const T* q, const T* k, const T* v, T* y, T* attn,
                       T* p, T* r) {
  const int64_t B = a.batch, H = a.heads, N = a.seq, D = a.head_dim;
  const int64_t hd = N * D, tt = N * N;

  // Stage 1 (rewired): P = softmax of the runway head's un-rewired logits S_r, then R.
  // S_r is kept so stage 2 does not compute the runway head's logits twice.
  Scratch<T> runway_logits(a.rewired ? B * tt : 0);
  if (a.rewired) {
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < B; ++b) {
      const int64_t off = (b * H + a.runway_head) * hd;
      const T* s = runway_logits.get() + b * tt;
      head_logits(q + off, k + off, N, D, a.scale, slope_of(a, a.runway_head), runway_logits.get() + b * tt);
      causal_softmax<T>(N, [&](int64_t i, int64_t j) { return s[i * N + j]; }, p + b * tt);
      if (a.two_hop) {
        two_hop_summary(p + b * tt, r + b * tt, N);
      } else {
        absorption_summary(p + b * tt, r + b * tt, N);
      }
    }
  }

  // Stage 2: every head, S'_h = S_h - beta R; A'_h = softmax(S'_h); y_h = A'_h v_h.
  const T beta = static_cast<T>(a.rewired ? a.beta : 0.0);
#pragma omp parallel for schedule(dynamic)
  for (int64_t bh = 0; bh < B * H; ++bh) {
    const int64_t b = bh / H, h = bh % H;
    const T* logits;
    if (a.rewired && h == a.runway_head) {
      logits = runway_logits.get() + b * tt;
    } else {
      T* s = head_scratch<T>(tt);
      head_logits(q + bh * hd, k + bh * hd, N, D, a.scale, slope_of(a, h), s);
      logits = s;
    }
    T* ah = attn + bh * tt;
    if (a.rewired) {
      const T* rb = r + b * tt;
      causal_softmax<T>(N, [&](int64_t i, int64_t j) { return logits[i * N + j] - beta * rb[i * N + j]; }, ah);
    } else {
      causal_softmax<T>(N, [&](int64_t i, int64_t j) { return logits[i * N + j]; }, ah);
    }
    lower_times(ah, v + bh * hd, y + bh * hd, N, D, T(1));  // A' has zeros above the diagonal
  }
}

namespace {

// ---- the backward's steps (docs/attention.md, section (c)) -----------------------------
//
// Shapes per call: one head's attn_h is (T x T), its dy_h, v_h, q_h, k_h and gradients
// (T x D); one batch's ds_b is (H, T, T) and p_b, ds_r (T x T).

// Step 1 for one head: dV_h = A'^T dY_h;  dA' = dY_h V_h^T;  dS'_h = softmax backward
// (uses the saved A'). `dA` is (T x T) scratch; only its lower triangle is formed and read.
template <typename T>
void value_and_softmax_backward(const T* attn_h, const T* dy_h, const T* v_h, T* dv_h, T* dA, T* ds_h,
                                int64_t seq, int64_t dim) {
  lower_transposed_times(attn_h, dy_h, dv_h, seq, dim, T(1));
  lower_of_outer(dy_h, v_h, dA, seq, dim, T(1));
  causal_softmax_backward(attn_h, dA, ds_h, seq);
}

// Step 5 for one head: dQ_h = dS_h K_h * scale;  dK_h = dS_h^T Q_h * scale. dS has
// zeros above the diagonal (the softmax backward writes them).
template <typename T>
void logits_backward(const T* ds_h, const T* q_h, const T* k_h, T* dq_h, T* dk_h, int64_t seq, int64_t dim,
                     T scale) {
  lower_times(ds_h, k_h, dq_h, seq, dim, scale);
  lower_transposed_times(ds_h, q_h, dk_h, seq, dim, scale);
}

// Steps 2-4 for one batch, two_hop: dR = -beta sum_h dS'_h (only the band i - j >= 2,
// where R depends on P); dP = L(dR L(P)^T) + L(L(P)^T dR); dS_r += P (dP - rowsum(dP P)).
template <typename T>
void two_hop_runway_backward(const T* ds_b, const T* p_b, T* ds_r, int64_t heads, int64_t seq, T neg_beta) {
  const int64_t tt = seq * seq;
  Mat<T> dR = Mat<T>::Zero(seq, seq);
  for (int64_t h = 0; h < heads; ++h) {
    const T* dsh = ds_b + h * tt;
    for (int64_t i = 2; i < seq; ++i)
      for (int64_t j = 0; j + 2 <= i; ++j) dR(i, j) += dsh[i * seq + j];
  }
  dR *= neg_beta;
  const Mat<T> lp = strictly_lower(p_b, seq);
  Mat<T> dP(seq, seq);
  dP.noalias() = dR * lp.transpose();
  dP.noalias() += lp.transpose() * dR;
  dP.template triangularView<Eigen::Upper>().setZero();
  Mat<T> dSr(seq, seq);
  causal_softmax_backward(p_b, dP.data(), dSr.data(), seq);
  for (int64_t i = 0; i < seq; ++i)
    for (int64_t j = 0; j <= i; ++j) ds_r[i * seq + j] += dSr(i, j);
}

// Steps 2-4 for one batch, absorption: dP[k,j] = sum_{i>k} dR[i,j] for j < k is a
// reverse exclusive scan down each column, so one sweep from the last row up forms dR
// row i (from every head's dS' row i), dP row i, and the softmax backward of P on that
// row, in place.
template <typename T>
void absorption_runway_backward(const T* ds_b, const T* p_b, T* ds_r, int64_t heads, int64_t seq, T neg_beta) {
  const int64_t tt = seq * seq;
  std::vector<T> acc(seq, T(0)), dp_row(seq), dr_row(seq);
  for (int64_t i = seq - 1; i >= 0; --i) {
    for (int64_t j = 0; j < i; ++j) dp_row[j] = acc[j];  // sum of dR[i', j] over i' > i
    // dR row i, only j <= i - 2 (must be read before dS_r row i is updated).
    std::fill(dr_row.begin(), dr_row.begin() + std::max<int64_t>(i - 1, 0), T(0));
    for (int64_t h = 0; h < heads; ++h) {
      const T* dsh = ds_b + h * tt + i * seq;
      for (int64_t j = 0; j + 2 <= i; ++j) dr_row[j] += dsh[j];
    }
    for (int64_t j = 0; j + 2 <= i; ++j) acc[j] += neg_beta * dr_row[j];
    // dS_r[i, j] += P[i,j] (dP[i,j] - sum_j' P[i,j'] dP[i,j']), with dP[i, i] = 0.
    const T* prow = p_b + i * seq;
    T dot = 0;
    for (int64_t j = 0; j < i; ++j) dot += prow[j] * dp_row[j];
    T* out = ds_r + i * seq;
    for (int64_t j = 0; j < i; ++j) out[j] += prow[j] * (dp_row[j] - dot);
    out[i] -= prow[i] * dot;
  }
}

// The backward without a gradient path through R (standard attention, beta = 0 or
// detached R): each head's dS is used only by its own dQ and dK, so steps 1 and 5 run in
// one pass per head, with dS in a per-thread scratch that stays in cache, instead of a
// (B, H, T, T) buffer and a second parallel loop.
template <typename T>
void attention_backward_per_head(const AttentionArgs& a, const T* q, const T* k, const T* v, const T* attn,
                                 const T* dy, T* dq, T* dk, T* dv) {
  const int64_t B = a.batch, H = a.heads, N = a.seq, D = a.head_dim;
  const int64_t hd = N * D, tt = N * N;
  const T scale = static_cast<T>(a.scale);
#pragma omp parallel for schedule(dynamic)
  for (int64_t bh = 0; bh < B * H; ++bh) {
    T* dA = head_scratch<T>(tt, 0);
    T* dS = head_scratch<T>(tt, 1);
    value_and_softmax_backward(attn + bh * tt, dy + bh * hd, v + bh * hd, dv + bh * hd, dA, dS, N, D);
    logits_backward(dS, q + bh * hd, k + bh * hd, dq + bh * hd, dk + bh * hd, N, D, scale);
  }
}

}  // namespace

template <typename T>
void attention_backward(const AttentionArgs& a, const T* q, const T* k, const T* v, const T* attn,
                        const T* p, const T* dy, T* dq, T* dk, T* dv) {
  // R's value is not needed: every summary is linear (absorption) or bilinear (two_hop)
  // in P, so its derivative needs only P.
  const bool through_r = a.rewired && !a.detach && a.beta != 0.0;
  if (!through_r) {
    attention_backward_per_head(a, q, k, v, attn, dy, dq, dk, dv);
    return;
  }
  const int64_t B = a.batch, H = a.heads, N = a.seq, D = a.head_dim;
  const int64_t hd = N * D, tt = N * N;

  // dS' per head, then dS. Not zero-filled: the softmax backward writes every entry.
  Scratch<T> ds_buffer(B * H * tt);
  T* const ds = ds_buffer.get();

  // Step 1: dV_h, dA'_h and dS'_h for every head.
#pragma omp parallel for schedule(dynamic)
  for (int64_t bh = 0; bh < B * H; ++bh)
    value_and_softmax_backward(attn + bh * tt, dy + bh * hd, v + bh * hd, dv + bh * hd, head_scratch<T>(tt),
                               ds + bh * tt, N, D);

  // Steps 2-4, through R into the runway head: dR = -beta sum_h dS'_h, then dP, then
  // dS_r += P (dP - rowsum). R is 0 wherever i - j < 2, so only that strictly-lower band
  // of dR matters.
  const T neg_beta = static_cast<T>(-a.beta);
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    const T* ds_b = ds + b * H * tt;
    T* ds_r = ds + (b * H + a.runway_head) * tt;  // dS_r, gains the runway path
    if (a.two_hop)
      two_hop_runway_backward(ds_b, p + b * tt, ds_r, H, N, neg_beta);
    else
      absorption_runway_backward(ds_b, p + b * tt, ds_r, H, N, neg_beta);
  }

  // Step 5: dQ_h and dK_h for every head.
  const T scale = static_cast<T>(a.scale);
#pragma omp parallel for schedule(dynamic)
  for (int64_t bh = 0; bh < B * H; ++bh)
    logits_backward(ds + bh * tt, q + bh * hd, k + bh * hd, dq + bh * hd, dk + bh * hd, N, D, scale);
}

#define RUNWAY_INSTANTIATE(T)                                                                    \
  template void attention_forward<T>(const AttentionArgs&, const T*, const T*, const T*, T*, T*, \
                                     T*, T*);                                                    \
  template void attention_backward<T>(const AttentionArgs&, const T*, const T*, const T*,       \
                                      const T*, const T*, const T*, T*, T*, T*);
RUNWAY_INSTANTIATE(float)
RUNWAY_INSTANTIATE(double)
#undef RUNWAY_INSTANTIATE

}  // namespace runway::cpu

namespace runway {

using cpu::dispatch_float;

// ---- the CPU backend's attention methods: dispatch to the kernels above ----------------

namespace cpu {

void cpu_attention_forward(Backend&, DType dt, const AttentionArgs& args, const void* q, const void* k, const void* v,
                           void* y, void* attn, void* p, void* r) {
  dispatch_float(dt, "attention", [&](auto t) {
    using T = decltype(t);
    attention_forward<T>(args, static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v),
                         static_cast<T*>(y), static_cast<T*>(attn), static_cast<T*>(p), static_cast<T*>(r));
  });
}

void cpu_attention_backward(Backend&, DType dt, const AttentionArgs& args, const void* q, const void* k,
                            const void* v, const void* attn, const void* p, const void* dy, void* dq, void* dk,
                            void* dv) {
  dispatch_float(dt, "attention_backward", [&](auto t) {
    using T = decltype(t);
    attention_backward<T>(args, static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v),
                          static_cast<const T*>(attn), static_cast<const T*>(p), static_cast<const T*>(dy),
                          static_cast<T*>(dq), static_cast<T*>(dk), static_cast<T*>(dv));
  });
}

}  // namespace cpu

}  // namespace runway
