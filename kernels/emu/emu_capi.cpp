// emu_capi.cpp -- the host C API of bagcams_kernels.cu (bagcams_aggregate, bagcams_workspace_size)
// on the CPU emulation, as a shared library for ctypes (tests/test_kernels.py). Device pointers
// are host addresses. The CUDA runtime types and declarations come from the toolkit's own
// cuda_runtime_api.h (so the stand-ins below must match the real signatures); the functions the
// .cu calls are defined here:
//   cudaGetDevice, cudaDeviceGetAttribute (opt-in limit set by emu_capi_configure),
//   cudaFuncGetAttributes (a configurable static shared size), cudaFuncSetAttribute (recorded),
//   cudaLaunchKernel (the partial kernels: args unpacked, launch checked, run on emu_launch),
//   cudaGetLastError (sticky error of the <<<>>> launches).
// The test builds this file with -DBAGCAMS_CAPI_SOURCE="<copy of bagcams_kernels.cu>" in which
// every `kernel<<<cfg>>>(args);` is rewritten to `emu_chevron(kernel, EmuLaunchConfig{cfg}, args);`
// (nothing else changed), and -I kernels/ for its includes.
#include "cuda_emu.h"

#include <cuda_runtime_api.h>

#include "../bagcams_kernels.cuh"  // #pragma once: the .cu's own include of it is then a no-op

#include <cstddef>

struct EmuLaunchConfig {
  dim3 grid;
  dim3 block;
  size_t shared = 0;
  cudaStream_t stream = nullptr;
};

namespace emu_capi {

constexpr size_t kGpuDefaultSmem = 48 * 1024;  // dynamic + static shared memory without opt-in

int g_optin = 96 * 1024;         // cudaDevAttrMaxSharedMemoryPerBlockOptin
int g_static_smem = 64;          // cudaFuncAttributes::sharedSizeBytes of the partial kernels
cudaError_t g_last_error = cudaSuccess;
int g_set_attribute_calls = 0;   // cudaFuncSetAttribute(MaxDynamicSharedMemorySize) calls
const void* g_raised_kernel = nullptr;
int g_raised_value = 0;
int g_launches = 0;              // kernel launches (all four kinds) since the last reset
// the last partial launch
int g_partial_smem = -1;
unsigned g_partial_grid[3] = {0, 0, 0}, g_partial_block[3] = {0, 0, 0};
size_t g_partial_dyn = 0;

cudaError_t fail(cudaError_t e) {
  if (g_last_error == cudaSuccess) g_last_error = e;
  return e;
}

bool plain_block(dim3 b, unsigned x, unsigned y) { return b.x == x && b.y == y && b.z == 1; }

// The three non-partial kernels launched with <<<>>>: one overload per kernel signature, checking
// the configuration as emu_lib.cpp does (a wrong one sets the sticky error and runs nothing).
void emu_chevron(void (*kernel)(const float*, float*, int, int, int), EmuLaunchConfig c, const float* partial,
                 float* raw, int groups, int p, int relu) {
  ++g_launches;
  if (!plain_block(c.block, bagcams::kReduceX, bagcams::kReduceY) || c.grid.z != 1 ||
      static_cast<long long>(c.grid.x) * bagcams::kReduceX < p || c.shared > kGpuDefaultSmem) {
    fail(cudaErrorInvalidConfiguration);
    return;
  }
  emu_launch(c.grid.x, c.grid.y, c.block.x, c.block.y, c.shared, [&] { kernel(partial, raw, groups, p, relu); });
}

bool out_config_ok(const EmuLaunchConfig& c, int H, int W, int chunk, int blocks) {
  return plain_block(c.block, bagcams::kOutThreads, 1) && c.grid.z == 1 && c.grid.x == static_cast<unsigned>(blocks) &&
         static_cast<long long>(chunk) * blocks >= static_cast<long long>(H) * W && c.shared <= kGpuDefaultSmem;
}

void emu_chevron(void (*kernel)(const float*, float*, int, int, int, int, int, int), EmuLaunchConfig c,
                 const float* raw, float* stats, int h, int w, int H, int W, int chunk, int blocks) {
  ++g_launches;
  if (!out_config_ok(c, H, W, chunk, blocks)) {
    fail(cudaErrorInvalidConfiguration);
    return;
  }
  emu_launch(c.grid.x, c.grid.y, c.block.x, c.block.y, c.shared,
             [&] { kernel(raw, stats, h, w, H, W, chunk, blocks); });
}

void emu_chevron(void (*kernel)(const float*, const float*, float*, int, int, int, int, int, int), EmuLaunchConfig c,
                 const float* raw, const float* stats, float* out, int h, int w, int H, int W, int chunk, int blocks) {
  ++g_launches;
  if (!out_config_ok(c, H, W, chunk, blocks)) {
    fail(cudaErrorInvalidConfiguration);
    return;
  }
  emu_launch(c.grid.x, c.grid.y, c.block.x, c.block.y, c.shared,
             [&] { kernel(raw, stats, out, h, w, H, W, chunk, blocks); });
}

}  // namespace emu_capi

using emu_capi::emu_chevron;

#include BAGCAMS_CAPI_SOURCE

namespace emu_capi {

// The 16 partial kernels, by the host handle the .cu passes to cudaLaunchKernel.
struct PartialEntry {
  const void* handle;
  bool smem;
  int stored;
  cudaError_t (*run)(const void* fn, EmuLaunchConfig c, void** args);
};

template <typename T>
cudaError_t run_partial(const void* fn, EmuLaunchConfig c, void** args) {
  using Kernel = void (*)(const T*, const T*, float*, int, int, int, float);
  const Kernel kernel = reinterpret_cast<Kernel>(const_cast<void*>(fn));
  // args point at the .cu's own variables: const void* features/gradients, float* partial, ...
  const T* f = static_cast<const T*>(*static_cast<const void* const*>(args[0]));
  const T* g = static_cast<const T*>(*static_cast<const void* const*>(args[1]));
  float* partial = *static_cast<float* const*>(args[2]);
  const int k = *static_cast<const int*>(args[3]), p = *static_cast<const int*>(args[4]);
  const int cpb = *static_cast<const int*>(args[5]);
  const float scale = *static_cast<const float*>(args[6]);
  if (static_cast<long long>(c.grid.x) * cpb < k) return fail(cudaErrorInvalidConfiguration);
  emu_launch(c.grid.x, c.grid.y, c.block.x, c.block.y, c.shared, [&] { kernel(f, g, partial, k, p, cpb, scale); });
  return cudaSuccess;
}

#define EMU_PARTIAL(NAME, OP, T)                                                                     \
  {reinterpret_cast<const void*>(bagcams_partial_##NAME), true, OP::kStored, run_partial<T>},         \
      {reinterpret_cast<const void*>(bagcams_partial_##NAME##_gmem), false, OP::kStored, run_partial<T>},
const PartialEntry kPartials[] = {
    EMU_PARTIAL(bagcams_f32, bagcams::BagcamsOp, float) EMU_PARTIAL(bagcams_f16, bagcams::BagcamsOp, __half)
    EMU_PARTIAL(gradcam_f32, bagcams::GradcamOp, float) EMU_PARTIAL(gradcam_f16, bagcams::GradcamOp, __half)
    EMU_PARTIAL(gradcampp_f32, bagcams::GradcamppOp, float) EMU_PARTIAL(gradcampp_f16, bagcams::GradcamppOp, __half)
    EMU_PARTIAL(pcs_f32, bagcams::PcsOp, float) EMU_PARTIAL(pcs_f16, bagcams::PcsOp, __half)};
#undef EMU_PARTIAL

const PartialEntry* find_partial(const void* handle) {
  for (const PartialEntry& e : kPartials)
    if (e.handle == handle) return &e;
  return nullptr;
}

}  // namespace emu_capi

// ---- CUDA runtime stand-ins (signatures from cuda_runtime_api.h) ----------------------------

extern "C" cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

extern "C" cudaError_t cudaDeviceGetAttribute(int* value, enum cudaDeviceAttr attr, int device) {
  if (attr != cudaDevAttrMaxSharedMemoryPerBlockOptin || device != 0) return emu_capi::fail(cudaErrorInvalidValue);
  *value = emu_capi::g_optin;
  return cudaSuccess;
}

extern "C" cudaError_t cudaFuncGetAttributes(struct cudaFuncAttributes* attr, const void* func) {
  if (!emu_capi::find_partial(func)) return emu_capi::fail(cudaErrorInvalidDeviceFunction);
  std::memset(attr, 0, sizeof(*attr));
  attr->sharedSizeBytes = static_cast<size_t>(emu_capi::g_static_smem);
  attr->maxThreadsPerBlock = bagcams::kPartialThreads;
  return cudaSuccess;
}

extern "C" cudaError_t cudaFuncSetAttribute(const void* func, enum cudaFuncAttribute attr, int value) {
  const emu_capi::PartialEntry* e = emu_capi::find_partial(func);
  if (!e) return emu_capi::fail(cudaErrorInvalidDeviceFunction);
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 ||
      value + emu_capi::g_static_smem > emu_capi::g_optin)
    return emu_capi::fail(cudaErrorInvalidValue);
  ++emu_capi::g_set_attribute_calls;
  emu_capi::g_raised_kernel = func;
  emu_capi::g_raised_value = value;
  return cudaSuccess;
}

extern "C" cudaError_t cudaLaunchKernel(const void* func, dim3 gridDim, dim3 blockDim, void** args, size_t sharedMem,
                                        cudaStream_t stream) {
  using namespace emu_capi;
  ++g_launches;
  const PartialEntry* e = find_partial(func);
  if (!e) return fail(cudaErrorInvalidDeviceFunction);
  g_partial_smem = e->smem ? 1 : 0;
  g_partial_grid[0] = gridDim.x, g_partial_grid[1] = gridDim.y, g_partial_grid[2] = gridDim.z;
  g_partial_block[0] = blockDim.x, g_partial_block[1] = blockDim.y, g_partial_block[2] = blockDim.z;
  g_partial_dyn = sharedMem;
  if (!plain_block(blockDim, bagcams::kPartialThreads, 1) || gridDim.z != 1 || gridDim.y > 65535)
    return fail(cudaErrorInvalidConfiguration);
  // the GPU's limit: 48 KiB of static + dynamic shared memory unless raised for this kernel
  const size_t limit = g_raised_kernel == func ? static_cast<size_t>(g_raised_value) : kGpuDefaultSmem - g_static_smem;
  if (sharedMem > limit) return fail(cudaErrorInvalidValue);
  const int p = *static_cast<const int*>(args[4]);
  if (e->smem && sharedMem < bagcams::partial_smem_bytes(e->stored, p)) return fail(cudaErrorLaunchOutOfResources);
  return e->run(func, EmuLaunchConfig{gridDim, blockDim, sharedMem, stream}, args);
}

extern "C" cudaError_t cudaGetLastError(void) {
  const cudaError_t e = emu_capi::g_last_error;
  emu_capi::g_last_error = cudaSuccess;
  return e;
}

// ---- test hooks ---------------------------------------------------------------------------------

// Device properties for the next calls; resets the recorded state.
extern "C" void emu_capi_configure(int optin_bytes, int static_smem_bytes) {
  using namespace emu_capi;
  g_optin = optin_bytes;
  g_static_smem = static_smem_bytes;
  g_last_error = cudaSuccess;
  g_set_attribute_calls = 0;
  g_raised_kernel = nullptr;
  g_raised_value = 0;
  g_launches = 0;
  g_partial_smem = -1;
  g_partial_dyn = 0;
  for (int i = 0; i < 3; ++i) g_partial_grid[i] = g_partial_block[i] = 0;
}

// What bagcams_aggregate did since emu_capi_configure: launches, the last partial launch
// (path 1 = shared-memory kernel, 0 = _gmem, -1 = none; grid, block, dynamic shared bytes) and
// cudaFuncSetAttribute (calls, last value).
extern "C" void emu_capi_record(int* launches, int* smem_path, unsigned* grid, unsigned* block, size_t* dyn,
                                int* set_attribute_calls, int* raised_value) {
  using namespace emu_capi;
  *launches = g_launches;
  *smem_path = g_partial_smem;
  for (int i = 0; i < 3; ++i) grid[i] = g_partial_grid[i], block[i] = g_partial_block[i];
  *dyn = g_partial_dyn;
  *set_attribute_calls = g_set_attribute_calls;
  *raised_value = g_raised_value;
}
