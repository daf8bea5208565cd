// CPU causal attention, standard and runway-rewired, forward and backward.
//
// Layout: q, k, v, y, dq, dk, dv are (B, H, T, D) row-major; attn is (B, H, T, T);
// p and r are (B, T, T). Matrix products per (b, h) go through Eigen (single-threaded
// inside the OpenMP loop over (b, h), so threads do not oversubscribe). The softmax
// is saved (attn), not recomputed: for the sequence lengths this engine trains on
// (T <= ~1k) the (B, H, T, T) buffer is affordable and the backward needs it whole.
//
// Names follow docs/attention.md: S logits, A' = attn, P runway-head probabilities,
// R runway coefficients, dS' the gradient of the rewired logits.
#include "engine/cpu_attention.h"

#include <Eigen/Dense>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

namespace runway::cpu {

namespace {

template <typename T>
using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <typename T>
using MapMat = Eigen::Map<Mat<T>>;
template <typename T>
using ConstMap = Eigen::Map<const Mat<T>>;

// Causal logits of one head into s (T x T, row-major): S[i,j] = (q_i . k_j) * scale
// - slope * (i - j) for j <= i. Only the lower triangle is meaningful afterwards.
template <typename T>
void head_logits(const T* q, const T* k, int64_t seq, int64_t dim, double scale, double slope, T* s) {
  ConstMap<T> Q(q, seq, dim), K(k, seq, dim);
  MapMat<T> S(s, seq, seq);
  S.noalias() = (Q * K.transpose()) * static_cast<T>(scale);
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
    Mat<T> s;
    const T* logits;
    if (a.rewired && h == a.runway_head) {
      logits = runway_logits.get() + b * tt;
    } else {
      s.resize(N, N);
      head_logits(q + bh * hd, k + bh * hd, N, D, a.scale, slope_of(a, h), s.data());
      logits = s.data();
    }
    T* ah = attn + bh * tt;
    if (a.rewired) {
      const T* rb = r + b * tt;
      causal_softmax<T>(N, [&](int64_t i, int64_t j) { return logits[i * N + j] - beta * rb[i * N + j]; }, ah);
    } else {
      causal_softmax<T>(N, [&](int64_t i, int64_t j) { return logits[i * N + j]; }, ah);
    }
    MapMat<T>(y + bh * hd, N, D).noalias() =
        ConstMap<T>(ah, N, N).template triangularView<Eigen::Lower>() * ConstMap<T>(v + bh * hd, N, D);
  }
}

template <typename T>
void attention_backward(const AttentionArgs& a, const T* q, const T* k, const T* v, const T* attn,
                        const T* p, const T* r, const T* dy, T* dq, T* dk, T* dv) {
  (void)r;  // R's value is not needed: every summary is linear or bilinear in P
  const int64_t B = a.batch, H = a.heads, N = a.seq, D = a.head_dim;
  const int64_t hd = N * D, tt = N * N;
  // dS' per head, then dS. Not zero-filled: the softmax backward writes every entry.
  Scratch<T> ds_buffer(B * H * tt);
  T* const ds = ds_buffer.get();

  // dV_h = A'^T dY_h;  dA' = dY_h V_h^T;  dS'_h = softmax backward (uses the saved A').
#pragma omp parallel for schedule(dynamic)
  for (int64_t bh = 0; bh < B * H; ++bh) {
    ConstMap<T> A(attn + bh * tt, N, N), dY(dy + bh * hd, N, D), V(v + bh * hd, N, D);
    MapMat<T>(dv + bh * hd, N, D).noalias() = A.transpose() * dY;
    Mat<T> dA(N, N);
    dA.noalias() = dY * V.transpose();
    causal_softmax_backward(attn + bh * tt, dA.data(), ds + bh * tt, N);
  }

  // Through R into the runway head: dR = -beta sum_h dS'_h, then dP, then dS_r += P (dP - rowsum).
  // R is 0 wherever i - j < 2, so only that strictly-lower band of dR matters.
  if (a.rewired && !a.detach && a.beta != 0.0) {
    const T neg_beta = static_cast<T>(-a.beta);
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < B; ++b) {
      T* dsr = ds + (b * H + a.runway_head) * tt;  // dS_r, gains the runway path
      const T* pb = p + b * tt;
      if (a.two_hop) {
        Mat<T> dR = Mat<T>::Zero(N, N);
        for (int64_t h = 0; h < H; ++h) {
          const T* dsh = ds + (b * H + h) * tt;
          for (int64_t i = 2; i < N; ++i)
            for (int64_t j = 0; j + 2 <= i; ++j) dR(i, j) += dsh[i * N + j];
        }
        dR *= neg_beta;
        // dP = L(dR L(P)^T) + L(L(P)^T dR)
        const Mat<T> lp = strictly_lower(pb, N);
        Mat<T> dP(N, N);
        dP.noalias() = dR * lp.transpose();
        dP.noalias() += lp.transpose() * dR;
        dP.template triangularView<Eigen::Upper>().setZero();
        Mat<T> dSr(N, N);
        causal_softmax_backward(pb, dP.data(), dSr.data(), N);
        for (int64_t i = 0; i < N; ++i)
          for (int64_t j = 0; j <= i; ++j) dsr[i * N + j] += dSr(i, j);
      } else {
        // dP[k,j] = sum_{i>k} dR[i,j] for j < k: a reverse exclusive scan down each
        // column, so one sweep from the last row up forms dR row i (from every head's
        // dS' row i), dP row i, and the softmax backward of P on that row, in place.
        std::vector<T> acc(N, T(0)), dp_row(N), dr_row(N);
        for (int64_t i = N - 1; i >= 0; --i) {
          for (int64_t j = 0; j < i; ++j) dp_row[j] = acc[j];  // sum of dR[i', j] over i' > i
          // dR row i, only j <= i - 2 (must be read before dS_r row i is updated).
          std::fill(dr_row.begin(), dr_row.begin() + std::max<int64_t>(i - 1, 0), T(0));
          for (int64_t h = 0; h < H; ++h) {
            const T* dsh = ds + ((b * H + h) * N + i) * N;
            for (int64_t j = 0; j + 2 <= i; ++j) dr_row[j] += dsh[j];
          }
          for (int64_t j = 0; j + 2 <= i; ++j) acc[j] += neg_beta * dr_row[j];
          // dS_r[i, j] += P[i,j] (dP[i,j] - sum_j' P[i,j'] dP[i,j']), with dP[i, i] = 0.
          const T* prow = pb + i * N;
          T dot = 0;
          for (int64_t j = 0; j < i; ++j) dot += prow[j] * dp_row[j];
          T* out = dsr + i * N;
          for (int64_t j = 0; j < i; ++j) out[j] += prow[j] * (dp_row[j] - dot);
          out[i] -= prow[i] * dot;
        }
      }
    }
  }

  // dQ_h = dS_h K_h * scale;  dK_h = dS_h^T Q_h * scale.
  const T scale = static_cast<T>(a.scale);
#pragma omp parallel for schedule(dynamic)
  for (int64_t bh = 0; bh < B * H; ++bh) {
    ConstMap<T> dS(ds + bh * tt, N, N), Q(q + bh * hd, N, D), K(k + bh * hd, N, D);
    MapMat<T>(dq + bh * hd, N, D).noalias() = (dS.template triangularView<Eigen::Lower>() * K) * scale;
    MapMat<T>(dk + bh * hd, N, D).noalias() = (dS.transpose().template triangularView<Eigen::Upper>() * Q) * scale;
  }
}

template <typename T>
void rope(const T* x, T* y, int64_t rows, int64_t seq, int64_t dim, double base,
          int64_t position_offset, bool inverse) {
  const int64_t half = dim / 2;
  // The angles depend only on (t, c): one cos/sin table of seq x half entries, computed
  // in double once per call, instead of a sincos per element (which was 9% of a
  // training step).
  std::vector<T> cos_table(seq * half), sin_table(seq * half);
  const double sign = inverse ? -1.0 : 1.0;
  for (int64_t c = 0; c < half; ++c) {
    const double inv_freq = std::pow(base, -2.0 * static_cast<double>(c) / static_cast<double>(dim));
    for (int64_t t = 0; t < seq; ++t) {
      const double angle = static_cast<double>(t + position_offset) * inv_freq;
      cos_table[t * half + c] = static_cast<T>(std::cos(angle));
      sin_table[t * half + c] = static_cast<T>(sign * std::sin(angle));
    }
  }
#pragma omp parallel for schedule(static) if (rows * seq * dim > 1 << 14)
  for (int64_t rt = 0; rt < rows * seq; ++rt) {
    const int64_t t = rt % seq;
    const T* xr = x + rt * dim;
    T* yr = y + rt * dim;
    const T* cs = cos_table.data() + t * half;
    const T* sn = sin_table.data() + t * half;
    for (int64_t c = 0; c < half; ++c) {
      const T x1 = xr[c], x2 = xr[c + half];
      yr[c] = x1 * cs[c] - x2 * sn[c];
      yr[c + half] = x1 * sn[c] + x2 * cs[c];
    }
  }
}

#define RUNWAY_INSTANTIATE(T)                                                                    \
  template void attention_forward<T>(const AttentionArgs&, const T*, const T*, const T*, T*, T*, \
                                     T*, T*);                                                    \
  template void attention_backward<T>(const AttentionArgs&, const T*, const T*, const T*,       \
                                      const T*, const T*, const T*, const T*, T*, T*, T*);      \
  template void rope<T>(const T*, T*, int64_t, int64_t, int64_t, double, int64_t, bool);
RUNWAY_INSTANTIATE(float)
RUNWAY_INSTANTIATE(double)
#undef RUNWAY_INSTANTIATE

}  // namespace runway::cpu
