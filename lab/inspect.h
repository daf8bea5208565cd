// `runway inspect`'s measuring half: one text through a model, every layer's attention
// maps (A, A', the runway head's P and R) taken from the forward pass, and the
// runway-cascade diagnostics (nn/cascade.h) computed from them. viz/inspect.h draws
// them (the files of the folder are listed there).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/ops/attention.h"
#include "nn/gpt.h"
#include "viz/inspect.h"

namespace runway::lab {

// Runs `bytes` (1..max length) through `model` and writes the folder `out_dir`
// (created if missing). Errors: empty text, or longer than the model can take (learned
// positions: seq_len).
viz::InspectResult inspect_model(const nn::GPT& model, const std::vector<uint8_t>& bytes, const std::string& out_dir,
                                 const viz::InspectOptions& options = {});

// R from P (row-major (T, T), causal) by the spec's two summaries:
//   absorption R[i,j] = sum_{j<k<i} P[k,j];  two_hop R[i,j] = sum_{j<k<i} P[i,k] P[k,j].
std::vector<double> runway_coefficients_from(const std::vector<double>& p, int64_t T, RunwaySummary summary);

}  // namespace runway::lab
