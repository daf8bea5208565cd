// `runway attention`: runs one fused attention op (standard or runway-rewired) on
// (B, H, T, D) inputs read from .npy files, backpropagates a given upstream gradient,
// and writes the output, the input gradients and (for rewired) the intermediates as
// .npy files. Meant for inspecting the op and for cross-checking it against other
// implementations (NumPy, PyTorch) on the same inputs.
#include <fmt/format.h>

#include <cstdint>
#include <exception>
#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "apps/commands.h"
#include "apps/parse.h"
#include "engine/ops/attention.h"
#include "engine/npy.h"

namespace runway::apps {

namespace {

struct AttentionArgs {
  std::string q, k, v, dy, out;
  std::string kind = "standard";
  std::string summary = "absorption";
  double beta = 1.0;
  int64_t runway_head = 0;
  bool detach = false;
  // float64 by default: this command exists to compare against reference
  // implementations, NumPy's default dtype is float64 and the spec checks gradients in
  // float64; float32 is one flag away for checking what a model actually computes.
  std::string dtype = "float64";
};

// One input file: the flag it came from, its path and its contents.
struct Input {
  const char* flag;
  std::string path;
  Tensor tensor;
};

std::string describe_inputs(const std::vector<Input>& inputs) {
  std::string out;
  for (const Input& in : inputs)
    out += fmt::format("\n  {:<4} '{}' has shape {}", in.flag, in.path, in.tensor.shape_str());
  return out;
}

// Options that only mean something for the rewired op are ignored, but say so: a user
// passing --beta to a standard run probably forgot --kind rewired.
void warn_about_rewired_only_flags(const CLI::App& cmd) {
  std::vector<std::string> ignored;
  for (const char* flag : {"--summary", "--beta", "--runway-head", "--detach"})
    if (cmd.count(flag) > 0) ignored.push_back(flag);
  if (!ignored.empty())
    fmt::print(stderr, "runway attention: warning: {} only appl{} to --kind rewired; ignored\n",
               fmt::join(ignored, ", "), ignored.size() == 1 ? "ies" : "y");
}

// The op's inputs, converted to the compute dtype; q, k and v are the leaves whose
// gradients are written.
struct AttentionProblem {
  Tensor q, k, v, dy;
  int64_t B = 0, H = 0, T = 0, D = 0;
};

// Reads --q, --k, --v and --dy: four (B, H, T, D) arrays of one shape, every extent at
// least 1, with --runway-head naming one of the H heads for a rewired run.
AttentionProblem read_inputs(const AttentionArgs& args, bool rewired, DType dtype) {
  std::vector<Input> inputs{{"--q", args.q, {}}, {"--k", args.k, {}}, {"--v", args.v, {}}, {"--dy", args.dy, {}}};
  for (Input& in : inputs) in.tensor = read_npy(in.path);
  for (const Input& in : inputs)
    if (in.tensor.dim() != 4)
      throw Error(fmt::format("{} '{}' has shape {}; every input must be 4-D (B, H, T, D)", in.flag,
                              in.path, in.tensor.shape_str()));
  for (const Input& in : inputs)
    if (in.tensor.shape() != inputs[0].tensor.shape())
      throw Error(fmt::format("the inputs must all have the same shape (B, H, T, D):{}", describe_inputs(inputs)));
  const Shape& shape = inputs[0].tensor.shape();
  for (int64_t d : shape)
    if (d < 1)
      throw Error(fmt::format("the inputs have shape {}; B, H, T and D must all be at least 1:{}",
                              shape_to_string(shape), describe_inputs(inputs)));
  AttentionProblem problem;
  problem.B = shape[0], problem.H = shape[1], problem.T = shape[2], problem.D = shape[3];

  if (rewired && (args.runway_head < 0 || args.runway_head >= problem.H))
    throw Error(fmt::format("--runway-head {} is out of range: the inputs have H = {} heads, so it must be in [0, {})",
                            args.runway_head, problem.H, problem.H));

  // Conversions make fresh leaves, so requires_grad is set on exactly q, k and v.
  problem.q = inputs[0].tensor.to(dtype).set_requires_grad(true);
  problem.k = inputs[1].tensor.to(dtype).set_requires_grad(true);
  problem.v = inputs[2].tensor.to(dtype).set_requires_grad(true);
  problem.dy = inputs[3].tensor.to(dtype);
  return problem;
}

RunwayOptions runway_options_of(const AttentionArgs& args) {
  RunwayOptions options;
  options.runway_head = args.runway_head;
  options.summary = parse_runway_summary(args.summary);
  options.beta = args.beta;
  options.detach = args.detach;
  return options;
}

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

// Runs the op forward, backpropagates dy, and returns what is written: y, the input
// gradients and, for a rewired run (`options` set), the intermediates.
NamedTensors run_op(const AttentionProblem& problem, const RunwayOptions* options) {
  AttentionSink inter;
  const AttentionOptions how = options ? AttentionOptions::rewired_with(*options) : AttentionOptions::standard();
  Tensor y = causal_attention(AttentionInputs::split(problem.q, problem.k, problem.v), how,
                              options ? &inter : nullptr);
  y.backward(problem.dy);

  // A gradient the tape never reached is zero (it cannot happen for attention, but a
  // missing file would be worse than an explicit zero).
  auto grad_of = [](const Tensor& x) {
    Tensor g = x.grad();
    return g.defined() ? g : Tensor::zeros(x.shape(), x.dtype(), x.device());
  };
  NamedTensors outputs{
      {"y", y.detach()}, {"dq", grad_of(problem.q)}, {"dk", grad_of(problem.k)}, {"dv", grad_of(problem.v)}};
  if (options) {
    outputs.emplace_back("p", inter.p);
    outputs.emplace_back("r", inter.r);
    outputs.emplace_back("a", inter.a);
    outputs.emplace_back("a_rewired", inter.a_rewired);
  }
  return outputs;
}

void make_output_directory(const std::string& out) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(out, ec);
  if (ec) throw Error(fmt::format("cannot create the output directory '{}': {}", out, ec.message()));
  if (!fs::is_directory(out)) throw Error(fmt::format("--out '{}' exists and is not a directory", out));
}

// One line saying what ran, then one .npy file (and one line) per output.
void write_outputs(const std::string& out, const AttentionProblem& problem, const RunwayOptions* options,
                   DType dtype, const NamedTensors& outputs) {
  if (options)
    fmt::print("runway attention: rewired (summary {}, beta {:g}, runway head {}{}), {}, B={} H={} T={} D={}\n",
               runway_summary_name(options->summary), options->beta, options->runway_head,
               options->detach ? ", R detached" : "", dtype_name(dtype), problem.B, problem.H, problem.T, problem.D);
  else
    fmt::print("runway attention: standard, {}, B={} H={} T={} D={}\n", dtype_name(dtype), problem.B, problem.H,
               problem.T, problem.D);
  for (const auto& [name, tensor] : outputs) {
    if (!tensor.defined()) throw Error(fmt::format("the op did not produce '{}'", name));
    const std::string path = (std::filesystem::path(out) / (name + ".npy")).string();
    write_npy(path, tensor);
    fmt::print("  wrote {:<40} {}\n", path, tensor.shape_str());
  }
}

int run_attention(const AttentionArgs& args, const CLI::App& cmd) {
  const bool rewired = args.kind == "rewired";
  const DType dtype = args.dtype == "float32" ? DType::Float32 : DType::Float64;
  if (!rewired) warn_about_rewired_only_flags(cmd);
  const AttentionProblem problem = read_inputs(args, rewired, dtype);
  const RunwayOptions options = rewired ? runway_options_of(args) : RunwayOptions{};
  const RunwayOptions* rewiring = rewired ? &options : nullptr;
  const NamedTensors outputs = run_op(problem, rewiring);
  make_output_directory(args.out);
  write_outputs(args.out, problem, rewiring, dtype, outputs);
  return 0;
}

}  // namespace

void add_attention_command(CLI::App& app, int* exit_code) {
  auto args = std::make_shared<AttentionArgs>();
  CLI::App* cmd = app.add_subcommand(
      "attention",
      "Run standard or runway-rewired causal attention on .npy inputs of shape (B, H, T, D);\n"
      "backpropagate --dy and write y.npy, dq.npy, dk.npy, dv.npy (and, for rewired, p.npy and r.npy\n"
      "(B, T, T), a.npy and a_rewired.npy (B, H, T, T)) into --out. The op scales by 1/sqrt(D);\n"
      "no positional encoding is applied.");
  cmd->add_option("--q", args->q, "Queries, (B, H, T, D) .npy")->required();
  cmd->add_option("--k", args->k, "Keys, (B, H, T, D) .npy")->required();
  cmd->add_option("--v", args->v, "Values, (B, H, T, D) .npy")->required();
  cmd->add_option("--dy", args->dy, "Upstream gradient of the output y, (B, H, T, D) .npy")->required();
  cmd->add_option("--out", args->out, "Output directory (created with its parents if missing)")->required();
  add_choice_option(cmd, "--kind", &args->kind, "Attention kind", {"standard", "rewired"});
  add_choice_option(cmd, "--summary", &args->summary, "Runway summary R (rewired only)", {"absorption", "two_hop"});
  add_float_option(cmd, "--beta", &args->beta, "Rewiring strength: S' = S - beta R (rewired only)");
  add_int_option(cmd, "--runway-head", &args->runway_head, "The runway head r, in [0, H) (rewired only)");
  cmd->add_flag("--detach", args->detach, "Treat R as a constant in the backward (rewired only)");
  add_choice_option(cmd, "--dtype", &args->dtype, "Compute and output dtype; inputs are converted to it",
                    {"float32", "float64"});
  cmd->callback([args, cmd, exit_code] { *exit_code = run_attention(*args, *cmd); });  // errors: main() reports them
}

}  // namespace runway::apps
