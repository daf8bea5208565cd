#include "viz/canvas.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "engine/dtype.h"
#include "engine/file_io.h"

#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STB_IMAGE_WRITE_STATIC
#include <stb/stb_easy_font.h>
#include <stb/stb_image_write.h>

namespace runway::viz {

namespace {

// stb_easy_font draws only 32..126; everything else becomes '?'.
std::string printable_ascii(const std::string& s) {
  std::string out = s;
  for (char& c : out)
    if (static_cast<unsigned char>(c) < 32 || static_cast<unsigned char>(c) > 126) c = '?';
  return out;
}

struct EasyFontVertex {
  float x, y, z;
  unsigned char color[4];
};

}  // namespace

Canvas::Canvas(int width, int height, Rgb background) : width_(width), height_(height) {
  if (width < 1 || height < 1 || width > 16384 || height > 16384)
    throw Error(fmt::format("Canvas: size {}x{} is outside 1..16384", width, height));
  pixels_.resize(static_cast<size_t>(width) * static_cast<size_t>(height) * 3);
  fill_rect(0, 0, width, height, background);
}

Rgb Canvas::at(int x, int y) const {
  if (x < 0 || y < 0 || x >= width_ || y >= height_)
    throw Error(fmt::format("Canvas::at({}, {}) is outside {}x{}", x, y, width_, height_));
  const uint8_t* p = &pixels_[(static_cast<size_t>(y) * static_cast<size_t>(width_) + static_cast<size_t>(x)) * 3];
  return {p[0], p[1], p[2]};
}

void Canvas::fill_rect(int x, int y, int w, int h, Rgb color) {
  const int x0 = std::max(0, x), y0 = std::max(0, y);
  const int x1 = std::min(width_, x + w), y1 = std::min(height_, y + h);
  for (int yy = y0; yy < y1; ++yy) {
    uint8_t* row = &pixels_[static_cast<size_t>(yy) * static_cast<size_t>(width_) * 3];
    for (int xx = x0; xx < x1; ++xx) {
      row[xx * 3 + 0] = color.r;
      row[xx * 3 + 1] = color.g;
      row[xx * 3 + 2] = color.b;
    }
  }
}

void Canvas::text(int x, int y, const std::string& s, Rgb color, int scale) {
  if (s.empty()) return;
  std::string ascii = printable_ascii(s);
  // stb_easy_font needs ~270 bytes of vertices per character.
  std::vector<EasyFontVertex> vertices(ascii.size() * 4 * 18 + 64);
  unsigned char rgba[4] = {color.r, color.g, color.b, 255};
  const int quads = stb_easy_font_print(0, 0, ascii.data(), rgba, vertices.data(),
                                        static_cast<int>(vertices.size() * sizeof(EasyFontVertex)));
  // Every quad is an axis-aligned rectangle: vertices 0 and 2 are opposite corners.
  for (int q = 0; q < quads; ++q) {
    const EasyFontVertex& a = vertices[static_cast<size_t>(q) * 4];
    const EasyFontVertex& c = vertices[static_cast<size_t>(q) * 4 + 2];
    const int qx = static_cast<int>(std::min(a.x, c.x)), qy = static_cast<int>(std::min(a.y, c.y));
    const int qw = static_cast<int>(std::abs(c.x - a.x)), qh = static_cast<int>(std::abs(c.y - a.y));
    fill_rect(x + qx * scale, y + qy * scale, qw * scale, qh * scale, color);
  }
}

int Canvas::text_width(const std::string& s, int scale) {
  std::string ascii = printable_ascii(s);
  return s.empty() ? 0 : stb_easy_font_width(ascii.data()) * scale;
}

int Canvas::text_height(int scale) {
  // The glyphs of stb_easy_font occupy 7 units above the baseline and 2 below (g, p, y).
  return 9 * scale;
}

std::vector<uint8_t> Canvas::encode_png() const {
  std::vector<uint8_t> out;
  auto append = [](void* context, void* data, int size) {
    auto* buffer = static_cast<std::vector<uint8_t>*>(context);
    const auto* bytes = static_cast<const uint8_t*>(data);
    buffer->insert(buffer->end(), bytes, bytes + size);
  };
  if (!stbi_write_png_to_func(append, &out, width_, height_, 3, pixels_.data(), width_ * 3))
    throw Error(fmt::format("PNG encoding of a {}x{} image failed", width_, height_));
  return out;
}

void Canvas::write_png(const std::string& path) const {
  const std::vector<uint8_t> png = encode_png();
  write_file_atomic(path, "write_png", [&](const ByteSink& sink) { sink(png.data(), png.size()); });
}

}  // namespace runway::viz
