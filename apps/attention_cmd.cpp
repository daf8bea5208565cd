#include "apps/commands.h"
namespace runway::apps {
void add_attention_command(CLI::App&, int*) {}
}  // namespace runway::apps
