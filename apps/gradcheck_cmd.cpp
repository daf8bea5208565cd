// `runway gradcheck`: runs the op table through the float64 finite-difference check
// and prints one row per (op, sample, input).
#include <fmt/format.h>

#include <string>
#include <vector>

#include "apps/commands.h"
#include "apps/parse.h"
#include "engine/gradcheck.h"
#include "engine/op_table.h"

namespace runway::apps {

namespace {

struct GradcheckArgs {
  std::vector<std::string> ops;
  bool list = false;
  bool fast = false;
};

int run_gradcheck(const GradcheckArgs& args) {
  if (args.list) {
    for (const auto& e : op_table()) fmt::print("{:<28} {}\n", e.name, e.summary);
    return 0;
  }
  std::vector<const OpEntry*> entries;
  if (args.ops.empty()) {
    for (const auto& e : op_table()) entries.push_back(&e);
  } else {
    for (const auto& name : args.ops) {
      const OpEntry* e = find_op(name);
      if (!e) throw UsageError(fmt::format("--op: unknown op '{}'; `runway gradcheck --list` lists the ops", name));
      entries.push_back(e);
    }
  }
  fmt::print("{:<28} {:<36} {:>5} {:>11} {:>11}  {}\n", "op", "sample", "input", "max abs err",
             "max rel err", "result");
  int passed = 0, failed = 0, projected = 0;
  for (const OpEntry* e : entries) {
    for (const auto& sample : e->samples()) {
      GradcheckOptions opts = sample_options(*e, sample);
      opts.fast = opts.fast || args.fast;
      projected += opts.fast;
      GradcheckResult r;
      std::string error;
      try {
        r = gradcheck(sample_fn(*e, sample), sample.inputs, opts, sample.wrt);
      } catch (const std::exception& ex) {
        error = ex.what();
        r.passed = false;
      }
      for (const auto& in : r.inputs)
        fmt::print("{:<28} {:<36} {:>5} {:>11.3e} {:>11.3e}  {}\n", e->name, sample.label.substr(0, 36),
                   in.input_index, in.max_abs_err, in.max_rel_err, in.passed ? "pass" : "FAIL");
      for (const auto& f : r.failures) fmt::print("{:<28} {:<36}   structural check FAILED: {}\n", e->name, sample.label.substr(0, 36), f);
      if (!error.empty()) fmt::print("{:<28} {:<36}   ERROR: {}\n", e->name, sample.label.substr(0, 36), error);
      (r.passed ? passed : failed)++;
    }
  }
  fmt::print("\ngradcheck: {} passed, {} failed (samples; float64, central differences, eps {:g}, {})\n",
             passed, failed, GradcheckOptions{}.eps,
             projected == passed + failed ? std::string("random projections")
                                          : fmt::format("full Jacobians, {} by random projections", projected));
  return failed == 0 ? 0 : 1;
}

}  // namespace

void add_gradcheck_command(CLI::App& app, int* exit_code) {
  auto args = std::make_shared<GradcheckArgs>();
  CLI::App* cmd = app.add_subcommand("gradcheck", "Check every op's backward against central finite differences (float64)");
  cmd->add_option("--op", args->ops, "Only these ops (repeatable); see --list");
  cmd->add_flag("--list", args->list, "List the op names and exit");
  cmd->add_flag("--fast", args->fast, "Use random projections v^T J u instead of full Jacobians");
  cmd->callback([args, exit_code] { *exit_code = run_gradcheck(*args); });
}

}  // namespace runway::apps
