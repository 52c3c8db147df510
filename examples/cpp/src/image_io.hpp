// Image files in and out: PNG (libpng) and JPEG (libjpeg), decoded the way the Python side's
// bagcams_deploy.preprocessing.load_image does (Pillow), so both feed the graph the same pixels.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace bagcams {

// An 8-bit RGB image, rows packed, 3 bytes per pixel.
struct RgbImage {
    int width = 0;
    int height = 0;
    std::vector<std::uint8_t> pixels;  // size width * height * 3
};

// Raised for any file that cannot be read or written; the message is one line, the path first.
struct ImageError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Read a PNG or JPEG (by content, not extension) as RGB:
//  grey and palette are expanded, an alpha channel is composited over white, 16-bit RGB keeps the
//  high byte and 16-bit grey is scaled by its maximum -- each as Pillow's conversion to "RGB" does.
RgbImage read_image(const std::string& path);

// Write RGB as an 8-bit PNG.
void write_png(const std::string& path, const RgbImage& image);

}  // namespace bagcams
