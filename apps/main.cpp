// runway: the command-line front end. Thin: each subcommand lives in its own file
// and calls into engine/ (and nn/).
#include <cstdio>
#include <exception>

#include "apps/commands.h"
#include "engine/backend.h"
#include "engine/dtype.h"
#include "engine/threads.h"

int main(int argc, char** argv) {
  runway::prefer_passive_omp_wait(argv);
  runway::load_backends();
  CLI::App app{"runway: a tensor engine with standard and runway-rewired causal attention"};
  app.require_subcommand(1);
  int exit_code = 0;
  runway::apps::add_gradcheck_command(app, &exit_code);
  runway::apps::add_attention_command(app, &exit_code);
  runway::apps::add_train_command(app, &exit_code);
  runway::apps::add_eval_command(app, &exit_code);
  runway::apps::add_generate_command(app, &exit_code);
  runway::apps::add_inspect_command(app, &exit_code);
  runway::apps::add_demo_command(app, &exit_code);
  runway::apps::add_compare_command(app, &exit_code);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "runway: error: %s\n", e.what());
    return 1;
  }
  return exit_code;
}
