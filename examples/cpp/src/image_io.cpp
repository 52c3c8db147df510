// PNG/JPEG reading and PNG writing with the system libpng and libjpeg.
// Both libraries report errors through longjmp; every jump lands in the function that called
// setjmp, which turns it into an ImageError after the library's own cleanup.
#include "image_io.hpp"

#include <algorithm>
#include <cerrno>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <memory>

#include <jpeglib.h>
// after jpeglib.h, which it needs: the message codes (JWRN_JPEG_EOF)
#include <jerror.h>
#include <png.h>

namespace bagcams {
namespace {

// Pillow's decompression-bomb bound (2 x Image.MAX_IMAGE_PIXELS): the Python side refuses the same files.
constexpr double kMaxImagePixels = 2.0 * 89478485;

struct FileCloser {
    void operator()(std::FILE* f) const {
        if (f) std::fclose(f);
    }
};
using FilePtr = std::unique_ptr<std::FILE, FileCloser>;

FilePtr open_file(const std::string& path, const char* mode) {
    FilePtr f(std::fopen(path.c_str(), mode));
    if (!f) throw ImageError("cannot read image " + path + ": " + std::strerror(errno));
    return f;
}

// Pillow's alpha_composite of an RGBA pixel over opaque white (AlphaComposite.c, 7 bits precision),
// which is what load_image does before dropping alpha.
inline std::uint8_t over_white(unsigned c, unsigned a) {
    if (a == 0) return 255;
    const unsigned coef1 = a * 128u;  // a*255*255*128 / (255*255) when the background is opaque
    const unsigned coef2 = 255u * 128u - coef1;
    const unsigned tmp = c * coef1 + 255u * coef2 + (0x80u << 7);
    return static_cast<std::uint8_t>((((tmp >> 8) + tmp) >> 8) >> 7);
}

// ---------------------------------------------------------------------------------------- PNG
struct PngReadState {
    png_structp png = nullptr;
    png_infop info = nullptr;
    ~PngReadState() { png_destroy_read_struct(&png, info ? &info : nullptr, nullptr); }
};

void png_error_fn(png_structp png, png_const_charp msg) {
    auto* out = static_cast<std::string*>(png_get_error_ptr(png));
    if (out) *out = msg;
    png_longjmp(png, 1);
}
void png_warning_fn(png_structp, png_const_charp) {}

RgbImage read_png(const std::string& path, std::FILE* f) {
    PngReadState s;
    std::string message = "corrupt PNG";
    s.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &message, png_error_fn, png_warning_fn);
    if (!s.png) throw ImageError(path + ": out of memory");
    s.info = png_create_info_struct(s.png);
    if (!s.info) throw ImageError(path + ": out of memory");

    RgbImage img;
    std::vector<std::uint8_t> raw;  // declared before setjmp: nothing is constructed after the jump
    std::vector<png_bytep> rows;
    if (setjmp(png_jmpbuf(s.png))) throw ImageError("cannot read image " + path + ": " + message);

    png_init_io(s.png, f);
    png_read_info(s.png, s.info);
    const int color = png_get_color_type(s.png, s.info);
    const int depth = png_get_bit_depth(s.png, s.info);
    const bool grey16 = depth == 16 && color == PNG_COLOR_TYPE_GRAY;
    bool alpha = (color & PNG_COLOR_MASK_ALPHA) != 0;
    if (color == PNG_COLOR_TYPE_PALETTE) {
        png_set_palette_to_rgb(s.png);
        // Pillow composites only palette transparency (mode P); tRNS on grey/RGB is ignored there
        if (png_get_valid(s.png, s.info, PNG_INFO_tRNS)) {
            png_set_tRNS_to_alpha(s.png);
            alpha = true;
        }
    }
    if (color == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(s.png);
    if (depth == 16 && !grey16) png_set_strip_16(s.png);  // the high byte, as Pillow's ";16B" modes
    if (depth == 16 && grey16) png_set_swap(s.png);       // 16-bit grey read natively (host order)
    if (!grey16 && (color == PNG_COLOR_TYPE_GRAY || color == PNG_COLOR_TYPE_GRAY_ALPHA))
        png_set_gray_to_rgb(s.png);
    png_set_interlace_handling(s.png);
    png_read_update_info(s.png, s.info);
    if (static_cast<double>(png_get_image_width(s.png, s.info)) * png_get_image_height(s.png, s.info) >
        kMaxImagePixels)
        throw ImageError("image " + path + " is too large to decode safely (" +
                         std::to_string(png_get_image_width(s.png, s.info)) + "x" +
                         std::to_string(png_get_image_height(s.png, s.info)) + ")");

    img.width = static_cast<int>(png_get_image_width(s.png, s.info));
    img.height = static_cast<int>(png_get_image_height(s.png, s.info));
    const size_t stride = png_get_rowbytes(s.png, s.info);
    raw.resize(stride * static_cast<size_t>(img.height));
    rows.resize(static_cast<size_t>(img.height));
    for (int y = 0; y < img.height; ++y) rows[y] = raw.data() + stride * static_cast<size_t>(y);
    png_read_image(s.png, rows.data());
    png_read_end(s.png, nullptr);

    const size_t n = static_cast<size_t>(img.width) * static_cast<size_t>(img.height);
    img.pixels.resize(n * 3);
    if (grey16) {
        // load_image: 16-bit grey -> float / max * 255, truncated to uint8
        std::uint16_t hi = 0;
        for (int y = 0; y < img.height; ++y)
            for (int x = 0; x < img.width; ++x)
                hi = std::max(hi, reinterpret_cast<const std::uint16_t*>(rows[y])[x]);
        const double scale = hi > 0 ? static_cast<double>(hi) : 1.0;
        for (int y = 0; y < img.height; ++y)
            for (int x = 0; x < img.width; ++x) {
                const double g = reinterpret_cast<const std::uint16_t*>(rows[y])[x] / scale * 255.0;
                const auto b = static_cast<std::uint8_t>(std::clamp(g, 0.0, 255.0));
                std::uint8_t* o = &img.pixels[(static_cast<size_t>(y) * img.width + x) * 3];
                o[0] = o[1] = o[2] = b;
            }
        return img;
    }
    const int channels = alpha ? 4 : 3;
    for (int y = 0; y < img.height; ++y) {
        const std::uint8_t* r = rows[y];
        std::uint8_t* o = &img.pixels[static_cast<size_t>(y) * img.width * 3];
        for (int x = 0; x < img.width; ++x, r += channels, o += 3) {
            if (alpha) {
                o[0] = over_white(r[0], r[3]);
                o[1] = over_white(r[1], r[3]);
                o[2] = over_white(r[2], r[3]);
            } else {
                o[0] = r[0];
                o[1] = r[1];
                o[2] = r[2];
            }
        }
    }
    return img;
}

// --------------------------------------------------------------------------------------- JPEG
struct JpegError {
    jpeg_error_mgr mgr;
    std::jmp_buf jump;
    char message[JMSG_LENGTH_MAX];
    bool truncated = false;  // libjpeg pads a cut-off file with grey and only warns (JWRN_JPEG_EOF)
};

void jpeg_error_exit(j_common_ptr cinfo) {
    auto* err = reinterpret_cast<JpegError*>(cinfo->err);
    (*cinfo->err->format_message)(cinfo, err->message);
    std::longjmp(err->jump, 1);
}

RgbImage read_jpeg(const std::string& path, std::FILE* f) {
    jpeg_decompress_struct cinfo;
    JpegError err;
    cinfo.err = jpeg_std_error(&err.mgr);
    err.mgr.error_exit = jpeg_error_exit;
    err.mgr.output_message = [](j_common_ptr) {};  // warnings stay quiet, as in Pillow
    err.mgr.emit_message = [](j_common_ptr c, int level) {
        // a truncated file is an error, as in Pillow ("image file is truncated"), not a grey-padded image
        if (level < 0 && c->err->msg_code == JWRN_JPEG_EOF) reinterpret_cast<JpegError*>(c->err)->truncated = true;
    };
    RgbImage img;
    std::vector<std::uint8_t> pixels;
    if (setjmp(err.jump)) {
        jpeg_destroy_decompress(&cinfo);
        throw ImageError("cannot read image " + path + ": " + err.message);
    }
    jpeg_create_decompress(&cinfo);
    jpeg_stdio_src(&cinfo, f);
    jpeg_read_header(&cinfo, TRUE);
    if (cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK) {
        jpeg_destroy_decompress(&cinfo);
        throw ImageError("cannot read image " + path + ": CMYK JPEG is not supported; convert it to RGB");
    }
    cinfo.out_color_space = JCS_RGB;  // grey is replicated, YCbCr converted with libjpeg's defaults
    if (static_cast<double>(cinfo.image_width) * cinfo.image_height > kMaxImagePixels) {
        jpeg_destroy_decompress(&cinfo);
        throw ImageError("image " + path + " is too large to decode safely (" + std::to_string(cinfo.image_width) +
                         "x" + std::to_string(cinfo.image_height) + ")");
    }
    jpeg_start_decompress(&cinfo);
    const int w = static_cast<int>(cinfo.output_width), h = static_cast<int>(cinfo.output_height);
    pixels.resize(static_cast<size_t>(w) * h * 3);
    while (cinfo.output_scanline < cinfo.output_height) {
        JSAMPROW row = &pixels[static_cast<size_t>(cinfo.output_scanline) * w * 3];
        jpeg_read_scanlines(&cinfo, &row, 1);
    }
    jpeg_finish_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    if (err.truncated) throw ImageError("cannot read image " + path + ": image file is truncated");
    img.width = w;
    img.height = h;
    img.pixels = std::move(pixels);
    return img;
}

}  // namespace

RgbImage read_image(const std::string& path) {
    FilePtr f = open_file(path, "rb");
    unsigned char magic[8] = {0};
    const size_t got = std::fread(magic, 1, sizeof magic, f.get());
    std::rewind(f.get());
    if (got >= 8 && png_sig_cmp(magic, 0, 8) == 0) return read_png(path, f.get());
    if (got >= 3 && magic[0] == 0xFF && magic[1] == 0xD8 && magic[2] == 0xFF) return read_jpeg(path, f.get());
    throw ImageError("cannot read image " + path + ": not a PNG or JPEG file");
}

void write_png(const std::string& path, const RgbImage& image) {
    png_image out;
    std::memset(&out, 0, sizeof out);
    out.version = PNG_IMAGE_VERSION;
    out.width = static_cast<png_uint_32>(image.width);
    out.height = static_cast<png_uint_32>(image.height);
    out.format = PNG_FORMAT_RGB;
    if (!png_image_write_to_file(&out, path.c_str(), 0, image.pixels.data(), 0, nullptr)) {
        const std::string why = out.message;
        png_image_free(&out);
        throw ImageError("cannot write " + path + ": " + why);
    }
}

}  // namespace bagcams
