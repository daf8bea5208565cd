// Causal attention, standard and runway-rewired: the one entry point causal_attention and
// its paths (fused ops with handwritten backwards, the composed twin, cached decoding),
// the plain loop-level CPU reference kernel, Backend's default kernels composed from
// primitives, and the attention rows of the gradcheck table. The tuned CPU kernels are in
// engine/ops/attention_cpu_fast.cpp, RoPE in engine/ops/rope.cpp, the CUDA kernels in
// cuda/ops/attention.cu. The math, with the same names: engine/ops/attention.h and
// docs/attention.md.
#include "engine/ops/attention.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/fused_kernel.h"
#include "engine/ops/attention_cpu_fast.h"
#include "engine/ops.h"
#include "engine/ops/op_samples.h"

namespace runway {

RunwaySummary parse_runway_summary(const std::string& name) {
  if (name == "absorption") return RunwaySummary::Absorption;
  if (name == "two_hop") return RunwaySummary::TwoHop;
  throw Error(fmt::format("unknown runway summary '{}': allowed values are absorption, two_hop", name));
}

const char* runway_summary_name(RunwaySummary s) {
  return s == RunwaySummary::Absorption ? "absorption" : "two_hop";
}

int64_t blockwise_auto_from(bool rewired, const RunwayOptions& runway, int64_t batch) {
  const bool two_hop = rewired && runway.summary == RunwaySummary::TwoHop;
  return two_hop && batch < 2 ? std::numeric_limits<int64_t>::max() : kBlockwiseAutoFrom;
}

AttentionImpl parse_attention_impl(const std::string& name) {
  if (name == "auto") return AttentionImpl::Auto;
  if (name == "materialized") return AttentionImpl::Materialized;
  if (name == "blockwise") return AttentionImpl::Blockwise;
  throw Error(fmt::format("unknown attention implementation '{}': allowed values are auto, materialized, blockwise",
                          name));
}

const char* attention_impl_name(AttentionImpl impl) {
  switch (impl) {
    case AttentionImpl::Materialized: return "materialized";
    case AttentionImpl::Blockwise: return "blockwise";
    case AttentionImpl::Auto: break;
  }
  return "auto";
}

std::vector<double> alibi_slopes(int64_t heads) {
  std::vector<double> s(heads);
  for (int64_t h = 0; h < heads; ++h)
    s[h] = std::pow(2.0, -8.0 * static_cast<double>(h + 1) / static_cast<double>(heads));
  return s;
}

namespace {

void set_runway(AttentionArgs& a, const RunwayOptions& o, const char* op) {
  if (o.runway_head < 0 || o.runway_head >= a.heads)
    throw Error(fmt::format("{}: runway_head {} is out of range for {} heads (allowed 0..{})", op,
                            o.runway_head, a.heads, a.heads - 1));
  if (!std::isfinite(o.beta)) throw Error(fmt::format("{}: runway_beta must be finite, got {}", op, o.beta));
  a.rewired = true;
  a.runway_head = o.runway_head;
  a.two_hop = o.summary == RunwaySummary::TwoHop;
  a.beta = o.beta;
  a.detach = o.detach;
}

// What the fused forward saves for its backward: materialised, the maps attn = A' and,
// rewired, P and R; blockwise, the output y, the row statistics lse (B,H,T) and
// runway_lse (B,T), and runway_acc (B,T, float64), absorption's state after the last row.
struct Saved {
  Tensor q, k, v;  // contiguous, detached
  bool blockwise = false;
  Tensor attn, p, r;
  Tensor y, lse, runway_lse, runway_acc;
};

// Forward, q, k, v (B, H, T, D) -> y (B, H, T, D), through Backend::attention_forward:
//   S_h = q_h k_h^T * scale - slope_h (i - j);  P = softmax_j(S_r);  R from P (absorption
//   or two_hop);  A'_h = softmax_j(S_h - beta R);  y_h = A'_h v_h
// Saves q, k, v, attn = A' (B, H, T, T) and, rewired, P and R (B, T, T).
Tensor fused_forward(const AttentionArgs& a, const Tensor& q, const Tensor& k, const Tensor& v, Saved& s) {
  s.q = q.detach().contiguous();
  s.k = k.detach().contiguous();
  s.v = v.detach().contiguous();
  const DType dt = q.dtype();
  const Device dev = q.device();
  Tensor y = Tensor::empty(q.shape(), dt, dev);
  if (s.blockwise) {
    s.lse = Tensor::empty({a.batch, a.heads, a.seq}, dt, dev);
    s.runway_lse = Tensor::empty({a.batch, a.rewired ? a.seq : 0}, dt, dev);
    s.runway_acc = Tensor::empty({a.batch, a.rewired ? a.seq : 0}, DType::Float64, dev);
    s.y = y.detach();
    if (q.numel())
      backend_for(dev).attention_blockwise_forward(dt, a, s.q.raw_data(), s.k.raw_data(), s.v.raw_data(),
                                                   y.raw_data(), s.lse.raw_data(), s.runway_lse.raw_data(),
                                                   s.runway_acc.raw_data());
    return y;
  }
  s.attn = Tensor::empty({a.batch, a.heads, a.seq, a.seq}, dt, dev);
  if (a.rewired) {
    s.p = Tensor::empty({a.batch, a.seq, a.seq}, dt, dev);
    s.r = Tensor::empty({a.batch, a.seq, a.seq}, dt, dev);
  }
  if (q.numel() == 0) return y;
  backend_for(dev).attention_forward(dt, a, s.q.raw_data(), s.k.raw_data(), s.v.raw_data(), y.raw_data(),
                                     s.attn.raw_data(), a.rewired ? s.p.raw_data() : nullptr,
                                     a.rewired ? s.r.raw_data() : nullptr);
  return y;
}

// Backward, dy (B, H, T, D) -> dq, dk, dv, through Backend::attention_backward, from the
// saved q, k, v, A' and (rewired) P; R's value is not needed (linear or bilinear in P):
//   dv_h = A'_h^T dy_h;  dA'_h = dy_h v_h^T;  dS'_h = A'_h * (dA'_h - rowsum(dA'_h * A'_h))
//   rewired, not detached: dR = -beta sum_h dS'_h
//     absorption: dP[m,j] = sum_{i>m} dR[i,j] (j < m);  two_hop: dP = L(dR L(P)^T) + L(L(P)^T dR)
//     dS_r += P * (dP - rowsum(dP * P))
//   dq_h = dS_h k_h * scale;  dk_h = dS_h^T q_h * scale
// Blockwise, the same formulas on one query block at a time, A' recomputed from the saved
// lse (and P from runway_lse; absorption's state walked back from runway_acc),
// rowsum(dA'_h * A'_h) taken as rowsum(dy_h * y_h).
void backward_into(const AttentionArgs& a, const Saved& s, const Tensor& dy, void* dq, void* dk, void* dv) {
  if (!s.q.numel()) return;
  Backend& backend = backend_for(s.q.device());
  if (s.blockwise)
    backend.attention_blockwise_backward(s.q.dtype(), a, s.q.raw_data(), s.k.raw_data(), s.v.raw_data(),
                                         s.y.raw_data(), s.lse.raw_data(), s.runway_lse.raw_data(),
                                         s.runway_acc.raw_data(), dy.raw_data(), dq, dk, dv);
  else
    backend.attention_backward(s.q.dtype(), a, s.q.raw_data(), s.k.raw_data(), s.v.raw_data(), s.attn.raw_data(),
                               a.rewired ? s.p.raw_data() : nullptr, dy.raw_data(), dq, dk, dv);
}

Grads fused_backward(const AttentionArgs& a, const Saved& s, const Tensor& g) {
  Tensor dy = g.contiguous();
  Tensor dq = Tensor::empty(s.q.shape(), s.q.dtype(), s.q.device());
  Tensor dk = Tensor::empty(s.q.shape(), s.q.dtype(), s.q.device());
  Tensor dv = Tensor::empty(s.q.shape(), s.q.dtype(), s.q.device());
  backward_into(a, s, dy, dq.raw_data(), dk.raw_data(), dv.raw_data());
  return {dq, dk, dv};
}

// Blockwise unless the maps are wanted (a sink) or Auto finds the sequence short.
bool use_blockwise(const AttentionOptions& o, int64_t batch, int64_t seq, const AttentionSink* sink) {
  if (sink) return false;
  if (o.impl == AttentionImpl::Blockwise) return true;
  return o.impl == AttentionImpl::Auto && seq >= blockwise_auto_from(o.rewired, o.runway, batch);
}

}  // namespace

static const OpName kAttention = declare_op("attention");
static const OpName kRewiredAttention = declare_op("rewired_attention");
static const OpName kQkvAttention = declare_op("qkv_attention");
static const OpName kAttentionBlockwise = declare_op("attention_blockwise");
static const OpName kRewiredAttentionBlockwise = declare_op("rewired_attention_blockwise");
static const OpName kQkvAttentionBlockwise = declare_op("qkv_attention_blockwise");

namespace {

// The kernel arguments of `options` for H heads of width D over T positions: ALiBi
// slopes from alibi_slopes(H) and the runway fields checked.
AttentionArgs kernel_args(const char* op, int64_t B, int64_t H, int64_t T, int64_t D, const AttentionOptions& o) {
  if (D == 0) throw Error(fmt::format("{}: head width D is 0", op));
  AttentionArgs a;
  a.batch = B;
  a.heads = H;
  a.seq = T;
  a.head_dim = D;
  a.scale = 1.0 / std::sqrt(static_cast<double>(D));
  if (o.alibi) a.alibi_slopes = alibi_slopes(H);
  if (o.rewired) set_runway(a, o.runway, op);
  return a;
}

void check_split(const char* op, const Tensor& q, const Tensor& k, const Tensor& v) {
  for (const Tensor* t : {&q, &k, &v}) {
    if (!t->defined()) throw Error(fmt::format("{}: an input is undefined", op));
    if (!is_floating(t->dtype()))
      throw Error(fmt::format("{}: inputs must be float32 or float64, got {}", op, dtype_name(t->dtype())));
  }
  if (q.dim() != 4 || k.shape() != q.shape() || v.shape() != q.shape())
    throw Error(fmt::format("{}: q, k, v must all be (B, H, T, D); got q {}, k {}, v {}", op, q.shape_str(),
                            k.shape_str(), v.shape_str()));
  if (k.dtype() != q.dtype() || v.dtype() != q.dtype() || k.device() != q.device() || v.device() != q.device())
    throw Error(fmt::format("{}: q, k, v must share dtype and device", op));
  if (q.size(3) == 0) throw Error(fmt::format("{}: head width D is 0 in {}", op, q.shape_str()));
}

void check_rope(const char* op, const AttentionOptions& o, int64_t D) {
  if (o.rope_base < 0 || (o.rope_base > 0 && D % 2 != 0))
    throw Error(fmt::format("{}: rope needs base > 0 (0 = no rope) and an even head width; got base {} and D = {}",
                            op, o.rope_base, D));
  if (o.position_offset < 0)
    throw Error(fmt::format("{}: position offset must be >= 0, got {}", op, o.position_offset));
}

// Throws unless the runway options fit H heads (the kernels' checks, before any work).
void check_runway(const char* op, const AttentionOptions& o, int64_t heads) {
  if (!o.rewired) return;
  AttentionArgs probe;
  probe.heads = heads;
  set_runway(probe, o.runway, op);
}

// The sink's share of a fused forward: P, R, A' are the saved buffers; A is A' for a
// standard op, and one extra standard forward for a rewired one.
void fill_sink(AttentionSink* sink, const AttentionArgs& a, const Saved& s) {
  if (!sink) return;
  sink->p = s.p;
  sink->r = s.r;
  sink->a_rewired = s.attn;
  if (!a.rewired) {
    sink->a = s.attn;
    return;
  }
  AttentionArgs standard = a;
  standard.rewired = false;
  Saved plain;
  fused_forward(standard, s.q, s.k, s.v, plain);
  sink->a = plain.attn;
}

// Split fused path: q, k, v (B, H, T, D), RoPE (if any) already applied.
Tensor fused_split(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& o, AttentionSink* sink) {
  const char* op = o.rewired ? "rewired_attention" : "attention";
  const AttentionArgs a = kernel_args(op, q.size(0), q.size(1), q.size(2), q.size(3), o);
  Saved s;
  s.blockwise = use_blockwise(o, q.size(0), q.size(2), sink);
  Tensor y = fused_forward(a, q, k, v, s);
  fill_sink(sink, a, s);
  const OpName name = s.blockwise ? (o.rewired ? kRewiredAttentionBlockwise : kAttentionBlockwise)
                                  : (o.rewired ? kRewiredAttention : kAttention);
  return record(name, y, {q, k, v}, [a, s](const Tensor& g) { return fused_backward(a, s, g); });
}

// Packed fused path: qkv (B, T, 3C) -> (B, T, C), RoPE at positions 0.. inside the
// layout kernels.
Tensor fused_packed(const Tensor& qkv, int64_t heads, const AttentionOptions& o, AttentionSink* sink) {
  const int64_t B = qkv.size(0), T = qkv.size(1), C = qkv.size(2) / 3, H = heads, D = C / H;
  const double rope_base = o.rope_base;
  const DType dt = qkv.dtype();
  const Device dev = qkv.device();
  Backend& backend = backend_for(dev);
  const int64_t part = B * H * T * D;  // elements of one of q, k, v in (B, H, T, D)
  const size_t esize = dtype_size(dt);
  // (B, T, 3C) read as (3, B, H, T, D): one gather puts q, k, v head-major, rotating
  // q and k by RoPE on the way.
  Tensor packed = Tensor::empty({3, B, H, T, D}, dt, dev);
  {
    Tensor xc = qkv.detach().contiguous();
    if (part) backend.qkv_to_heads(dt, xc.raw_data(), packed.raw_data(), B, T, H, D, rope_base);
  }
  const AttentionArgs a = kernel_args("qkv_attention", B, H, T, D, o);
  Saved s;
  s.blockwise = use_blockwise(o, B, T, sink);
  Tensor y;
  {
    NoGradGuard no_grad;
    auto part_of = [&](const Tensor& t, int64_t i) { return reshape(slice(t, 0, i, i + 1), {B, H, T, D}); };
    y = fused_forward(a, part_of(packed, 0), part_of(packed, 1), part_of(packed, 2), s);
    fill_sink(sink, a, s);
    y = permute(y, {0, 2, 1, 3}).contiguous();  // (B, T, H, D): the heads side by side
    y = reshape(y, {B, T, C});
  }
  // Backward: dy (B, T, C) -> (B, H, T, D); the fused backward writes dq, dk, dv into
  // the three parts of one (3, B, H, T, D) buffer, which one scatter lays out as
  // (B, T, 3C), rotating dq and dk back.
  const OpName name = s.blockwise ? kQkvAttentionBlockwise : kQkvAttention;
  return record(name, y, {qkv}, [a, s, B, T, C, H, D, rope_base, part, esize](const Tensor& g) -> Grads {
    Backend& backend = backend_for(g.device());
    const DType dt = g.dtype();
    Tensor dy = permute(reshape(g.contiguous(), {B, T, H, D}), {0, 2, 1, 3}).contiguous();
    Tensor dpacked = Tensor::empty({3, B, H, T, D}, dt, g.device());
    char* d_bytes = static_cast<char*>(dpacked.raw_data());
    Tensor dqkv = Tensor::empty({B, T, 3 * C}, dt, g.device());
    if (part) {
      backward_into(a, s, dy, d_bytes, d_bytes + part * esize, d_bytes + 2 * part * esize);
      backend.heads_to_qkv(dt, dpacked.raw_data(), dqkv.raw_data(), B, T, H, D, rope_base);
    }
    return {dqkv};
  });
}

// ---- the composed path: primitives on the tape ----------------------------------------

// 1 where j < i (the strict runway's support), else 0: (T, T).
Tensor strictly_lower_ones(int64_t t, DType dt, Device dev) {
  std::vector<double> m(t * t, 0.0);
  for (int64_t i = 0; i < t; ++i)
    for (int64_t j = 0; j < i; ++j) m[i * t + j] = 1.0;
  return Tensor::from_vector(m, {t, t}, dt).to(dev);
}

// The ALiBi bias -slope_h * (i - j) as an (H, t_q, t_k) constant, for queries at the
// last t_q of t_k positions (i = t_k - t_q + row): the one place the composed path
// writes it (the kernels write the same term from the same slopes).
Tensor alibi_bias(int64_t heads, int64_t t_q, int64_t t_k, DType dt, Device dev) {
  const std::vector<double> slopes = alibi_slopes(heads);
  std::vector<double> bias(heads * t_q * t_k);
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t row = 0; row < t_q; ++row)
      for (int64_t j = 0; j < t_k; ++j)
        bias[(h * t_q + row) * t_k + j] = -slopes[h] * static_cast<double>(t_k - t_q + row - j);
  return Tensor::from_vector(bias, {heads, t_q, t_k}, dt).to(dev);
}

// R's row for one new query i = t (the cache's length before this call) from the runway
// state, which then advances by that row (the spec's "Incremental decoding").
//   absorption: R[i, j] = acc[j] (j < i), 0 at j = i; then acc[j] += P[i, j], acc[i] = 0.
//   two_hop:    R[i, j] = sum_k P[i, k] L(P)[k, j] over the stored strictly-lower rows k < i.
// p is (B, 1, 1, t + 1).
Tensor cached_runway_row(const Tensor& p, RunwaySummary summary, Tensor& state) {
  const int64_t B = p.size(0), t = p.size(-1) - 1;
  const DType dt = p.dtype();
  const Device dev = p.device();
  const Tensor zero = Tensor::zeros({B, 1, 1, 1}, dt, dev);
  Tensor r_row;
  if (summary == RunwaySummary::Absorption) {
    r_row = t == 0 ? zero : concat({state, zero}, -1);
    state = t == 0 ? zero : concat({add(state, slice(p, -1, 0, t)), zero}, -1);
  } else {
    r_row = t == 0 ? zero : concat({matmul(slice(p, -1, 0, t), state), zero}, -1);
    const Tensor new_row = t == 0 ? zero : concat({slice(p, -1, 0, t), zero}, -1);  // (B, 1, 1, t + 1)
    state = t == 0 ? zero : concat({concat({state, Tensor::zeros({B, 1, t, 1}, dt, dev)}, -1), new_row}, 2);
  }
  return r_row;
}

// q (B, H, t_q, D) against k, v (B, H, t_k, D), t_q <= t_k: the queries are the last t_q
// positions. Without a runway state, R comes from the full P (t_q = t_k).
Tensor composed(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& o, AttentionSink* sink,
                Tensor* runway_state) {
  const int64_t B = q.size(0), H = q.size(1), t_q = q.size(2), t_k = k.size(2);
  const DType dt = q.dtype();
  const Device dev = q.device();
  // S = Q K^T * scale - slope_h (i - j): (B, H, t_q, t_k), not yet masked.
  Tensor s = mul_scalar(matmul(q, transpose(k, -1, -2)), 1.0 / std::sqrt(static_cast<double>(q.size(3))));
  if (o.alibi) s = add(s, alibi_bias(H, t_q, t_k, dt, dev));
  if (!o.rewired) {
    const Tensor a = softmax(causal_mask(s), -1);
    if (sink) {
      sink->p = sink->r = Tensor();
      sink->a = sink->a_rewired = a.detach();
    }
    return matmul(a, v);
  }
  const RunwayOptions& ro = o.runway;
  const int64_t r = ro.runway_head;
  // P = the runway head's causal attention, (B, 1, t_q, t_k).
  const Tensor p = softmax(causal_mask(slice(s, 1, r, r + 1)), -1);
  Tensor rc;
  if (runway_state) {
    rc = cached_runway_row(p, ro.summary, *runway_state);
  } else {
    const Tensor strict = strictly_lower_ones(t_k, dt, dev);
    const Tensor lp = mul(p, strict);  // L(P)
    rc = ro.summary == RunwaySummary::Absorption ? mul(cumsum(lp, -2, /*exclusive=*/true), strict)  // sum_{j<k<i} P[k,j]
                                                 : matmul(lp, lp);  // sum_{j<k<i} P[i,k] P[k,j]
  }
  if (ro.detach) rc = rc.detach();
  const Tensor a_rewired = softmax(causal_mask(sub(s, mul_scalar(rc, ro.beta))), -1);
  if (sink) {
    NoGradGuard no_grad;
    sink->p = reshape(p, {B, t_q, t_k}).detach();
    sink->r = reshape(rc, {B, t_q, t_k}).detach();
    sink->a = softmax(causal_mask(s), -1).detach();
    sink->a_rewired = a_rewired.detach();
  }
  return matmul(a_rewired, v);
}

// (B, T, 3C) -> q, k, v (B, H, T, D) as views on the tape.
void split_packed(const Tensor& qkv, int64_t H, Tensor* q, Tensor* k, Tensor* v) {
  const int64_t B = qkv.size(0), T = qkv.size(1), C = qkv.size(2) / 3;
  auto parts = split(qkv, {C, C, C}, -1);
  auto heads = [&](const Tensor& t) { return permute(reshape(t, {B, T, H, C / H}), {0, 2, 1, 3}); };
  *q = heads(parts[0]);
  *k = heads(parts[1]);
  *v = heads(parts[2]);
}

// (B, H, T, D) -> (B, T, C)
Tensor merge_heads(const Tensor& y) {
  return reshape(permute(y, {0, 2, 1, 3}), {y.size(0), y.size(2), y.size(1) * y.size(3)});
}

}  // namespace

Tensor causal_attention(const AttentionInputs& in, const AttentionOptions& o, AttentionSink* sink) {
  const char* op = "causal_attention";
  const bool packed = in.qkv.defined();
  if (packed == (in.q.defined() || in.k.defined() || in.v.defined()))
    throw Error("causal_attention: give either q, k, v or the packed qkv, not both");
  Tensor q, k, v;
  if (packed) {
    const Tensor& qkv = in.qkv;
    const int64_t heads = in.heads;
    if (!is_floating(qkv.dtype())) throw Error("qkv_attention: qkv must be a float32 or float64 tensor");
    if (qkv.dim() != 3 || heads <= 0 || qkv.size(2) == 0 || qkv.size(2) % (3 * heads) != 0)
      throw Error(fmt::format("qkv_attention: qkv must be (B, T, 3C) with C a multiple of heads = {}, got {}", heads,
                              qkv.shape_str()));
    check_rope("qkv_attention", o, qkv.size(2) / 3 / heads);
    check_runway("qkv_attention", o, heads);
    if (!in.cache && !o.composed && o.position_offset == 0) return fused_packed(qkv, heads, o, sink);
    split_packed(qkv, heads, &q, &k, &v);
  } else {
    q = in.q;
    k = in.k;
    v = in.v;
    check_split(o.rewired ? "rewired_attention" : "attention", q, k, v);
    check_rope(op, o, q.size(3));
    check_runway("rewired_attention", o, q.size(1));
  }
  if (in.cache && o.position_offset != 0 && o.position_offset != in.cache->length())
    throw Error(fmt::format("{}: with a cache the queries start at the cache's length {}, not at position {}", op,
                            in.cache->length(), o.position_offset));
  const int64_t offset = in.cache ? in.cache->length() : o.position_offset;
  if (o.rope_base > 0) {
    q = rope(q, o.rope_base, offset);
    k = rope(k, o.rope_base, offset);
  }
  Tensor y;
  if (in.cache) {
    AttentionCache& cache = *in.cache;
    if (o.rewired && q.size(2) != 1)
      throw Error(fmt::format("{}: a rewired layer decodes one position per call with a cache, got {}", op, q.size(2)));
    cache.k = cache.k.defined() ? concat({cache.k, k}, 2) : k;
    cache.v = cache.v.defined() ? concat({cache.v, v}, 2) : v;
    y = composed(q, cache.k, cache.v, o, sink, o.rewired ? &cache.runway_state : nullptr);
  } else if (o.composed) {
    y = composed(q, k, v, o, sink, nullptr);
  } else {
    y = fused_split(q, k, v, o, sink);
  }
  return packed ? merge_heads(y) : y;
}

// ---- the plain loop-level CPU reference (the spec's formulas as loops) ------------------

namespace reference {

namespace {
// Causal softmax of row `s` over j <= i, zeros after: out[j] = exp(s[j] - max) / sum.
void causal_softmax_row(const double* s, double* out, int64_t i, int64_t n) {
  double m = -std::numeric_limits<double>::infinity(), total = 0;
  for (int64_t j = 0; j <= i; ++j) m = std::max(m, s[j]);
  for (int64_t j = 0; j <= i; ++j) total += std::exp(s[j] - m);
  for (int64_t j = 0; j < n; ++j) out[j] = j <= i ? std::exp(s[j] - m) / total : 0.0;
}
}  // namespace

// q, k, v, y: (B, H, N, D); attn: (B, H, N, N) = A' (A when standard); p, r: (B, N, N).
//   S_h[i,j] = (q_h[i] . k_h[j]) * scale - slope_h (i - j)           j <= i
//   P = softmax_j(S_r);  R[i,j] = sum_{j<m<i} P[m,j]  or  sum_{j<m<i} P[i,m] P[m,j]
//   A'_h = softmax_j(S_h - beta R);  y_h = A'_h v_h
void attention_forward(const AttentionArgs& a, const double* q, const double* k, const double* v, double* y,
                       double* attn, double* p, double* r) {
  const int64_t B = a.batch, H = a.heads, N = a.seq, D = a.head_dim;
  auto vec = [&](int64_t b, int64_t h, int64_t i) { return ((b * H + h) * N + i) * D; };
  auto mat = [&](int64_t b, int64_t h, int64_t i, int64_t j) { return ((b * H + h) * N + i) * N + j; };
  auto bmat = [&](int64_t b, int64_t i, int64_t j) { return (b * N + i) * N + j; };
  std::vector<double> s(B * H * N * N, 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < N; ++i)
        for (int64_t j = 0; j <= i; ++j) {
          double dot = 0;
          for (int64_t d = 0; d < D; ++d) dot += q[vec(b, h, i) + d] * k[vec(b, h, j) + d];
          const double slope = a.alibi_slopes.empty() ? 0.0 : a.alibi_slopes[h];
          s[mat(b, h, i, j)] = dot * a.scale - slope * static_cast<double>(i - j);
        }
  if (a.rewired) {
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t i = 0; i < N; ++i) causal_softmax_row(&s[mat(b, a.runway_head, i, 0)], &p[bmat(b, i, 0)], i, N);
      for (int64_t i = 0; i < N; ++i)
        for (int64_t j = 0; j < N; ++j) {
          double acc = 0;
          for (int64_t m = j + 1; m < i; ++m) acc += a.two_hop ? p[bmat(b, i, m)] * p[bmat(b, m, j)] : p[bmat(b, m, j)];
          r[bmat(b, i, j)] = acc;  // 0 for j >= i - 1: the empty sum
        }
      for (int64_t h = 0; h < H; ++h)
        for (int64_t i = 0; i < N; ++i)
          for (int64_t j = 0; j <= i; ++j) s[mat(b, h, i, j)] -= a.beta * r[bmat(b, i, j)];
    }
  }
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < N; ++i) {
        double* ai = &attn[mat(b, h, i, 0)];
        causal_softmax_row(&s[mat(b, h, i, 0)], ai, i, N);
        for (int64_t d = 0; d < D; ++d) {
          double acc = 0;
          for (int64_t j = 0; j <= i; ++j) acc += ai[j] * v[vec(b, h, j) + d];
          y[vec(b, h, i) + d] = acc;
        }
      }
}

// From dy and the saved attn (A'), p (P):
//   dV_h = A'_h^T dY_h;  dA'_h = dY_h V_h^T;  dS'_h = A'_h * (dA'_h - rowsum(dA'_h * A'_h))
//   rewired, not detached: dR = -beta sum_h dS'_h (read where i - j >= 2)
//     absorption: dP[m,j] = sum_{i>m} dR[i,j]  (j < m)
//     two_hop:    dP = L(dR L(P)^T) + L(L(P)^T dR)
//     dS_r += P * (dP - rowsum(dP * P))
//   dQ_h = dS_h K_h * scale;  dK_h = dS_h^T Q_h * scale
void attention_backward(const AttentionArgs& a, const double* q, const double* k, const double* v, const double* attn,
                        const double* p, const double* dy, double* dq, double* dk, double* dv) {
  const int64_t B = a.batch, H = a.heads, N = a.seq, D = a.head_dim;
  auto vec = [&](int64_t b, int64_t h, int64_t i) { return ((b * H + h) * N + i) * D; };
  auto mat = [&](int64_t b, int64_t h, int64_t i, int64_t j) { return ((b * H + h) * N + i) * N + j; };
  std::fill(dq, dq + B * H * N * D, 0.0);
  std::fill(dk, dk + B * H * N * D, 0.0);
  std::fill(dv, dv + B * H * N * D, 0.0);
  std::vector<double> ds(B * H * N * N, 0.0);  // dS' (then dS)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < N; ++i) {
        const double* ai = &attn[mat(b, h, i, 0)];
        std::vector<double> da(N, 0.0);
        double rowdot = 0;
        for (int64_t j = 0; j <= i; ++j) {
          for (int64_t d = 0; d < D; ++d) {
            dv[vec(b, h, j) + d] += ai[j] * dy[vec(b, h, i) + d];
            da[j] += dy[vec(b, h, i) + d] * v[vec(b, h, j) + d];
          }
          rowdot += ai[j] * da[j];
        }
        for (int64_t j = 0; j <= i; ++j) ds[mat(b, h, i, j)] = ai[j] * (da[j] - rowdot);
      }
  if (a.rewired && !a.detach && a.beta != 0.0) {
    for (int64_t b = 0; b < B; ++b) {
      std::vector<double> dr(N * N, 0.0), dp(N * N, 0.0);
      for (int64_t h = 0; h < H; ++h)
        for (int64_t i = 2; i < N; ++i)
          for (int64_t j = 0; j + 2 <= i; ++j) dr[i * N + j] -= a.beta * ds[mat(b, h, i, j)];
      const double* pb = p + b * N * N;
      for (int64_t i = 0; i < N; ++i)
        for (int64_t j = 0; j < i; ++j) {
          double acc = 0;
          if (a.two_hop) {
            for (int64_t m = 0; m < N; ++m) {
              if (m < j) acc += dr[i * N + m] * pb[j * N + m];  // (dR L(P)^T)[i, j]: L(P)[j, m] needs m < j
              if (m > i) acc += pb[m * N + i] * dr[m * N + j];  // (L(P)^T dR)[i, j]: L(P)[m, i] needs m > i
            }
          } else {
            for (int64_t m = i + 1; m < N; ++m) acc += dr[m * N + j];  // the rows below i
          }
          dp[i * N + j] = acc;
        }
      for (int64_t i = 0; i < N; ++i) {
        double rowdot = 0;
        for (int64_t j = 0; j <= i; ++j) rowdot += pb[i * N + j] * dp[i * N + j];
        for (int64_t j = 0; j <= i; ++j) ds[mat(b, a.runway_head, i, j)] += pb[i * N + j] * (dp[i * N + j] - rowdot);
      }
    }
  }
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < N; ++i)
        for (int64_t j = 0; j <= i; ++j)
          for (int64_t d = 0; d < D; ++d) {
            dq[vec(b, h, i) + d] += a.scale * ds[mat(b, h, i, j)] * k[vec(b, h, j) + d];
            dk[vec(b, h, j) + d] += a.scale * ds[mat(b, h, i, j)] * q[vec(b, h, i) + d];
          }
}

}  // namespace reference

// ---- Backend's default attention kernels, composed from its primitives -------------------
//
// What a backend gets when it implements only the primitives (gemm, causal_mask,
// softmax_rows, softmax_backward_rows, cumsum_rows, sum_rows, binary, unary,
// strided_copy, copy_within, fill, cast). The same stages as the fused kernels
// (docs/attention.md (b), (c)), one primitive call each, on (B*H) or B batched matrices;
// the scratch buffers come from the backend's allocator. Column scans (R's running sums
// down a column, and their adjoint) are row scans of the transpose.

namespace {

// A scratch buffer of n elements of dt on backend b, freed on scope exit.
struct Scratch {
  Backend& b;
  void* ptr;
  Scratch(Backend& backend, DType dt, int64_t n)
      : b(backend), ptr(backend.allocate(static_cast<size_t>(std::max<int64_t>(n, 1)) * dtype_size(dt))) {}
  ~Scratch() { b.deallocate(ptr); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
};

// Uploads host doubles as a buffer of dt (through a float64 copy and a cast).
void upload(Backend& b, DType dt, const std::vector<double>& host, void* dst) {
  Scratch f64(b, DType::Float64, static_cast<int64_t>(host.size()));
  b.copy_from_host(f64.ptr, host.data(), host.size() * sizeof(double));
  b.cast(DType::Float64, f64.ptr, dt, dst, static_cast<int64_t>(host.size()));
}

// C = alpha op(A) op(B) for `batch` contiguous row-major matrices: A (m x k, or k x m when
// trans_a), B (k x n, or n x k when trans_b), C (m x n); beta = 1 accumulates into C.
void batched_gemm(Backend& be, DType dt, int64_t batch, bool trans_a, bool trans_b, int64_t m, int64_t n,
                  int64_t k, double alpha, const void* a, const void* b, void* c, double beta = 0.0) {
  be.gemm(dt, contiguous_gemm_args(trans_a, trans_b, m, n, k, batch, alpha, beta), a, b, c);
}

// out (B, T, T) = x (B, T, T) transposed in each batch item.
void transpose_tt(Backend& be, DType dt, const void* x, void* out, int64_t B, int64_t T) {
  be.strided_copy(dt, StridedView{x, {B, T, T}, {T * T, 1, T}, 0}, out);
}

// out = a (op) b, with b broadcast: shapes and strides given in elements.
void broadcast(Backend& be, BinaryOp op, DType dt, const Shape& shape, const Shape& a_strides, const Shape& b_strides,
               const void* a, const void* b, void* out) {
  BroadcastPlan plan;
  plan.out_shape = shape;
  plan.a_strides = a_strides;
  plan.b_strides = b_strides;
  be.binary(op, dt, plan, a, b, out);
}

// The (T, T) strictly-lower 0/1 mask L: 1 where j < i.
void strictly_lower(Backend& be, DType dt, int64_t T, void* out) {
  std::vector<double> m(T * T, 0.0);
  for (int64_t i = 0; i < T; ++i)
    for (int64_t j = 0; j < i; ++j) m[i * T + j] = 1.0;
  upload(be, dt, m, out);
}

}  // namespace

static void attention_forward_default(Backend& be, DType dt, const AttentionArgs& a, const void* q, const void* k,
                               const void* v, void* y, void* attn, void* p, void* r) {
  const int64_t B = a.batch, H = a.heads, T = a.seq, D = a.head_dim, BH = B * H, TT = T * T;
  if (B * H * T * D == 0) return;
  const size_t es = dtype_size(dt);
  const double inf = std::numeric_limits<double>::infinity();
  // S_h = Q_h K_h^T * scale - slope_h (i - j)                      s: (B, H, T, T)
  Scratch s(be, dt, BH * TT);
  batched_gemm(be, dt, BH, false, true, T, T, D, a.scale, q, k, s.ptr);
  if (!a.alibi_slopes.empty()) {
    std::vector<double> bias(H * TT);
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < T; ++i)
        for (int64_t j = 0; j < T; ++j) bias[(h * T + i) * T + j] = -a.alibi_slopes[h] * static_cast<double>(i - j);
    Scratch bias_dev(be, dt, H * TT);
    upload(be, dt, bias, bias_dev.ptr);
    Scratch biased(be, dt, BH * TT);
    broadcast(be, BinaryOp::Add, dt, {B, H, T, T}, {H * TT, TT, T, 1}, {0, TT, T, 1}, s.ptr, bias_dev.ptr,
              biased.ptr);
    be.copy_within(s.ptr, biased.ptr, static_cast<size_t>(BH * TT) * es);
  }
  Scratch masked(be, dt, BH * TT);
  if (a.rewired) {
    // P = causal softmax of the runway head's logits S_r              p: (B, T, T)
    Scratch s_r(be, dt, B * TT);
    be.strided_copy(dt, StridedView{s.ptr, {B, T, T}, {H * TT, T, 1}, a.runway_head * TT}, s_r.ptr);
    be.causal_mask(dt, s_r.ptr, masked.ptr, B, T, T, -inf);
    be.softmax_rows(dt, masked.ptr, p, B * T, T, false);
    // L(P) = P * L
    Scratch lower(be, dt, TT), lp(be, dt, B * TT);
    strictly_lower(be, dt, T, lower.ptr);
    broadcast(be, BinaryOp::Mul, dt, {B, T, T}, {TT, T, 1}, {0, T, 1}, p, lower.ptr, lp.ptr);
    if (a.two_hop) {
      // R = L(P) L(P): R[i,j] = sum_{j<m<i} P[i,m] P[m,j]
      batched_gemm(be, dt, B, false, false, T, T, T, 1.0, lp.ptr, lp.ptr, r);
    } else {
      // R[i,j] = sum_{m<i} L(P)[m,j], masked to j < i: an exclusive scan down column j,
      // i.e. a row scan of L(P)^T, transposed back.
      Scratch lpt(be, dt, B * TT), scan(be, dt, B * TT), scan_t(be, dt, B * TT);
      transpose_tt(be, dt, lp.ptr, lpt.ptr, B, T);
      be.cumsum_rows(dt, lpt.ptr, scan.ptr, B * T, T, /*exclusive=*/true, /*reverse=*/false);
      transpose_tt(be, dt, scan.ptr, scan_t.ptr, B, T);
      broadcast(be, BinaryOp::Mul, dt, {B, T, T}, {TT, T, 1}, {0, T, 1}, scan_t.ptr, lower.ptr, r);
    }
    // S' = S - beta R, R shared by the heads of a batch item
    Scratch beta_r(be, dt, B * TT), rewired(be, dt, BH * TT);
    be.unary(UnaryOp::MulScalar, dt, r, beta_r.ptr, B * TT, a.beta);
    broadcast(be, BinaryOp::Sub, dt, {B, H, T, T}, {H * TT, TT, T, 1}, {TT, 0, T, 1}, s.ptr, beta_r.ptr,
              rewired.ptr);
    be.copy_within(s.ptr, rewired.ptr, static_cast<size_t>(BH * TT) * es);
  }
  // A' = causal softmax of S' (exact zeros above the diagonal); y = A' V
  be.causal_mask(dt, s.ptr, masked.ptr, BH, T, T, -inf);
  be.softmax_rows(dt, masked.ptr, attn, BH * T, T, false);
  batched_gemm(be, dt, BH, false, false, T, D, T, 1.0, attn, v, y);
}

static void attention_backward_default(Backend& be, DType dt, const AttentionArgs& a, const void* q, const void* k,
                                const void* v, const void* attn, const void* p, const void* dy, void* dq, void* dk,
                                void* dv) {
  const int64_t B = a.batch, H = a.heads, T = a.seq, D = a.head_dim, BH = B * H, TT = T * T;
  if (B * H * T * D == 0) return;
  const size_t es = dtype_size(dt);
  // dV = A'^T dY;  dA' = dY V^T;  dS' = A' * (dA' - rowsum(dA' * A'))      ds: (B, H, T, T)
  batched_gemm(be, dt, BH, true, false, T, D, T, 1.0, attn, dy, dv);
  Scratch da(be, dt, BH * TT), ds(be, dt, BH * TT);
  batched_gemm(be, dt, BH, false, true, T, T, D, 1.0, dy, v, da.ptr);
  be.softmax_backward_rows(dt, attn, da.ptr, ds.ptr, BH * T, T, false);
  if (a.rewired && !a.detach && a.beta != 0.0) {
    if (p == nullptr) throw Error("attention_backward: the rewired backward needs the saved p");
    // dR = -beta sum_h dS'_h: a row sum of dS' laid out (B, T, T, H)
    Scratch by_head(be, dt, BH * TT), dr(be, dt, B * TT);
    be.strided_copy(dt, StridedView{ds.ptr, {B, T, T, H}, {H * TT, T, 1, TT}, 0}, by_head.ptr);
    be.sum_rows(dt, by_head.ptr, dr.ptr, B * TT, H);
    be.unary(UnaryOp::MulScalar, dt, dr.ptr, dr.ptr, B * TT, -a.beta);
    Scratch lower(be, dt, TT), dp(be, dt, B * TT);
    strictly_lower(be, dt, T, lower.ptr);
    if (a.two_hop) {
      // dP = L(dR L(P)^T + L(P)^T dR)
      Scratch lp(be, dt, B * TT), sum(be, dt, B * TT);
      broadcast(be, BinaryOp::Mul, dt, {B, T, T}, {TT, T, 1}, {0, T, 1}, p, lower.ptr, lp.ptr);
      batched_gemm(be, dt, B, false, true, T, T, T, 1.0, dr.ptr, lp.ptr, sum.ptr);
      batched_gemm(be, dt, B, true, false, T, T, T, 1.0, lp.ptr, dr.ptr, sum.ptr, /*beta=*/1.0);
      broadcast(be, BinaryOp::Mul, dt, {B, T, T}, {TT, T, 1}, {0, T, 1}, sum.ptr, lower.ptr, dp.ptr);
    } else {
      // dP[m,j] = sum_{i>m} dR[i,j] for j < m: a reverse exclusive scan down column j.
      Scratch drt(be, dt, B * TT), scan(be, dt, B * TT), scan_t(be, dt, B * TT);
      transpose_tt(be, dt, dr.ptr, drt.ptr, B, T);
      be.cumsum_rows(dt, drt.ptr, scan.ptr, B * T, T, /*exclusive=*/true, /*reverse=*/true);
      transpose_tt(be, dt, scan.ptr, scan_t.ptr, B, T);
      broadcast(be, BinaryOp::Mul, dt, {B, T, T}, {TT, T, 1}, {0, T, 1}, scan_t.ptr, lower.ptr, dp.ptr);
    }
    // dS_r += P * (dP - rowsum(dP * P)), written back into head r of each batch item
    Scratch dsr(be, dt, B * TT), total(be, dt, B * TT);
    be.softmax_backward_rows(dt, p, dp.ptr, dsr.ptr, B * T, T, false);
    broadcast(be, BinaryOp::Add, dt, {B, T, T}, {H * TT, T, 1}, {TT, T, 1},
              static_cast<const char*>(ds.ptr) + a.runway_head * TT * es, dsr.ptr, total.ptr);
    for (int64_t b = 0; b < B; ++b)
      be.copy_within(static_cast<char*>(ds.ptr) + ((b * H + a.runway_head) * TT) * es,
                  static_cast<const char*>(total.ptr) + b * TT * es, static_cast<size_t>(TT) * es);
  }
  // dQ = dS K * scale;  dK = dS^T Q * scale
  batched_gemm(be, dt, BH, false, false, T, D, T, a.scale, ds.ptr, k, dq);
  batched_gemm(be, dt, BH, true, false, T, D, T, a.scale, ds.ptr, q, dk);
}

// ---- the kernels (engine/fused_kernel.h) -------------------------------------------------
// Their defaults are above; the CPU's implementations are in
// engine/ops/attention_cpu_fast.cpp, CUDA's in cuda/ops/attention.cu.

static const FusedKernel<DType, const AttentionArgs&, const void*, const void*, const void*, void*, void*, void*,
                         void*>
    attention_forward_kernel("attention_forward", &attention_forward_default, &cpu::cpu_attention_forward);
static const FusedKernel<DType, const AttentionArgs&, const void*, const void*, const void*, const void*,
                         const void*, const void*, void*, void*, void*>
    attention_backward_kernel("attention_backward", &attention_backward_default, &cpu::cpu_attention_backward);

void Backend::attention_forward(DType dt, const AttentionArgs& args, const void* q, const void* k, const void* v,
                                void* y, void* attn, void* p, void* r) {
  attention_forward_kernel(*this, dt, args, q, k, v, y, attn, p, r);
}

void Backend::attention_backward(DType dt, const AttentionArgs& args, const void* q, const void* k, const void* v,
                                 const void* attn, const void* p, const void* dy, void* dq, void* dk, void* dv) {
  attention_backward_kernel(*this, dt, args, q, k, v, attn, p, dy, dq, dk, dv);
}

// ---- gradcheck rows (runway gradcheck, tests/test_op_table.cpp) -----------------------

namespace {

using namespace op_samples;

TensorFn split_fn(const AttentionOptions& o) {
  return [o](const std::vector<Tensor>& x) { return causal_attention(AttentionInputs::split(x[0], x[1], x[2]), o); };
}
TensorFn packed_fn(int64_t heads, const AttentionOptions& o) {
  return [heads, o](const std::vector<Tensor>& x) { return causal_attention(AttentionInputs::packed(x[0], heads), o); };
}

// With runway_detach the backward is, by definition, the gradient of the function in
// which R is frozen at its current value R0. The finite differences must see that
// function: the returned fn evaluates to the frozen-R reference (built from primitives
// with R0 from the unperturbed inputs) while its tape gradient comes from the fused
// op alone: fused + (reference - fused).detach().
TensorFn detached_runway_check(const RunwayOptions& o, const std::vector<Tensor>& inputs, AttentionImpl impl) {
  const AttentionOptions fused_options = AttentionOptions::rewired_with(o).with_impl(impl);
  AttentionSink at_inputs;
  causal_attention(AttentionInputs::split(inputs[0], inputs[1], inputs[2]), fused_options, &at_inputs);
  const Tensor r0 = reshape(at_inputs.r, {inputs[0].size(0), 1, inputs[0].size(2), inputs[0].size(2)});
  return [o, r0, fused_options](const std::vector<Tensor>& x) {
    const double scale = 1.0 / std::sqrt(static_cast<double>(x[0].size(-1)));
    Tensor s = mul_scalar(matmul(x[0], transpose(x[1], -1, -2)), scale);
    Tensor reference = matmul(softmax(causal_mask(sub(s, mul_scalar(r0, o.beta))), -1), x[2]);
    Tensor fused = causal_attention(AttentionInputs::split(x[0], x[1], x[2]), fused_options);
    return add(fused, sub(reference, fused).detach());
  };
}

// The materialised and blockwise kernels share every sample; blockwise adds T past one
// query block (kBlockwiseQueryBlock = 64 rows) and not a multiple of it.
Samples standard_samples(AttentionImpl impl) {
  const AttentionOptions standard = AttentionOptions::standard().with_impl(impl);
  Samples out;
  uint64_t seed = 200;
  for (int64_t t : {1, 2, 3, 17})
    for (int64_t h : {1, 3})
      for (int64_t d : {1, 4})
        out.push_back({fmt::format("B={} H={} T={} D={}", t <= 3 ? 2 : 1, h, t, d), qkv(t <= 3 ? 2 : 1, h, t, d, seed += 3),
                       {}, split_fn(standard)});
  out.push_back({"ALiBi B=1 H=3 T=6 D=4", qkv(1, 3, 6, 4, seed += 3), {}, split_fn(standard.with_alibi())});
  // T = 41 also crosses the kernels' 32-row causal blocks.
  out.push_back(threaded("B=3 H=5 T=41 D=16", qkv(3, 5, 41, 16, seed += 3), split_fn(standard)));
  out.push_back(threaded("ALiBi B=3 H=5 T=41 D=16", qkv(3, 5, 41, 16, seed += 3), split_fn(standard.with_alibi())));
  if (impl == AttentionImpl::Blockwise) {
    out.push_back({"ALiBi B=1 H=2 T=70 D=2", qkv(1, 2, 70, 2, 250), {}, split_fn(standard.with_alibi())});
    out.push_back(threaded("B=2 H=3 T=150 D=8", qkv(2, 3, 150, 8, 251), split_fn(standard)));
  }
  return out;
}

// The sampling grid of the issue: T in {1,2,3,17}, H in {1,3}, D in {1,4}; for the rewired
// op every (summary, beta, detach) at each shape, with the runway head moving off 0.
Samples rewired_samples(AttentionImpl impl) {
  Samples out;
  uint64_t seed = 400;
  auto sample_fn = [impl](const RunwayOptions& o, const std::vector<Tensor>& inputs) {
    return o.detach ? detached_runway_check(o, inputs, impl) : split_fn(AttentionOptions::rewired_with(o).with_impl(impl));
  };
  for (int64_t t : {1, 2, 3, 17})
    for (int64_t h : {1, 3})
      for (int64_t d : {1, 4}) {
        int variant = 0;
        for (RunwaySummary summary : {RunwaySummary::Absorption, RunwaySummary::TwoHop})
          for (double beta : {0.0, 0.5, -0.7, 3.0})
            for (bool detach : {false, true}) {
              RunwayOptions o;
              o.summary = summary;
              o.beta = beta;
              o.detach = detach;
              o.runway_head = (variant++) % h;
              const int64_t b = t <= 3 ? 2 : 1;
              auto inputs = qkv(b, h, t, d, seed += 3);
              TensorFn fn = sample_fn(o, inputs);
              out.push_back({fmt::format("T={} H={} D={} {} b={} r={}{}", t, h, d,
                                         summary == RunwaySummary::Absorption ? "abs" : "2hop", beta, o.runway_head,
                                         detach ? " det" : ""),
                             inputs, {}, fn});
            }
      }
  for (RunwaySummary summary : {RunwaySummary::Absorption, RunwaySummary::TwoHop}) {
    RunwayOptions o;
    o.summary = summary;
    o.runway_head = 1;
    out.push_back({fmt::format("ALiBi T=6 H=3 D=4 {}", runway_summary_name(summary)), qkv(1, 3, 6, 4, seed += 3), {},
                   split_fn(AttentionOptions::rewired_with(o).with_alibi().with_impl(impl))});
  }
  // Threaded sizes: B = 3 batch items (the runway head's stage) and 15 heads.
  for (RunwaySummary summary : {RunwaySummary::Absorption, RunwaySummary::TwoHop}) {
    RunwayOptions o;
    o.summary = summary;
    o.beta = summary == RunwaySummary::TwoHop ? -0.7 : 1.3;
    o.runway_head = summary == RunwaySummary::TwoHop ? 3 : 1;
    out.push_back(threaded(fmt::format("B=3 H=5 T=41 D=16 {} b={} ALiBi", runway_summary_name(summary), o.beta),
                           qkv(3, 5, 41, 16, seed += 3),
                           split_fn(AttentionOptions::rewired_with(o).with_alibi().with_impl(impl))));
  }
  {
    RunwayOptions o;
    o.runway_head = 2;
    o.detach = true;
    auto inputs = qkv(3, 5, 41, 16, seed += 3);
    TensorFn fn = detached_runway_check(o, inputs, impl);
    out.push_back(threaded("B=3 H=5 T=41 D=16 absorption det", std::move(inputs), std::move(fn)));
  }
  if (impl == AttentionImpl::Blockwise) {
    // Past one query block: the runway state carried from block to block (forward) and
    // back (backward), T not a multiple of 64; B = 1 runs heads in parallel, B = 4 items.
    for (RunwaySummary summary : {RunwaySummary::Absorption, RunwaySummary::TwoHop}) {
      RunwayOptions o;
      o.summary = summary;
      o.beta = 1.7;
      o.runway_head = 1;
      out.push_back({fmt::format("ALiBi B=1 H=2 T=70 D=2 {}", runway_summary_name(summary)), qkv(1, 2, 70, 2, 450), {},
                     split_fn(AttentionOptions::rewired_with(o).with_alibi().with_impl(impl))});
      o.beta = -0.9;
      o.runway_head = 2;
      out.push_back(threaded(fmt::format("B=1 H=3 T=150 D=8 {} b=-0.9 r=2", runway_summary_name(summary)),
                             qkv(1, 3, 150, 8, 451), split_fn(AttentionOptions::rewired_with(o).with_impl(impl))));
      o.runway_head = 1;
      out.push_back(threaded(fmt::format("B=4 H=2 T=129 D=4 {} b=-0.9 r=1 ALiBi", runway_summary_name(summary)),
                             qkv(4, 2, 129, 4, 452), split_fn(AttentionOptions::rewired_with(o).with_alibi().with_impl(impl))));
    }
    RunwayOptions o;
    o.detach = true;
    o.beta = 2.0;
    auto inputs = qkv(1, 2, 130, 4, 453);
    TensorFn fn = detached_runway_check(o, inputs, impl);
    out.push_back(threaded("B=1 H=2 T=130 D=4 absorption det", std::move(inputs), std::move(fn)));
  }
  return out;
}

Samples qkv_samples(AttentionImpl impl) {
  const AttentionOptions standard = AttentionOptions::standard().with_impl(impl);
  RunwayOptions two_hop;
  two_hop.summary = RunwaySummary::TwoHop;
  two_hop.runway_head = 1;
  const AttentionOptions absorption = AttentionOptions::rewired_with(RunwayOptions{}).with_impl(impl);
  const AttentionOptions two_hop_options = AttentionOptions::rewired_with(two_hop).with_impl(impl);
  Samples out{
      {"standard rope B=2 T=5 H=2 D=2", {rnd({2, 5, 12}, 91, -1.5, 1.5)}, {}, packed_fn(2, standard.with_rope(10000.0))},
      {"standard no rope, alibi B=1 T=4 H=3 D=2", {rnd({1, 4, 18}, 92, -1.5, 1.5)}, {}, packed_fn(3, standard.with_alibi())},
      {"rewired absorption rope B=2 T=6 H=2 D=4", {rnd({2, 6, 24}, 93, -1.5, 1.5)}, {},
       packed_fn(2, absorption.with_rope(10000.0))},
      {"rewired two_hop head 1 rope B=1 T=6 H=2 D=2", {rnd({1, 6, 12}, 94, -1.5, 1.5)}, {},
       packed_fn(2, two_hop_options.with_rope(10.0))},
      // B T 3C = 3 * 41 * 144 > 2^14: the fused gather + rope runs threaded.
      threaded("standard rope B=3 T=41 H=3 D=16", {rnd({3, 41, 144}, 95, -1.5, 1.5)}, packed_fn(3, standard.with_rope(10000.0))),
      threaded("rewired two_hop rope B=3 T=41 H=3 D=16", {rnd({3, 41, 144}, 96, -1.5, 1.5)},
               packed_fn(3, two_hop_options.with_rope(10000.0))),
  };
  if (impl == AttentionImpl::Blockwise)
    out.push_back(threaded("rewired absorption rope B=2 T=100 H=2 D=8", {rnd({2, 100, 48}, 97, -1.5, 1.5)},
                           packed_fn(2, absorption.with_rope(10000.0))));
  return out;
}

}  // namespace

std::vector<OpEntry> attention_op_entries() {
  std::vector<OpEntry> t;
  const AttentionOptions standard = AttentionOptions::standard();
  for (AttentionImpl impl : {AttentionImpl::Materialized, AttentionImpl::Blockwise}) {
    const bool blockwise = impl == AttentionImpl::Blockwise;
    const std::string suffix = blockwise ? "_blockwise" : "";
    const std::string kernels = blockwise ? " (blockwise kernels: no T x T map saved)" : "";
    t.push_back(op_entry("attention" + suffix, "fused causal attention (B,H,T,D), handwritten backward" + kernels,
                         split_fn(standard.with_impl(impl)), [impl] { return standard_samples(impl); }));
    t.push_back(op_entry("rewired_attention" + suffix,
                         "fused runway-rewired attention, both summaries, any beta, detach" + kernels,
                         split_fn(AttentionOptions::rewired_with(RunwayOptions{}).with_impl(impl)),
                         [impl] { return rewired_samples(impl); }));
    t.push_back(op_entry("qkv_attention" + suffix,
                         "attention from the packed (B,T,3C) projection: rope, standard/rewired, merged heads" + kernels,
                         packed_fn(2, standard.with_rope(10000.0).with_impl(impl)), [impl] { return qkv_samples(impl); }));
  }
  const AttentionOptions composed = standard.composed_from_primitives();
  t.push_back(op_entry("attention_composite", "attention from primitives (the fused op's twin)",
                       split_fn(composed.with_alibi()), [composed] {
    return Samples{{"ALiBi B=2 H=2 T=5 D=3", qkv(2, 2, 5, 3, 600), {}, {}},
                   threaded("B=3 H=5 T=41 D=16 no ALiBi", qkv(3, 5, 41, 16, 601), split_fn(composed))};
  }, true));
  t.push_back(op_entry("rewired_attention_composite", "rewired attention from primitives (the fused op's twin)",
                       split_fn(AttentionOptions::rewired_with(RunwayOptions{}).composed_from_primitives()), [] {
    Samples out;
    for (RunwaySummary summary : {RunwaySummary::Absorption, RunwaySummary::TwoHop}) {
      RunwayOptions o;
      o.summary = summary;
      o.beta = 1.3;
      o.runway_head = 1;
      const TensorFn fn = split_fn(AttentionOptions::rewired_with(o).composed_from_primitives());
      out.push_back({fmt::format("B=2 H=2 T=6 D=3 {}", runway_summary_name(summary)), qkv(2, 2, 6, 3, 610), {}, fn});
      out.push_back(threaded(fmt::format("B=3 H=5 T=41 D=16 {}", runway_summary_name(summary)), qkv(3, 5, 41, 16, 611), fn));
    }
    return out;
  }, true));
  t.push_back(op_entry("learned_positions", "learned absolute positions: x + table[:T] (composite of slice, add)",
                       [](const std::vector<Tensor>& x) { return add(x[0], slice(x[1], 0, 0, x[0].size(-2))); }, [] {
    return Samples{{"x (2,3,4), table (5,4)", {rnd({2, 3, 4}, 630), rnd({5, 4}, 631)}, {}, {}},
                   threaded("x (3,129,173), table (131,173)", {rnd({3, 129, 173}, 632), rnd({131, 173}, 633)})};
  }, true));
  return t;
}

}  // namespace runway
