// emu_lib.cpp -- the kernels of bagcams_kernels.cuh on the CPU emulation, as a shared library with
// one C entry point per __global__ kernel. tests/test_kernels.py loads it with ctypes behind a fake
// pycuda.driver whose "device pointers" are host addresses, so the real PyCUDA launcher (plan,
// argument packing, workspace offsets, grid/block/shared sizes) drives the real device code.
// Each entry point checks the launch configuration the way the GPU would reject it and returns
// non-zero instead of running on a wrong one.
#include "cuda_emu.h"

#include "../bagcams_kernels.cuh"

#include <string>

namespace {

template <typename T, class Op>
int partial(int smem, unsigned gx, unsigned gy, unsigned bx, unsigned by, size_t shared, const void* f,
            const void* g, float* out, int k, int p, int cpb, float scale) {
  if (bx != static_cast<unsigned>(bagcams::kPartialThreads) || by != 1) return 1;
  if (smem && shared < bagcams::partial_smem_bytes(Op::kStored, p)) return 2;
  if (static_cast<long long>(gx) * cpb < k) return 3;
  emu_launch(gx, gy, bx, by, shared, [&] {
    if (smem)
      bagcams::partial_body<Op, T, true>(static_cast<const T*>(f), static_cast<const T*>(g), out, k, p, cpb, scale);
    else
      bagcams::partial_body<Op, T, false>(static_cast<const T*>(f), static_cast<const T*>(g), out, k, p, cpb, scale);
  });
  return 0;
}

template <typename T>
int partial_method(const std::string& m, int smem, unsigned gx, unsigned gy, unsigned bx, unsigned by, size_t shared,
                   const void* f, const void* g, float* out, int k, int p, int cpb, float scale) {
  if (m == "bagcams") return partial<T, bagcams::BagcamsOp>(smem, gx, gy, bx, by, shared, f, g, out, k, p, cpb, scale);
  if (m == "gradcam") return partial<T, bagcams::GradcamOp>(smem, gx, gy, bx, by, shared, f, g, out, k, p, cpb, scale);
  if (m == "gradcampp")
    return partial<T, bagcams::GradcamppOp>(smem, gx, gy, bx, by, shared, f, g, out, k, p, cpb, scale);
  if (m == "pcs") return partial<T, bagcams::PcsOp>(smem, gx, gy, bx, by, shared, f, g, out, k, p, cpb, scale);
  return 4;
}

}  // namespace

extern "C" int emu_partial(const char* method, int f16, int smem, unsigned gx, unsigned gy, unsigned bx, unsigned by,
                           size_t shared, const void* f, const void* g, float* out, int k, int p, int cpb,
                           float scale) {
  return f16 ? partial_method<__half>(method, smem, gx, gy, bx, by, shared, f, g, out, k, p, cpb, scale)
             : partial_method<float>(method, smem, gx, gy, bx, by, shared, f, g, out, k, p, cpb, scale);
}

extern "C" int emu_reduce_partials(unsigned gx, unsigned gy, unsigned bx, unsigned by, size_t shared,
                                   const float* partial, float* raw, int groups, int p, int relu) {
  if (bx != static_cast<unsigned>(bagcams::kReduceX) || by != static_cast<unsigned>(bagcams::kReduceY)) return 1;
  if (static_cast<long long>(gx) * bagcams::kReduceX < p) return 3;
  emu_launch(gx, gy, bx, by, shared, [&] { bagcams_reduce_partials(partial, raw, groups, p, relu); });
  return 0;
}

extern "C" int emu_minmax(unsigned gx, unsigned gy, unsigned bx, unsigned by, size_t shared, const float* raw,
                          float* stats, int h, int w, int H, int W, int chunk, int blocks) {
  if (bx != static_cast<unsigned>(bagcams::kOutThreads) || by != 1) return 1;
  if (gx != static_cast<unsigned>(blocks) || static_cast<long long>(chunk) * blocks < static_cast<long long>(H) * W)
    return 3;
  emu_launch(gx, gy, bx, by, shared, [&] { bagcams_minmax(raw, stats, h, w, H, W, chunk, blocks); });
  return 0;
}

extern "C" int emu_normalize(unsigned gx, unsigned gy, unsigned bx, unsigned by, size_t shared, const float* raw,
                             const float* stats, float* out, int h, int w, int H, int W, int chunk, int blocks) {
  if (bx != static_cast<unsigned>(bagcams::kOutThreads) || by != 1) return 1;
  if (gx != static_cast<unsigned>(blocks) || static_cast<long long>(chunk) * blocks < static_cast<long long>(H) * W)
    return 3;
  emu_launch(gx, gy, bx, by, shared, [&] { bagcams_normalize(raw, stats, out, h, w, H, W, chunk, blocks); });
  return 0;
}
