// The shared frame of the HTML pages runway writes (inspect pages, reports): one inline
// stylesheet, no scripts, nothing fetched from the network.
#pragma once

#include <string>

namespace runway::viz {

std::string html_page_start(const std::string& title);
std::string html_page_end();

// Writes text to a file atomically (pages, charts, JSON beside them).
void write_text_file(const std::string& path, const std::string& text);

}  // namespace runway::viz
