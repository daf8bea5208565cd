// The shared frame of the HTML pages runway writes (inspect pages, reports): one inline
// stylesheet, no scripts, nothing fetched from the network.
#pragma once

#include <string>

namespace runway::viz {

std::string html_page_start(const std::string& title);
std::string html_page_end();

}  // namespace runway::viz
