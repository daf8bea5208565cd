// Writes the valid seed inputs of fuzz/corpus/ with the project's own writers (the
// invalid ones are small hand-made variants, see fuzz/README.md). Not part of the test
// suite; rerun after a format change:
//   build/fuzz/fuzz_make_seeds fuzz/corpus
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

#include "engine/npy.h"
#include "engine/random.h"
#include "engine/safetensors.h"
#include "fuzz/checkpoint_input.h"
#include "nn/checkpoint.h"
#include "nn/gpt.h"
#include "nn/train.h"

namespace fs = std::filesystem;
using runway::DType;
using runway::Tensor;

namespace {

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_all(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
  std::printf("%s (%zu bytes)\n", path.c_str(), bytes.size());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
    return 2;
  }
  const std::string root = argv[1];
  for (const char* d : {"npy", "safetensors", "config", "checkpoint"}) fs::create_directories(root + "/" + d);
  runway::Generator gen(7);

  // .npy: one of each dtype and a few shapes (scalar, empty, 3-d).
  runway::write_npy(root + "/npy/f32_2x3.npy", Tensor::normal({2, 3}, 0.0, 1.0, gen, DType::Float32));
  runway::write_npy(root + "/npy/f64_scalar.npy", Tensor::normal({}, 0.0, 1.0, gen, DType::Float64));
  runway::write_npy(root + "/npy/i64_0x4.npy", Tensor::zeros({0, 4}, DType::Int64));
  runway::write_npy(root + "/npy/f64_2x1x3.npy", Tensor::normal({2, 1, 3}, 0.0, 1.0, gen, DType::Float64));

  // safetensors: several dtypes with metadata, a zero-size tensor, an empty file.
  runway::write_safetensors(root + "/safetensors/three_dtypes.safetensors",
                            {{"a", Tensor::normal({2, 2}, 0.0, 1.0, gen, DType::Float32)},
                             {"b.weight", Tensor::normal({3}, 0.0, 1.0, gen, DType::Float64)},
                             {"c", Tensor::zeros({1, 2}, DType::Int64)}},
                            {{"format", "runway"}, {"step", "3"}});
  runway::write_safetensors(root + "/safetensors/zero_size.safetensors",
                            {{"empty", Tensor::zeros({0, 5}, DType::Float32)},
                             {"x", Tensor::normal({1}, 0.0, 1.0, gen, DType::Float32)}});
  runway::write_safetensors(root + "/safetensors/no_tensors.safetensors", {});

  // Configs: the defaults as a run writes them, and a small rewired model.
  runway::nn::TrainConfig config;
  write_all(root + "/config/default.json", config.to_json().dump(2) + "\n");
  write_all(root + "/config/rewired.json",
            R"({"n_layer": 2, "n_head": 2, "n_embd": 8, "seq_len": 16, "attention": "rewired", )"
            R"("rewired_layers": [1], "runway_head": 1, "pos": "alibi", "steps": 5, "lr": 0.01})");

  // A checkpoint of a tiny model (what Trainer::save_checkpoint writes, less the optimizer).
  runway::nn::TrainConfig tiny;
  tiny.model.n_layer = 1;
  tiny.model.n_head = 1;
  tiny.model.n_embd = 2;
  tiny.model.seq_len = 4;
  runway::nn::GPT model(tiny.model, gen);
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const auto& p : model.named_parameters()) tensors.emplace_back(p.name, p.tensor);
  const std::string tmp = root + "/checkpoint/.model.safetensors";
  runway::write_safetensors(tmp, tensors, {{"format", "runway"}, {"step", "0"}});
  const std::string weights = read_all(tmp);
  fs::remove(tmp);
  // Only the model keys, so that the seed stays under 4 KB (the rest take their defaults).
  const std::string tiny_config = R"({"n_layer": 1, "n_head": 1, "n_embd": 2, "seq_len": 4})";
  write_all(root + "/checkpoint/tiny_rope.bin", runway::fuzz::join_checkpoint_input({tiny_config, weights}));

  // The same weights in the checkpoints/step-N layout, with the manifest commit_checkpoint
  // writes (sizes and checksums of the unmutated weights).
  const std::string run = root + "/checkpoint/.run";
  fs::create_directories(run);
  runway::nn::commit_checkpoint(run, runway::fuzz::kStep,
                                {{"model.safetensors", [&](const std::string& path) {
                                    runway::write_safetensors(path, tensors, {{"format", "runway"}, {"step", "1"}});
                                  }}});
  const std::string step_dir = run + "/" + std::string(runway::fuzz::kStepFolder);
  write_all(root + "/checkpoint/tiny_step_layout.bin",
            runway::fuzz::join_checkpoint_input(
                {tiny_config, read_all(step_dir + "/model.safetensors"), read_all(step_dir + "/manifest.json")}));
  fs::remove_all(run);
  return 0;
}
