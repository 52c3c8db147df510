#include "boxes.hpp"

#include <algorithm>
#include <cmath>

namespace bagcams {
namespace {

// Per output index along one axis: the two source indices and the float weight of the second.
struct Axis {
    std::vector<int> lo, hi;
    std::vector<float> frac;
};

Axis make_axis(int in, int out) {
    Axis a;
    a.lo.resize(out);
    a.hi.resize(out);
    a.frac.resize(out);
    const double scale = static_cast<double>(in) / out;
    for (int d = 0; d < out; ++d) {
        const double x = (d + 0.5) * scale - 0.5;
        const double base = std::floor(x);
        int i = static_cast<int>(base);
        float f = static_cast<float>(x - base);
        if (i < 0) {  // left of the first centre: the edge value (replicated border)
            i = 0;
            f = 0.0f;
        } else if (i >= in - 1) {  // right of the last centre
            i = in - 1;
            f = 0.0f;
        }
        a.lo[d] = i;
        a.hi[d] = std::min(i + 1, in - 1);
        a.frac[d] = f;
    }
    return a;
}

// a + f * (b - a) with the multiply-add fused (one rounding), as IPP's float linear resize.
inline float lerp(float a, float b, float f) { return std::fma(f, b - a, a); }

// Labels of the padded binary image while borders are traced (Suzuki and Abe's marks, reduced to
// what an outer-border-only scan needs).
constexpr std::int8_t kBackground = 0;
constexpr std::int8_t kObject = 1;       // foreground, not on a traced border
constexpr std::int8_t kBorder = 2;       // on a traced outer border
constexpr std::int8_t kRightBorder = 3;  // on a traced outer border, with background to its east

// The 8 neighbour directions, counter-clockwise on screen starting east (y grows downwards):
// E, NE, N, NW, W, SW, S, SE.
constexpr int kDx[8] = {1, 1, 0, -1, -1, -1, 0, 1};
constexpr int kDy[8] = {0, -1, -1, -1, 0, 1, 1, 1};

// Follow the outer border of the component whose first pixel in raster order is at padded index
// `start` (its west neighbour is background), marking the border pixels; returns the box and twice
// the signed shoelace area of the closed walk through the border pixels' centres.
Contour trace_outer_border(std::vector<std::int8_t>& lab, int stride, int start) {
    int off[8];
    for (int k = 0; k < 8; ++k) off[k] = kDx[k] + kDy[k] * stride;
    const int sx = start % stride - 1, sy = start / stride - 1;  // unpadded coordinates
    Contour c;
    c.box = {sx, sy, sx, sy};

    // The first neighbour met turning clockwise from the west (NW, N, NE, E, SE, S, SW).
    int d = 4;
    do {
        d = (d + 7) & 7;
    } while (lab[start + off[d]] == kBackground && d != 4);
    if (d == 4) {  // an isolated pixel: a one-point contour of area 0
        lab[start] = kRightBorder;
        return c;
    }
    const int second = start + off[d];  // the walk ends on the step from `second` back to `start`

    int cur = start, x = sx, y = sy;
    std::int64_t twice_area = 0;
    for (;;) {
        // Turn counter-clockwise from the direction we came from (d) to the next border pixel.
        const int from = d;
        int k = from;
        int next = 0;
        do {
            ++k;
            next = cur + off[k & 7];
        } while (lab[next] == kBackground && k < from + 8);
        const int nd = k & 7;
        // The search went past east (wrapped around) only if the east neighbour is background.
        if (nd >= 1 && nd <= from)
            lab[cur] = kRightBorder;
        else if (lab[cur] == kObject)
            lab[cur] = kBorder;
        const int nx = x + kDx[nd], ny = y + kDy[nd];
        twice_area += static_cast<std::int64_t>(x) * ny - static_cast<std::int64_t>(nx) * y;
        c.box = {std::min(c.box[0], x), std::min(c.box[1], y), std::max(c.box[2], x), std::max(c.box[3], y)};
        if (next == start && cur == second) break;
        cur = next;
        x = nx;
        y = ny;
        d = (nd + 4) & 7;  // direction back to the pixel we left
    }
    c.twice_area = twice_area < 0 ? -twice_area : twice_area;
    return c;
}

}  // namespace

std::vector<float> resize_map(const float* map, int w, int h, int out_w, int out_h) {
    if (w == out_w && h == out_h) return std::vector<float>(map, map + static_cast<size_t>(w) * h);
    const Axis ax = make_axis(w, out_w), ay = make_axis(h, out_h);
    // horizontal pass over every source row, then the vertical one
    std::vector<float> rows(static_cast<size_t>(h) * out_w);
    for (int y = 0; y < h; ++y) {
        const float* src = map + static_cast<size_t>(y) * w;
        float* dst = &rows[static_cast<size_t>(y) * out_w];
        for (int x = 0; x < out_w; ++x) dst[x] = lerp(src[ax.lo[x]], src[ax.hi[x]], ax.frac[x]);
    }
    std::vector<float> out(static_cast<size_t>(out_w) * out_h);
    for (int y = 0; y < out_h; ++y) {
        const float* r0 = &rows[static_cast<size_t>(ay.lo[y]) * out_w];
        const float* r1 = &rows[static_cast<size_t>(ay.hi[y]) * out_w];
        float* dst = &out[static_cast<size_t>(y) * out_w];
        for (int x = 0; x < out_w; ++x) dst[x] = std::clamp(lerp(r0[x], r1[x], ay.frac[y]), 0.0f, 1.0f);
    }
    return out;
}

std::vector<std::uint8_t> scoremap_to_uint8(const std::vector<float>& map) {
    std::vector<std::uint8_t> out(map.size());
    for (size_t i = 0; i < map.size(); ++i) {
        const float v = map[i] > 0.0f ? std::min(map[i], 1.0f) : 0.0f;  // NaN -> 0
        out[i] = static_cast<std::uint8_t>(v * 255.0f);
    }
    return out;
}

int threshold_level(const std::vector<std::uint8_t>& image, double t) {
    const std::uint8_t peak = image.empty() ? 0 : *std::max_element(image.begin(), image.end());
    return static_cast<int>(std::trunc(t * static_cast<double>(peak)));
}

std::vector<Contour> external_contours(const std::vector<std::uint8_t>& image, int w, int h, int level) {
    // One pixel of background around the image, as findContours pads it.
    const int stride = w + 2;
    std::vector<std::int8_t> lab(static_cast<size_t>(stride) * (h + 2), kBackground);
    for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x)
            if (image[static_cast<size_t>(y) * w + x] > level) lab[static_cast<size_t>(y + 1) * stride + x + 1] = kObject;

    // Raster scan. A background -> unmarked-object step starts an outer border, unless the last
    // border pixel met on this row is a kBorder one: then the scan is inside a traced component
    // (in one of its holes), and what starts here is a hole's edge or a component nested in a hole,
    // neither of which RETR_EXTERNAL reports.
    std::vector<Contour> found;
    for (int y = 1; y <= h; ++y) {
        int last = y * stride;  // the padding column: background
        std::int8_t prev = kBackground;
        for (int x = 1; x <= w; ++x) {
            const int i = y * stride + x;
            std::int8_t p = lab[i];
            if (prev == kBackground && p == kObject && lab[last] != kBorder) {
                found.push_back(trace_outer_border(lab, stride, i));
                p = lab[i];
            }
            if (p == kBorder || p == kRightBorder) last = i;
            prev = p;
        }
    }
    std::reverse(found.begin(), found.end());  // OpenCV lists the last one found first
    return found;
}

std::vector<Box> object_boxes(const std::vector<float>& map, int w, int h, double t, bool multi_contour) {
    const std::vector<std::uint8_t> image = scoremap_to_uint8(map);
    const std::vector<Contour> contours = external_contours(image, w, h, threshold_level(image, t));
    std::vector<Box> boxes;
    if (contours.empty()) return boxes;
    if (multi_contour) {
        for (const Contour& c : contours) boxes.push_back(c.box);
        return boxes;
    }
    const Contour* best = &contours[0];  // python's max: the first of the largest
    for (const Contour& c : contours)
        if (c.twice_area > best->twice_area) best = &c;
    boxes.push_back(best->box);
    return boxes;
}

}  // namespace bagcams
