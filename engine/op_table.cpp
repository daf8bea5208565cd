// The gradcheck table: each op family's rows, defined beside the family's ops in
// engine/ops/<family>.cpp (the shared sample helpers are in engine/ops/op_samples.h).
#include "engine/op_table.h"

#include "engine/ops/op_samples.h"

namespace runway {

namespace {

std::vector<OpEntry> build_table() {
  std::vector<OpEntry> t;
  for (auto family : {elementwise_op_entries, linear_op_entries, shape_op_entries, reduce_op_entries,
                      softmax_op_entries, layernorm_op_entries, rmsnorm_op_entries, embedding_op_entries,
                      attention_op_entries, rope_op_entries})
    for (OpEntry& e : family()) t.push_back(std::move(e));
  return t;
}

}  // namespace

const std::vector<OpEntry>& op_table() {
  static const std::vector<OpEntry> table = build_table();
  return table;
}

const TensorFn& sample_fn(const OpEntry& entry, const OpSample& sample) {
  return sample.fn ? sample.fn : entry.fn;
}

GradcheckOptions sample_options(const OpEntry& entry, const OpSample& sample) {
  GradcheckOptions o;
  o.atol = entry.atol;
  o.rtol = entry.rtol;
  o.fast = entry.fast || sample.fast;
  return o;
}

const OpEntry* find_op(const std::string& name) {
  for (const auto& e : op_table())
    if (e.name == name) return &e;
  return nullptr;
}

}  // namespace runway
