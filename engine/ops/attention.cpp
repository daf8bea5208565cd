// Fused attention ops (forward and backward through the backend's attention kernels),
// their composite twins built from primitive ops, and the positional encodings.
// The math, with the same names, is in engine/attention.h and docs/attention.md.
#include "engine/attention.h"

#include <fmt/format.h>

#include <cmath>

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/ops.h"

namespace runway {

RunwaySummary parse_runway_summary(const std::string& name) {
  if (name == "absorption") return RunwaySummary::Absorption;
  if (name == "two_hop") return RunwaySummary::TwoHop;
  throw Error(fmt::format("unknown runway summary '{}': allowed values are absorption, two_hop", name));
}

const char* runway_summary_name(RunwaySummary s) {
  return s == RunwaySummary::Absorption ? "absorption" : "two_hop";
}

std::vector<double> alibi_slopes(int64_t heads) {
  std::vector<double> s(heads);
  for (int64_t h = 0; h < heads; ++h)
    s[h] = std::pow(2.0, -8.0 * static_cast<double>(h + 1) / static_cast<double>(heads));
  return s;
}

namespace {

AttentionArgs make_args(const char* op, const Tensor& q, const Tensor& k, const Tensor& v,
                        const std::vector<double>& alibi) {
  for (const Tensor* t : {&q, &k, &v}) {
    if (!t->defined()) throw Error(fmt::format("{}: an input is undefined", op));
    if (!is_floating(t->dtype()))
      throw Error(fmt::format("{}: inputs must be float32 or float64, got {}", op, dtype_name(t->dtype())));
  }
  if (q.dim() != 4 || k.shape() != q.shape() || v.shape() != q.shape())
    throw Error(fmt::format("{}: q, k, v must all be (B, H, T, D); got q {}, k {}, v {}", op,
                            q.shape_str(), k.shape_str(), v.shape_str()));
  if (k.dtype() != q.dtype() || v.dtype() != q.dtype() || k.device() != q.device() || v.device() != q.device())
    throw Error(fmt::format("{}: q, k, v must share dtype and device", op));
  AttentionArgs a;
  a.batch = q.size(0);
  a.heads = q.size(1);
  a.seq = q.size(2);
  a.head_dim = q.size(3);
  if (a.head_dim == 0) throw Error(fmt::format("{}: head width D is 0 in {}", op, q.shape_str()));
  a.scale = 1.0 / std::sqrt(static_cast<double>(a.head_dim));
  if (!alibi.empty() && static_cast<int64_t>(alibi.size()) != a.heads)
    throw Error(fmt::format("{}: {} ALiBi slopes for {} heads", op, alibi.size(), a.heads));
  a.alibi_slopes = alibi;
  return a;
}

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

// Runs the backend's fused forward; returns y and fills the saved buffers.
struct Saved {
  Tensor q, k, v, attn, p, r;  // contiguous, detached
};

Tensor fused_forward(const AttentionArgs& a, const Tensor& q, const Tensor& k, const Tensor& v, Saved& s) {
  s.q = q.detach().contiguous();
  s.k = k.detach().contiguous();
  s.v = v.detach().contiguous();
  const DType dt = q.dtype();
  const Device dev = q.device();
  Tensor y = Tensor::empty(q.shape(), dt, dev);
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

// dq, dk, dv from dy, using the saved q, k, v, A' (and P for the runway head).
Grads fused_backward(const AttentionArgs& a, const Saved& s, const Tensor& g) {
  Tensor dy = g.contiguous();
  Tensor dq = Tensor::empty(s.q.shape(), s.q.dtype(), s.q.device());
  Tensor dk = Tensor::empty(s.q.shape(), s.q.dtype(), s.q.device());
  Tensor dv = Tensor::empty(s.q.shape(), s.q.dtype(), s.q.device());
  if (s.q.numel())
    backend_for(s.q.device()).attention_backward(
        s.q.dtype(), a, s.q.raw_data(), s.k.raw_data(), s.v.raw_data(), s.attn.raw_data(),
        a.rewired ? s.p.raw_data() : nullptr, a.rewired ? s.r.raw_data() : nullptr, dy.raw_data(),
        dq.raw_data(), dk.raw_data(), dv.raw_data());
  return {dq, dk, dv};
}

}  // namespace

static const OpName kAttention = declare_op("attention");
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const std::vector<double>& alibi) {
  const AttentionArgs a = make_args("attention", q, k, v, alibi);
  Saved s;
  Tensor y = fused_forward(a, q, k, v, s);
  return record(kAttention, y, {q, k, v}, [a, s](const Tensor& g) { return fused_backward(a, s, g); });
}

static const OpName kRewiredAttention = declare_op("rewired_attention");
Tensor rewired_attention(const Tensor& q, const Tensor& k, const Tensor& v, const RunwayOptions& options,
                         RewiredIntermediates* inspect, const std::vector<double>& alibi) {
  AttentionArgs a = make_args("rewired_attention", q, k, v, alibi);
  set_runway(a, options, "rewired_attention");
  Saved s;
  Tensor y = fused_forward(a, q, k, v, s);
  if (inspect) {
    inspect->p = s.p;
    inspect->r = s.r;
    inspect->a_rewired = s.attn;
    // The un-rewired attention is not part of the computation; one standard forward gives it.
    AttentionArgs standard = a;
    standard.rewired = false;
    Saved plain;
    fused_forward(standard, s.q, s.k, s.v, plain);
    inspect->a = plain.attn;
  }
  return record(kRewiredAttention, y, {q, k, v}, [a, s](const Tensor& g) { return fused_backward(a, s, g); });
}

// ---- attention straight from the packed qkv projection ---------------------------------

static const OpName kQkvAttention = declare_op("qkv_attention");
Tensor qkv_attention(const Tensor& qkv, int64_t heads, double rope_base, bool rewired,
                     const RunwayOptions& options, const std::vector<double>& alibi) {
  if (!qkv.defined() || !is_floating(qkv.dtype()))
    throw Error("qkv_attention: qkv must be a float32 or float64 tensor");
  if (qkv.dim() != 3 || heads <= 0 || qkv.size(2) == 0 || qkv.size(2) % (3 * heads) != 0)
    throw Error(fmt::format("qkv_attention: qkv must be (B, T, 3C) with C a multiple of heads = {}, got {}",
                            heads, qkv.shape_str()));
  const int64_t B = qkv.size(0), T = qkv.size(1), C = qkv.size(2) / 3, H = heads, D = C / H;
  if (rope_base < 0 || (rope_base > 0 && D % 2 != 0))
    throw Error(fmt::format("qkv_attention: rope needs base > 0 (0 = no rope) and an even head width; "
                            "got base {} and D = {}", rope_base, D));
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
  AttentionArgs a;
  a.batch = B;
  a.heads = H;
  a.seq = T;
  a.head_dim = D;
  a.scale = 1.0 / std::sqrt(static_cast<double>(D));
  if (!alibi.empty() && static_cast<int64_t>(alibi.size()) != H)
    throw Error(fmt::format("qkv_attention: {} ALiBi slopes for {} heads", alibi.size(), H));
  a.alibi_slopes = alibi;
  if (rewired) set_runway(a, options, "qkv_attention");
  Saved s;
  Tensor y;
  {
    NoGradGuard no_grad;
    auto part_of = [&](const Tensor& t, int64_t i) { return reshape(slice(t, 0, i, i + 1), {B, H, T, D}); };
    y = fused_forward(a, part_of(packed, 0), part_of(packed, 1), part_of(packed, 2), s);
    y = permute(y, {0, 2, 1, 3}).contiguous();  // (B, T, H, D): the heads side by side
    y = reshape(y, {B, T, C});
  }
  // Backward: dy (B, T, C) -> (B, H, T, D); the fused backward writes dq, dk, dv into
  // the three parts of one (3, B, H, T, D) buffer, which one scatter lays out as
  // (B, T, 3C), rotating dq and dk back.
  return record(kQkvAttention, y, {qkv}, [a, s, B, T, C, H, D, rope_base, part, esize](const Tensor& g) -> Grads {
    Backend& backend = backend_for(g.device());
    const DType dt = g.dtype();
    Tensor dy = permute(reshape(g.contiguous(), {B, T, H, D}), {0, 2, 1, 3}).contiguous();
    Tensor dpacked = Tensor::empty({3, B, H, T, D}, dt, g.device());
    char* d_bytes = static_cast<char*>(dpacked.raw_data());
    Tensor dqkv = Tensor::empty({B, T, 3 * C}, dt, g.device());
    if (part) {
      backend.attention_backward(dt, a, s.q.raw_data(), s.k.raw_data(), s.v.raw_data(), s.attn.raw_data(),
                                 a.rewired ? s.p.raw_data() : nullptr, a.rewired ? s.r.raw_data() : nullptr,
                                 dy.raw_data(), d_bytes, d_bytes + part * esize, d_bytes + 2 * part * esize);
      backend.heads_to_qkv(dt, dpacked.raw_data(), dqkv.raw_data(), B, T, H, D, rope_base);
    }
    return {dqkv};
  });
}

// ---- composite twins ----------------------------------------------------------------

namespace {

// S = Q K^T * scale - slope_h (i - j): (B, H, T, T), not yet masked.
Tensor composite_logits(const Tensor& q, const Tensor& k, const AttentionArgs& a) {
  Tensor s = mul_scalar(matmul(q, transpose(k, -1, -2)), a.scale);
  if (a.alibi_slopes.empty()) return s;
  std::vector<double> bias(a.heads * a.seq * a.seq);
  for (int64_t h = 0; h < a.heads; ++h)
    for (int64_t i = 0; i < a.seq; ++i)
      for (int64_t j = 0; j < a.seq; ++j)
        bias[(h * a.seq + i) * a.seq + j] = -a.alibi_slopes[h] * static_cast<double>(i - j);
  return add(s, Tensor::from_vector(bias, {a.heads, a.seq, a.seq}, q.dtype()).to(q.device()));
}

// 1 where j < i (the strict runway's support), else 0: (T, T).
Tensor strictly_lower_ones(int64_t t, DType dt, Device dev) {
  std::vector<double> m(t * t, 0.0);
  for (int64_t i = 0; i < t; ++i)
    for (int64_t j = 0; j < i; ++j) m[i * t + j] = 1.0;
  return Tensor::from_vector(m, {t, t}, dt).to(dev);
}

}  // namespace

Tensor attention_composite(const Tensor& q, const Tensor& k, const Tensor& v, const std::vector<double>& alibi) {
  const AttentionArgs a = make_args("attention_composite", q, k, v, alibi);
  return matmul(softmax(causal_mask(composite_logits(q, k, a)), -1), v);
}

Tensor rewired_attention_composite(const Tensor& q, const Tensor& k, const Tensor& v,
                                   const RunwayOptions& options, RewiredIntermediates* inspect,
                                   const std::vector<double>& alibi) {
  AttentionArgs a = make_args("rewired_attention_composite", q, k, v, alibi);
  set_runway(a, options, "rewired_attention_composite");
  const Tensor s = composite_logits(q, k, a);
  const int64_t r = options.runway_head;
  // P = the runway head's causal attention, (B, 1, T, T).
  const Tensor p = softmax(causal_mask(slice(s, 1, r, r + 1)), -1);
  const Tensor strict = strictly_lower_ones(a.seq, q.dtype(), q.device());
  const Tensor lp = mul(p, strict);  // L(P)
  Tensor rc = options.summary == RunwaySummary::Absorption
                  ? mul(cumsum(lp, -2, /*exclusive=*/true), strict)  // sum over j<k<i of P[k,j]
                  : matmul(lp, lp);                                   // sum over j<k<i of P[i,k] P[k,j]
  if (options.detach) rc = rc.detach();
  const Tensor a_rewired = softmax(causal_mask(sub(s, mul_scalar(rc, options.beta))), -1);
  if (inspect) {
    NoGradGuard no_grad;
    inspect->p = reshape(p, {a.batch, a.seq, a.seq}).detach();
    inspect->r = reshape(rc, {a.batch, a.seq, a.seq}).detach();
    inspect->a = softmax(causal_mask(s), -1).detach();
    inspect->a_rewired = a_rewired.detach();
  }
  return matmul(a_rewired, v);
}

// ---- RoPE ---------------------------------------------------------------------------------

namespace {
Tensor rope_raw(const Tensor& x, double base, int64_t offset, bool inverse) {
  Tensor xc = x.contiguous();
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  const int64_t seq = x.size(-2), dim = x.size(-1);
  if (x.numel())
    backend_for(x.device()).rope(x.dtype(), xc.raw_data(), y.raw_data(), x.numel() / (seq * dim), seq,
                                 dim, base, offset, inverse);
  return y;
}
}  // namespace

static const OpName kRope = declare_op("rope");
Tensor rope(const Tensor& x, double base, int64_t position_offset) {
  if (!x.defined() || !is_floating(x.dtype()))
    throw Error("rope: input must be a float32 or float64 tensor");
  if (x.dim() < 2 || x.size(-1) % 2 != 0)
    throw Error(fmt::format("rope: input must be (..., T, D) with D even, got {}", x.shape_str()));
  if (!(base > 0)) throw Error(fmt::format("rope: base must be > 0, got {}", base));
  if (position_offset < 0) throw Error(fmt::format("rope: position offset must be >= 0, got {}", position_offset));
  Tensor y = rope_raw(x, base, position_offset, false);
  // A rotation's transpose is the inverse rotation.
  return record(kRope, y, {x}, [base, position_offset](const Tensor& g) -> Grads {
    return {rope_raw(g, base, position_offset, true)};
  });
}

}  // namespace runway
