#include "viz/html.h"

#include "engine/file_io.h"
#include "viz/chart.h"

namespace runway::viz {

std::string html_page_start(const std::string& title) {
  return "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<title>" + escape_xml(title) +
         "</title>\n<style>\n"
         "body{font-family:sans-serif;margin:24px;color:#222;max-width:1500px}\n"
         "h1{font-size:24px}h2{font-size:19px;margin-top:28px;border-bottom:1px solid #ddd}h3{font-size:15px}\n"
         ".row{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}\n"
         "figure{margin:0}figure img{max-width:100%;border:1px solid #eee}\n"
         "figcaption{font-size:12px;color:#555;max-width:420px}\n"
         ".heat img{width:330px}.map img{width:440px}\n"
         "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}\n"
         "th{background:#f3f3f3}td.name{text-align:left}\n"
         "pre.text{white-space:pre-wrap;background:#f7f7f7;padding:8px;max-width:900px;font-size:12px}\n"
         ".note{color:#555;font-size:13px}\n"
         "</style></head><body>\n";
}

std::string html_page_end() { return "</body></html>\n"; }

void write_text_file(const std::string& path, const std::string& text) {
  write_file_atomic(path, "write_text_file", [&](const ByteSink& sink) { sink(text.data(), text.size()); });
}

}  // namespace runway::viz
