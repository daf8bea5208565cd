// A small RGB raster for the pictures `runway inspect` writes: filled rectangles, ASCII
// text in stb_easy_font's built-in vector font (no font file needed at run time), and
// PNG encoding through stb_image_write, written atomically.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace runway::viz {

struct Rgb {
  uint8_t r = 0, g = 0, b = 0;
};

class Canvas {
 public:
  Canvas(int width, int height, Rgb background = {255, 255, 255});
  int width() const { return width_; }
  int height() const { return height_; }
  Rgb at(int x, int y) const;
  // Clipped to the canvas; w or h <= 0 draws nothing.
  void fill_rect(int x, int y, int w, int h, Rgb color);
  // Draws ASCII text (bytes outside 32..126 are drawn as '?') with its top-left corner
  // at (x, y), every font unit `scale` pixels wide.
  void text(int x, int y, const std::string& s, Rgb color, int scale = 1);
  // Width and height in pixels that text(s, scale) covers.
  static int text_width(const std::string& s, int scale = 1);
  static int text_height(int scale = 1);

  std::vector<uint8_t> encode_png() const;
  void write_png(const std::string& path) const;  // atomic (temp file + rename)

 private:
  int width_, height_;
  std::vector<uint8_t> pixels_;  // row-major RGB
};

}  // namespace runway::viz
