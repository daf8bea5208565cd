// A study set: one JSON file that describes a whole study, run by
// `runway compare --config-set FILE` (studies/paper-claims.json is the paper's claims):
//
//   {
//     "title": "...",                                  optional
//     "base": { ...keys of runway train's config... }, every configuration starts from it
//     "configs": [ {"label": "standard", "set": {"attention": "standard"}}, ... ],
//     "seeds": [1, 2, 3],                               optional, default [1]
//     "steps": 2400,                                    optional, default: --steps or --minutes
//     "eval": {"lengths_in_L": [1, 2, 4, 8], "passkey_lengths_in_L": [1, 2],
//              "max_windows": 48, "passkey_trials": 8, "recall_trials": 32}   optional
//   }
//
// The first configuration is the baseline of the report's paired differences. Every key
// is checked: an unknown one, a wrong type or a value out of range is an error naming the
// file and the key (the config keys through nn::TrainConfig's field table).
#pragma once

#include <string>

#include "lab/study.h"

namespace runway::lab {

// Reads `path` into o: configs, seeds, steps (when the file has them), evaluation sizes and
// title. Throws a runway::Error naming the file and the key on any problem.
void read_study_set(const std::string& path, StudyOptions& o);

}  // namespace runway::lab
