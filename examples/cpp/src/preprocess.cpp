#include "preprocess.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace bagcams {
namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;  // Pillow's fixed-point precision for 8-bit images

double triangle(double x) {
    x = std::fabs(x);
    return x < 1.0 ? 1.0 - x : 0.0;
}

// Per output index: the first input index and fixed-point weights of the taps it reads.
struct Taps {
    int ksize = 0;
    std::vector<int> first;
    std::vector<int> count;
    std::vector<std::int32_t> weights;  // out_size * ksize
};

Taps make_taps(int in_size, int out_size) {
    const double scale = static_cast<double>(in_size) / out_size;
    const double filterscale = std::max(scale, 1.0);  // widen the kernel when shrinking: antialias
    const double support = 1.0 * filterscale;          // bilinear support is 1
    Taps t;
    t.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
    t.first.resize(out_size);
    t.count.resize(out_size);
    t.weights.assign(static_cast<size_t>(out_size) * t.ksize, 0);
    std::vector<double> k(t.ksize);
    for (int xx = 0; xx < out_size; ++xx) {
        const double center = (xx + 0.5) * scale;
        const double ss = 1.0 / filterscale;
        int xmin = static_cast<int>(center - support + 0.5);  // C truncation, as Pillow
        if (xmin < 0) xmin = 0;
        int xmax = static_cast<int>(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        double ww = 0.0;
        for (int x = 0; x < xmax; ++x) {
            k[x] = triangle((x + xmin - center + 0.5) * ss);
            ww += k[x];
        }
        for (int x = 0; x < xmax; ++x) {
            const double w = ww != 0.0 ? k[x] / ww : k[x];
            const double fixed = w * (1 << kPrecisionBits);
            t.weights[static_cast<size_t>(xx) * t.ksize + x] =
                static_cast<std::int32_t>(w < 0 ? -0.5 + fixed : 0.5 + fixed);
        }
        t.first[xx] = xmin;
        t.count[xx] = xmax;
    }
    return t;
}

inline std::uint8_t clip8(std::int32_t v) {
    v >>= kPrecisionBits;
    return static_cast<std::uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
}

}  // namespace

namespace {

RgbImage horizontal_pass(const RgbImage& in, int out_w) {
    const Taps tx = make_taps(in.width, out_w);
    RgbImage out;
    out.width = out_w;
    out.height = in.height;
    out.pixels.resize(static_cast<size_t>(out_w) * in.height * 3);
    for (int y = 0; y < in.height; ++y) {
        const std::uint8_t* row = &in.pixels[static_cast<size_t>(y) * in.width * 3];
        std::uint8_t* o = &out.pixels[static_cast<size_t>(y) * out_w * 3];
        for (int xx = 0; xx < out_w; ++xx) {
            const std::int32_t* k = &tx.weights[static_cast<size_t>(xx) * tx.ksize];
            std::int32_t s0 = 1 << (kPrecisionBits - 1), s1 = s0, s2 = s0;
            for (int x = 0; x < tx.count[xx]; ++x) {
                const std::uint8_t* p = row + (x + tx.first[xx]) * 3;
                s0 += p[0] * k[x];
                s1 += p[1] * k[x];
                s2 += p[2] * k[x];
            }
            o[xx * 3 + 0] = clip8(s0);
            o[xx * 3 + 1] = clip8(s1);
            o[xx * 3 + 2] = clip8(s2);
        }
    }
    return out;
}

RgbImage vertical_pass(const RgbImage& in, int out_h) {
    const Taps ty = make_taps(in.height, out_h);
    RgbImage out;
    out.width = in.width;
    out.height = out_h;
    const size_t stride = static_cast<size_t>(in.width) * 3;
    out.pixels.resize(stride * out_h);
    for (int yy = 0; yy < out_h; ++yy) {
        const std::int32_t* k = &ty.weights[static_cast<size_t>(yy) * ty.ksize];
        std::uint8_t* o = &out.pixels[static_cast<size_t>(yy) * stride];
        for (size_t c = 0; c < stride; ++c) {
            std::int32_t s = 1 << (kPrecisionBits - 1);
            for (int y = 0; y < ty.count[yy]; ++y) s += in.pixels[(y + ty.first[yy]) * stride + c] * k[y];
            o[c] = clip8(s);
        }
    }
    return out;
}

}  // namespace

RgbImage resize_bilinear_pil(const RgbImage& in, int out_w, int out_h) {
    const bool need_h = in.width != out_w, need_v = in.height != out_h;
    if (!need_h && !need_v) return in;
    if (!need_h) return vertical_pass(in, out_h);
    if (!need_v) return horizontal_pass(in, out_w);
    // Each pass rounds to uint8, so the order matters. Current Pillow (checked against 13.0) runs the
    // vertical pass first when the height shrinks by more than twice as many pixels as the width.
    const int dh = in.height - out_h, dw = in.width - out_w;
    const bool vertical_first = dh > 0 && dh > dw * 2;
    return vertical_first ? horizontal_pass(vertical_pass(in, out_h), out_w)
                          : vertical_pass(horizontal_pass(in, out_w), out_h);
}

void normalize_into(const RgbImage& rgb, const std::array<float, 3>& mean, const std::array<float, 3>& std,
                    std::vector<float>& out) {
    const size_t n = static_cast<size_t>(rgb.width) * rgb.height;
    const size_t base = out.size();
    out.resize(base + 3 * n);
    for (int c = 0; c < 3; ++c) {
        float* plane = &out[base + c * n];
        for (size_t i = 0; i < n; ++i) {
            // same float32 operations and order as numpy: x / 255, then (x - mean) / std
            const float x = static_cast<float>(rgb.pixels[i * 3 + c]) / 255.0f;
            plane[i] = (x - mean[c]) / std[c];
        }
    }
}

}  // namespace bagcams
