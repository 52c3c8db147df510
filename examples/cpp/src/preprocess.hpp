// Pre-processing identical to bagcams_deploy.preprocessing: Pillow's bilinear resize (antialiased
// when shrinking, 8-bit fixed point), then /255 and (x - mean) / std in float32, written as CHW.
#pragma once

#include <array>
#include <vector>

#include "image_io.hpp"

namespace bagcams {

// Pillow's Image.resize(size, BILINEAR) on an RGB image, reimplemented from its documented
// algorithm: a separable triangle filter whose support grows with the downscale factor, weights
// rounded to 22-bit fixed point, two passes each rounded to uint8, in Pillow's order (horizontal
// first unless the height shrinks by more than twice as many pixels as the width).
RgbImage resize_bilinear_pil(const RgbImage& in, int out_width, int out_height);

// RGB uint8 [H,W,3] at the graph's size -> normalised float32 [3,H,W] appended to `out`.
void normalize_into(const RgbImage& rgb, const std::array<float, 3>& mean, const std::array<float, 3>& std,
                    std::vector<float>& out);

}  // namespace bagcams
