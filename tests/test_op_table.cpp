// The op table drives the gradient checks: every declared op has an entry, every
// entry's samples pass in float64, and per-op tolerances come with a reason.
#include <catch2/catch.hpp>

#include <algorithm>

#include "engine/autograd.h"
#include "engine/op_table.h"
#include "engine/ops.h"

using namespace runway;

TEST_CASE("every declared op has a row in the gradcheck table") {
  // Touch one op so ops.cpp's declarations are linked and registered.
  (void)add(Tensor::zeros({1}), Tensor::zeros({1}));
  const auto& declared = declared_ops();
  REQUIRE(declared.size() >= 30);
  for (const auto& name : declared) {
    INFO("op '" << name << "' was declared with declare_op but has no entry in engine/op_table.cpp");
    const OpEntry* e = find_op(name);
    CHECK(e != nullptr);
    if (e) CHECK_FALSE(e->composite);
  }
}

TEST_CASE("table entries are well-formed") {
  std::vector<std::string> names;
  for (const auto& e : op_table()) {
    INFO(e.name);
    CHECK(std::find(names.begin(), names.end(), e.name) == names.end());
    names.push_back(e.name);
    CHECK_FALSE(e.summary.empty());
    CHECK_FALSE(e.samples().empty());
    const bool default_tolerance = e.atol == GradcheckOptions{}.atol && e.rtol == GradcheckOptions{}.rtol;
    if (!default_tolerance) CHECK_FALSE(e.tolerance_reason.empty());
  }
}

TEST_CASE("every op with a threaded CPU kernel has a sample at a size that takes it") {
  // The threaded paths start at 2^14 elements (row kernels) and go up to 2^16 (binary
  // ops, strided copies) or a gemm work m n k of 2^18; the inputs' total size is the
  // proxy checked here (engine/op_table.cpp's threaded() sizes each sample for its
  // kernel's own threshold). The ops listed here run plain loops at any size.
  const std::vector<std::string> unthreaded{"embedding", "causal_mask"};
  for (const auto& e : op_table()) {
    if (std::find(unthreaded.begin(), unthreaded.end(), e.name) != unthreaded.end()) continue;
    INFO(e.name << " has no sample above the threading threshold (see threaded() in engine/op_table.cpp)");
    bool found = false;
    for (const auto& s : e.samples()) {
      int64_t total = 0;
      for (const auto& x : s.inputs) total += x.numel();
      found = found || (s.fast && total > (1 << 14));
    }
    CHECK(found);
  }
}

TEST_CASE("every op's backward matches central finite differences (float64)") {
  for (const auto& e : op_table()) {
    for (const auto& s : e.samples()) {
      INFO(e.name << " / " << s.label);
      const GradcheckResult r = gradcheck(sample_fn(e, s), s.inputs, sample_options(e, s), s.wrt);
      for (const auto& f : r.failures) INFO(f);
      for (const auto& in : r.inputs) {
        INFO("input " << in.input_index << ": max abs err " << in.max_abs_err << ", max rel err " << in.max_rel_err);
        CHECK(in.passed);
      }
      CHECK(r.failures.empty());
      CHECK(r.passed);
    }
  }
}
