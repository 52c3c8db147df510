// The box of a localization map, by the rule of the Python `localize` command
// (bagcams_deploy.localize: resize_map, then bagcams_deploy.evaluation.boxes.object_boxes):
//
//  1. the map is resized to the original image's size as bagcams_deploy.visualize.resize_map does
//     (cv2.resize INTER_LINEAR, then clipped to [0, 1]; no resize when the sizes already agree);
//  2. it becomes 8-bit as scoremap_to_uint8 does: (uint8)(float32(v) * 255), truncated;
//  3. the level is int(t * max) over that 8-bit map (threshold_levels), and the pixels strictly
//     above the level are the foreground (cv2.threshold THRESH_BINARY);
//  4. the outer border of each 8-connected foreground component that does not lie inside a hole of
//     another one (cv2.findContours RETR_EXTERNAL) is traced; its area is cv2.contourArea of the
//     traced border (the shoelace area of the polygon through the border pixels' centres, so a
//     single pixel or a one-pixel-wide line has area 0) and its box is the border's bounding box,
//     [x0, y0, x1, y1] with inclusive pixel edges;
//  5. single-contour mode keeps the largest area; ties go to the contour OpenCV lists first, which
//     is the one whose first pixel in raster order (top row first, then leftmost) comes LAST,
//     because findContours returns the external contours in reverse raster order.
//
// Nothing here depends on OpenVINO or on image files.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

namespace bagcams {

using Box = std::array<int, 4>;  // x0, y0, x1, y1, inclusive pixel edges

// bagcams_deploy.visualize.resize_map: a [h, w] float map resized to [out_h, out_w].
//
// What Python runs is cv2.resize(INTER_LINEAR) on float32, which the opencv-python wheels hand to
// Intel IPP (OpenCV's IPP HAL). Reproduced here bit for bit for maps of at least 2x2 pixels (a map
// one pixel high or wide differs by up to 2e-6; checked against opencv-python 5.0 with
// IPP 2026.0, whose AVX2 and AVX-512 paths agree): half-pixel centres, the source coordinate
// (d + 0.5) * (in / out) - 0.5 in double, its fraction rounded to float, edges replicated; each
// output is a float lerp a + f * (b - a) computed with one fused multiply-add, horizontally first
// and then vertically; finally clipped to [0, 1]. Same sizes: a copy, not clipped (as Python).
// OpenCV's own resize (no IPP) and IPP's SSE4.2 path (no FMA) round some pixels one step apart.
std::vector<float> resize_map(const float* map, int w, int h, int out_w, int out_h);

// scoremap_to_uint8: (uint8)(v * 255) in float32, truncating, after clipping v to [0, 1] (Python
// clips within its tolerance and refuses the rest; a NaN here counts as 0).
std::vector<std::uint8_t> scoremap_to_uint8(const std::vector<float>& map);

// threshold_levels for one threshold: int(t * max(image)), the product in double, truncated.
int threshold_level(const std::vector<std::uint8_t>& image, double t);

// One outer border: its bounding box and twice its cv2.contourArea (an exact integer).
struct Contour {
    Box box{};
    std::int64_t twice_area = 0;
};

// cv2.findContours(image > level, RETR_EXTERNAL, ...) reduced to what the boxes need, in the order
// OpenCV returns the contours (reverse raster order of their first pixels).
std::vector<Contour> external_contours(const std::vector<std::uint8_t>& image, int w, int h, int level);

// object_boxes(map, t, multi_contour) for a map already at the image's size [h, w]: no box when no
// pixel passes; else the largest contour's box, or with multi_contour every contour's box in
// OpenCV's order.
std::vector<Box> object_boxes(const std::vector<float>& map, int w, int h, double t, bool multi_contour);

}  // namespace bagcams
