// runway: the command-line front end. Thin: each subcommand lives in its own file
// and calls into engine/ (and nn/).
#include <cstdio>
#include <exception>

#include "apps/commands.h"
#include "apps/parse.h"
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
  // Usage errors (how the command was called: CLI11's parse errors and the flags'
  // values, apps/parse.h) exit 2; errors while running exit 1. Both print one line
  // "runway: error: ..." after whatever the command already printed.
  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {  // --help: prints the help, exit code 0
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "runway: error: %s\n", runway::apps::describe_parse_error(e, app).c_str());
    return 2;
  } catch (const runway::apps::UsageError& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "runway: error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "runway: error: %s\n", e.what());
    return 1;
  }
  return exit_code;
}
