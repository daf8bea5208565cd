// Each subcommand of the `runway` CLI registers itself on the app and sets the
// exit code it wants through the returned callback result.
#pragma once

#include <CLI/CLI.hpp>

namespace runway::apps {

// Adds `runway gradcheck`; on run, stores the process exit code in *exit_code.
void add_gradcheck_command(CLI::App& app, int* exit_code);

// Adds `runway attention`: runs standard or rewired attention on .npy inputs and
// writes the outputs, gradients and intermediates as .npy files.
void add_attention_command(CLI::App& app, int* exit_code);

// Adds `runway train`: trains a byte-level GPT (standard or rewired), checkpoints, resume.
void add_train_command(CLI::App& app, int* exit_code);

// Adds `runway eval`: bits per byte at L..8L, passkey retrieval, associative recall.
void add_eval_command(CLI::App& app, int* exit_code);

// Adds `runway generate`: prompted sampling with a KV cache.
void add_generate_command(CLI::App& app, int* exit_code);

// Adds `runway inspect`: attention heatmaps, runway-cascade diagnostics, index.html.
void add_inspect_command(CLI::App& app, int* exit_code);

// Adds `runway demo` (standard vs rewired, trained, evaluated, inspected, one report)
// and `runway compare` (the same for any configs and seeds).
void add_demo_command(CLI::App& app, int* exit_code);
void add_compare_command(CLI::App& app, int* exit_code);

}  // namespace runway::apps
