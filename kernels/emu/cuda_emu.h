// cuda_emu.h -- a tiny CPU emulation of the CUDA features bagcams_kernels.cuh uses, so that the
// device code can be executed and checked against the torch oracle on machines without a GPU
// (tests/test_kernels.py). One std::thread per CUDA thread, blocks run one after the other:
//   __syncthreads      std::barrier over the block
//   __shfl_xor_sync    per-warp exchange slots + std::barrier over the warp (full mask only)
//   __shared__         function-scope statics (blocks are sequential, so one copy suffices)
//   dynamic smem       BAGCAMS_DYNAMIC_SMEM hook -> a per-launch buffer
//   __ldg/__ldcs, *_rn intrinsics: plain loads and correctly rounded float ops (build with
//   -ffp-contract=off so that the host compiler does not fuse them either).
// It checks logic (indexing, barriers, reductions, numerics), not performance or memory model.
#pragma once

#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <type_traits>
#include <thread>
#include <vector>

#include <cuda_fp16.h>
#include <vector_types.h>

struct EmuIdx {
  unsigned x = 0, y = 0, z = 0;
};
inline thread_local EmuIdx threadIdx;
inline thread_local EmuIdx blockIdx;
inline EmuIdx gridDim;
inline EmuIdx blockDim;

inline float __uint_as_float(unsigned v) {
  float f;
  std::memcpy(&f, &v, 4);
  return f;
}
inline unsigned __float_as_uint(float f) {
  unsigned v;
  std::memcpy(&v, &f, 4);
  return v;
}
inline float __int_as_float(unsigned v) {
  float f;
  std::memcpy(&f, &v, 4);
  return f;
}

#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __launch_bounds__
#undef __shared__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(x)
#define __restrict__ __restrict
#define __shared__ static

#include <math_constants.h>

inline float* g_emu_dyn_smem = nullptr;
#define BAGCAMS_DYNAMIC_SMEM(TYPE, NAME) TYPE* NAME = reinterpret_cast<TYPE*>(g_emu_dyn_smem)

inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
using std::isfinite;

inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }

template <typename T>
inline T __ldg(const T* p) { return *p; }
template <typename T>
inline T __ldcs(const T* p) { return *p; }

struct EmuBlockSync {
  std::barrier<>* block = nullptr;
  std::vector<std::barrier<>*> warps;
  std::vector<float>* fslots = nullptr;
  std::vector<int>* islots = nullptr;
};
inline thread_local EmuBlockSync g_emu_sync;

inline void __syncthreads() { g_emu_sync.block->arrive_and_wait(); }

template <typename T>
inline T emu_shfl_xor(T v, int off) {
  const unsigned t = threadIdx.x + threadIdx.y * blockDim.x;
  const unsigned warp = t / 32, lane = t % 32;
  std::barrier<>* wb = g_emu_sync.warps[warp];
  T out;
  if constexpr (sizeof(T) == sizeof(float) && std::is_floating_point_v<T>) {
    auto& slots = *g_emu_sync.fslots;
    slots[t] = v;
    wb->arrive_and_wait();
    out = slots[warp * 32 + (lane ^ off)];
  } else {
    auto& slots = *g_emu_sync.islots;
    slots[t] = v;
    wb->arrive_and_wait();
    out = slots[warp * 32 + (lane ^ off)];
  }
  wb->arrive_and_wait();
  return out;
}
inline float __shfl_xor_sync(unsigned, float v, int off) { return emu_shfl_xor<float>(v, off); }
inline int __shfl_xor_sync(unsigned, int v, int off) { return emu_shfl_xor<int>(v, off); }

// Run fn over a (gx, gy) grid of (bx, by) blocks, with `smem_bytes` of dynamic shared memory.
inline void emu_launch(unsigned gx, unsigned gy, unsigned bx, unsigned by, size_t smem_bytes,
                       const std::function<void()>& fn) {
  gridDim = {gx, gy, 1};
  blockDim = {bx, by, 1};
  const unsigned nthreads = bx * by;
  for (unsigned y = 0; y < gy; ++y) {
    for (unsigned x = 0; x < gx; ++x) {
      // Fresh NaN-poisoned dynamic shared memory per block: a read before a write shows up.
      std::vector<float> dyn((smem_bytes + 3) / 4 + 4, std::nanf(""));
      g_emu_dyn_smem = dyn.data();
      std::barrier<> block(nthreads);
      std::vector<std::barrier<>*> warps;
      std::vector<std::unique_ptr<std::barrier<>>> owned;
      for (unsigned w = 0; w < (nthreads + 31) / 32; ++w) {
        owned.emplace_back(new std::barrier<>(std::min(32u, nthreads - 32 * w)));
        warps.push_back(owned.back().get());
      }
      std::vector<float> fslots(nthreads);
      std::vector<int> islots(nthreads);
      std::vector<std::thread> threads;
      threads.reserve(nthreads);
      for (unsigned t = 0; t < nthreads; ++t) {
        threads.emplace_back([&, t, x, y] {
          threadIdx = {t % bx, t / bx, 0};
          blockIdx = {x, y, 0};
          g_emu_sync.block = &block;
          g_emu_sync.warps = warps;
          g_emu_sync.fslots = &fslots;
          g_emu_sync.islots = &islots;
          fn();
        });
      }
      for (auto& th : threads) th.join();
    }
  }
}
