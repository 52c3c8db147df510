// bagcams_kernels.cuh -- device code of the fused gradient-map aggregation (BagCAMs, GradCAM,
// GradCAM++, PCS), bilinear upsampling and per-image min-max normalisation.
//
// The formulas are those of bagcams_deploy/methods/aggregation.py (the oracle the tests compare
// against); this file only re-expresses them for the GPU. See bagcams_kernels.h for the host API,
// the memory layout and the launch sequence.
//
// Pipeline (4 launches on one stream, no atomics of any kind, so the result is bitwise
// deterministic for a given shape and device):
//   1. bagcams_partial_<method>_<dtype>[_gmem]  grid (G, N), kPartialThreads threads.
//      Block (g, n) owns the channels [g*cpb, min((g+1)*cpb, K)) of image n. It walks them kWarps
//      at a time: warp j streams channel j of the sub-tile from global memory ONCE, converting it
//      to float32, dividing out gradient_scale, accumulating the per-channel statistic with a warp
//      shuffle reduction and keeping what the later passes need in shared memory. After a block
//      barrier every thread adds the sub-tile's per-position contributions (fixed order, pairwise)
//      into its own positions of the block's accumulator. The block finally writes its partial
//      map partial[n][g][0..P). The "_gmem" variant (h*w too large for shared memory) keeps the
//      accumulator in that partial slice and re-reads F and g from global memory (L2) instead of
//      staging them.
//   2. bagcams_reduce_partials  grid (ceil(P/32), N), block (32, 8): raw[n][p] = act(sum_g
//      partial[n][g][p]) in a fixed order; act = ReLU for the methods that apply it after the
//      channel sum.
//   3. bagcams_minmax  grid (B, N): block b of image n interpolates its chunk of the H*W output
//      and writes (min, max, any-non-finite) of it to stats[n][b].
//   4. bagcams_normalize  grid (B, N): every block combines stats[n][0..B) (same order, so the same
//      result in every block), recomputes the cheap interpolation of its chunk and writes the
//      normalised map once.
#pragma once

#include <cuda_fp16.h>
#include <math_constants.h>

// Declares the block's dynamic shared memory; overridable so that tests can run this code on a
// CPU emulation (kernels/emu/cuda_emu.h).
#ifndef BAGCAMS_DYNAMIC_SMEM
#define BAGCAMS_DYNAMIC_SMEM(TYPE, NAME) extern __shared__ TYPE NAME[]
#endif

namespace bagcams {

// ----------------------------------------------------------------------------------------------
// Launch geometry shared with the host code (bagcams_kernels.cu) and the Python launcher
// (bagcams_deploy/kernels/launcher.py). Change them together.
// ----------------------------------------------------------------------------------------------
constexpr int kWarps = 4;                      // channels per sub-tile = warps per partial block
constexpr int kPartialThreads = kWarps * 32;   // threads of a partial block
template <typename T>
constexpr int kUnroll = sizeof(T) == 2 ? 8 : 4;  // loads in flight per lane and per tensor
constexpr int kReduceX = 32;                   // reduce block: positions
constexpr int kReduceY = 8;                    //               group slices
constexpr int kOutThreads = 256;               // minmax / normalize block

// ----------------------------------------------------------------------------------------------
// Small helpers
// ----------------------------------------------------------------------------------------------
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }

// Streaming load (read once, evict first) for the shared-memory path; read-only cached load for
// the global-memory path, which reads every element several times.
template <bool kStreaming>
__device__ __forceinline__ float load_value(const float* p) {
  return kStreaming ? __ldcs(p) : __ldg(p);
}
template <bool kStreaming>
__device__ __forceinline__ float load_value(const __half* p) {
  const unsigned short* u = reinterpret_cast<const unsigned short*>(p);
  return __half2float(__ushort_as_half(kStreaming ? __ldcs(u) : __ldg(u)));
}

// torch.relu: NaN propagates (fmaxf would turn NaN into 0 and hide a non-finite map).
__device__ __forceinline__ float relu(float x) { return x < 0.0f ? 0.0f : x; }

// Divides the gradient scale out exactly as torch's g / scale. When the scale is a power of two (the
// usual fp16 export choice) the multiplication by its exact reciprocal rounds identically and is
// cheaper than an IEEE division.
struct GradScale {
  float scale, inv;
  bool pow2;
  __device__ __forceinline__ explicit GradScale(float s) : scale(s) {
    // Positive normal power of two 2^(e-127) whose reciprocal 2^(127-e) is normal too.
    const unsigned bits = __float_as_uint(s);
    const unsigned e = (bits >> 23) & 0xffu;
    pow2 = (bits & 0x807fffffu) == 0u && e >= 1u && e <= 253u;
    inv = __uint_as_float((254u - e) << 23);
  }
  __device__ __forceinline__ float operator()(float g) const {
    return pow2 ? __fmul_rn(g, inv) : __fdiv_rn(g, scale);
  }
};

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;  // identical in every lane (IEEE addition is commutative)
}

// ----------------------------------------------------------------------------------------------
// Method traits. Every method is described by:
//   kStored          floats kept per element between the passes (shared-memory stage)
//   kStat            whether a per-channel statistic over the positions is needed
//   kSecond          whether a second per-channel pass (depending on the first statistic) is needed
//   kReluAfterSum    ReLU applied after the channel sum (else inside contrib, before it)
//   prepare(f, g, s) element (feature, true gradient) -> stored values s, returns the stat term
//   second(s, stat)  per-element term of the second statistic
//   weight(stat, stat2, P) per-channel weight
//   contrib(s, w)    per-position contribution of one channel
// Arithmetic uses the _rn intrinsics where torch rounds after every operation so that nvcc does
// not contract it into FMAs (this matters for the exact-zero test of GradCAM++).
// ----------------------------------------------------------------------------------------------

// BagCAMs: t = g*F; a_k = 1 + mean_p t_k; M = sum_k ReLU(a_k t_k).
struct BagcamsOp {
  static constexpr int kStored = 1;
  static constexpr bool kStat = true;
  static constexpr bool kSecond = false;
  static constexpr bool kReluAfterSum = false;
  __device__ __forceinline__ static float prepare(float f, float g, float* s) {
    const float t = __fmul_rn(g, f);
    s[0] = t;
    return t;
  }
  __device__ __forceinline__ static float second(const float*, float) { return 0.0f; }
  __device__ __forceinline__ static float weight(float stat, float, int p) {
    return __fadd_rn(1.0f, __fdiv_rn(stat, static_cast<float>(p)));
  }
  __device__ __forceinline__ static float contrib(const float* s, float w) {
    return relu(__fmul_rn(w, s[0]));
  }
};

// GradCAM: w_k = mean_p g_k; M = ReLU(sum_k w_k F_k).
struct GradcamOp {
  static constexpr int kStored = 1;
  static constexpr bool kStat = true;
  static constexpr bool kSecond = false;
  static constexpr bool kReluAfterSum = true;
  __device__ __forceinline__ static float prepare(float f, float g, float* s) {
    s[0] = f;
    return g;
  }
  __device__ __forceinline__ static float second(const float*, float) { return 0.0f; }
  __device__ __forceinline__ static float weight(float stat, float, int p) {
    return __fdiv_rn(stat, static_cast<float>(p));
  }
  __device__ __forceinline__ static float contrib(const float* s, float w) { return __fmul_rn(w, s[0]); }
};

// GradCAM++: S_k = sum_p F g^3; denom = 2 g^2 + S_k (1 where exactly 0) + 1e-7;
// w_k = sum_p g^2/denom * ReLU(g); M = ReLU(sum_k w_k F_k).
struct GradcamppOp {
  static constexpr int kStored = 2;
  static constexpr bool kStat = true;
  static constexpr bool kSecond = true;
  static constexpr bool kReluAfterSum = true;
  __device__ __forceinline__ static float prepare(float f, float g, float* s) {
    s[0] = f;
    s[1] = g;
    const float g2 = __fmul_rn(g, g);
    return __fmul_rn(f, __fmul_rn(g2, g));
  }
  __device__ __forceinline__ static float second(const float* s, float stat) {
    const float g = s[1];
    const float g2 = __fmul_rn(g, g);
    float denom = __fadd_rn(__fmul_rn(2.0f, g2), stat);
    denom = (denom != 0.0f) ? denom : 1.0f;  // NaN != 0 keeps NaN, as torch.where does
    denom = __fadd_rn(denom, 1e-7f);
    return __fmul_rn(__fdiv_rn(g2, denom), relu(g));
  }
  __device__ __forceinline__ static float weight(float, float stat2, int) { return stat2; }
  __device__ __forceinline__ static float contrib(const float* s, float w) { return __fmul_rn(w, s[0]); }
};

// PCS: M = ReLU(sum_k g_k F_k).
struct PcsOp {
  static constexpr int kStored = 1;
  static constexpr bool kStat = false;
  static constexpr bool kSecond = false;
  static constexpr bool kReluAfterSum = true;
  __device__ __forceinline__ static float prepare(float f, float g, float* s) {
    s[0] = __fmul_rn(g, f);
    return 0.0f;
  }
  __device__ __forceinline__ static float second(const float*, float) { return 0.0f; }
  __device__ __forceinline__ static float weight(float, float, int) { return 1.0f; }
  __device__ __forceinline__ static float contrib(const float* s, float) { return s[0]; }
};

// Bytes of dynamic shared memory of the shared-memory partial kernel (accumulator + stage).
__host__ __device__ constexpr unsigned long long partial_smem_bytes(int stored, long long p) {
  return static_cast<unsigned long long>(p) * (1ull + static_cast<unsigned long long>(kWarps * stored)) *
         sizeof(float);
}

// Pairwise sum of the kWarps contributions of one sub-tile (kWarps is a power of two).
template <int kN>
__device__ __forceinline__ float tree_sum(const float* c) {
  if constexpr (kN == 1) {
    return c[0];
  } else {
    return __fadd_rn(tree_sum<kN / 2>(c), tree_sum<kN / 2>(c + kN / 2));
  }
}

// ----------------------------------------------------------------------------------------------
// 1. Per-(image, channel group) partial maps
// ----------------------------------------------------------------------------------------------
template <class Op, typename T, bool kSmem>
__device__ __forceinline__ void partial_body(const T* __restrict__ features, const T* __restrict__ gradients,
                                             float* __restrict__ partial, int k_total, int p_total,
                                             int channels_per_block, float gradient_scale) {
  BAGCAMS_DYNAMIC_SMEM(float4, bagcams_dyn_smem);  // float4: 16-byte alignment
  __shared__ float coef[kWarps];
  float* smem = reinterpret_cast<float*>(bagcams_dyn_smem);

  const int n = blockIdx.y;
  const int group = blockIdx.x;
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int k_begin = group * channels_per_block;
  const int k_end = min(k_begin + channels_per_block, k_total);
  const int P = p_total;
  const size_t image_base = static_cast<size_t>(n) * static_cast<size_t>(k_total);
  const GradScale unscale(gradient_scale);
  constexpr int U = kUnroll<T>;

  float* out = partial + (static_cast<size_t>(n) * gridDim.x + group) * static_cast<size_t>(P);
  float* acc = kSmem ? smem : out;   // thread t owns positions t, t + kPartialThreads, ...
  float* stage = smem + P;           // [kWarps][Op::kStored][P], shared-memory path only

  for (int p = threadIdx.x; p < P; p += kPartialThreads) acc[p] = 0.0f;

  for (int kb = k_begin; kb < k_end; kb += kWarps) {
    const int k = kb + warp;
    if (k < k_end) {  // warp-uniform: one warp per channel of the sub-tile
      const T* f_k = features + (image_base + k) * static_cast<size_t>(P);
      const T* g_k = gradients + (image_base + k) * static_cast<size_t>(P);
      float* st = stage + warp * Op::kStored * P;

      // Pass 1: the only read of this channel from global memory on the shared-memory path.
      float stat = 0.0f;
      for (int base = 0; base < P; base += 32 * U) {
        float fv[U], gv[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const int p = base + u * 32 + lane;
          fv[u] = 0.0f;
          gv[u] = 0.0f;
          if (p < P) {
            fv[u] = load_value<kSmem>(f_k + p);
            gv[u] = load_value<kSmem>(g_k + p);
          }
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const int p = base + u * 32 + lane;
          if (p < P) {
            float s[Op::kStored];
            const float term = Op::prepare(fv[u], unscale(gv[u]), s);
            if (Op::kStat) stat = __fadd_rn(stat, term);
            if (kSmem) {
#pragma unroll
              for (int i = 0; i < Op::kStored; ++i) st[i * P + p] = s[i];
            }
          }
        }
      }
      if (Op::kStat) stat = warp_sum(stat);

      // Pass 2 (GradCAM++ only): reads the stage (or L2 on the fallback path).
      float stat2 = 0.0f;
      if (Op::kSecond) {
        for (int p = lane; p < P; p += 32) {
          float s[Op::kStored];
          if (kSmem) {
#pragma unroll
            for (int i = 0; i < Op::kStored; ++i) s[i] = st[i * P + p];
          } else {
            Op::prepare(load_value<false>(f_k + p), unscale(load_value<false>(g_k + p)), s);
          }
          stat2 = __fadd_rn(stat2, Op::second(s, stat));
        }
        stat2 = warp_sum(stat2);
      }
      if (lane == 0) coef[warp] = Op::weight(stat, stat2, P);
    }
    __syncthreads();  // stage and coef of the sub-tile are complete

    const int nk = min(kWarps, k_end - kb);
    for (int p = threadIdx.x; p < P; p += kPartialThreads) {
      float c[kWarps];
#pragma unroll
      for (int j = 0; j < kWarps; ++j) {
        c[j] = 0.0f;
        if (j < nk) {
          float s[Op::kStored];
          if (kSmem) {
#pragma unroll
            for (int i = 0; i < Op::kStored; ++i) s[i] = stage[(j * Op::kStored + i) * P + p];
          } else {
            const size_t off = (image_base + kb + j) * static_cast<size_t>(P) + p;
            Op::prepare(load_value<false>(features + off),
                        unscale(load_value<false>(gradients + off)), s);
          }
          c[j] = Op::contrib(s, coef[j]);
        }
      }
      acc[p] = __fadd_rn(acc[p], tree_sum<kWarps>(c));
    }
    __syncthreads();  // the next sub-tile overwrites stage and coef
  }

  if (kSmem) {
    for (int p = threadIdx.x; p < P; p += kPartialThreads) out[p] = acc[p];
  }
}

// ----------------------------------------------------------------------------------------------
// Bilinear sampling, exactly as torch F.interpolate(mode="bilinear", align_corners=False) with an
// explicit output size: scale = in/out (float), src = scale*(dst+0.5)-0.5 clamped at 0 below,
// i0 = min(floor(src), in-1), i1 = i0 + (i0 < in-1), lambda1 = clamp(src - i0, 0, 1); equal sizes
// copy (i1 = i0, lambda1 = 0).
// ----------------------------------------------------------------------------------------------
struct Tap {
  int i0, i1;
  float l0, l1;
};

__device__ __forceinline__ Tap source_tap(int dst, int in_size, int out_size, float scale) {
  Tap t;
  if (in_size == out_size) {
    t.i0 = dst;
    t.i1 = dst;
    t.l0 = 1.0f;
    t.l1 = 0.0f;
    return t;
  }
  float src = __fsub_rn(__fmul_rn(scale, __fadd_rn(static_cast<float>(dst), 0.5f)), 0.5f);
  if (src < 0.0f) src = 0.0f;
  t.i0 = min(static_cast<int>(floorf(src)), in_size - 1);
  t.i1 = t.i0 + ((t.i0 < in_size - 1) ? 1 : 0);
  t.l1 = fminf(fmaxf(__fsub_rn(src, static_cast<float>(t.i0)), 0.0f), 1.0f);
  t.l0 = __fsub_rn(1.0f, t.l1);
  return t;
}

__device__ __forceinline__ float sample_bilinear(const float* __restrict__ raw, int h, int w, int H, int W,
                                                 float scale_h, float scale_w, int o) {
  const int oy = o / W;
  const int ox = o - oy * W;
  const Tap ty = source_tap(oy, h, H, scale_h);
  const Tap tx = source_tap(ox, w, W, scale_w);
  const float* r0 = raw + static_cast<size_t>(ty.i0) * w;
  const float* r1 = raw + static_cast<size_t>(ty.i1) * w;
  const float top = r0[tx.i0] * tx.l0 + r0[tx.i1] * tx.l1;
  const float bottom = r1[tx.i0] * tx.l0 + r1[tx.i1] * tx.l1;
  return top * ty.l0 + bottom * ty.l1;
}

}  // namespace bagcams

// ================================================================================================
// extern "C" entry points (stable names for PyCUDA's Module.get_function and for cuModuleGetFunction)
// ================================================================================================

#define BAGCAMS_DEFINE_PARTIAL(NAME, OP, T)                                                               \
  extern "C" __global__ void __launch_bounds__(bagcams::kPartialThreads)                                  \
      bagcams_partial_##NAME(const T* __restrict__ features, const T* __restrict__ gradients,             \
                             float* __restrict__ partial, int k, int p, int channels_per_block,          \
                             float gradient_scale) {                                                      \
    bagcams::partial_body<OP, T, true>(features, gradients, partial, k, p, channels_per_block,           \
                                       gradient_scale);                                                   \
  }                                                                                                       \
  extern "C" __global__ void __launch_bounds__(bagcams::kPartialThreads)                                  \
      bagcams_partial_##NAME##_gmem(const T* __restrict__ features, const T* __restrict__ gradients,      \
                                    float* __restrict__ partial, int k, int p, int channels_per_block,   \
                                    float gradient_scale) {                                               \
    bagcams::partial_body<OP, T, false>(features, gradients, partial, k, p, channels_per_block,          \
                                        gradient_scale);                                                  \
  }

BAGCAMS_DEFINE_PARTIAL(bagcams_f32, bagcams::BagcamsOp, float)
BAGCAMS_DEFINE_PARTIAL(bagcams_f16, bagcams::BagcamsOp, __half)
BAGCAMS_DEFINE_PARTIAL(gradcam_f32, bagcams::GradcamOp, float)
BAGCAMS_DEFINE_PARTIAL(gradcam_f16, bagcams::GradcamOp, __half)
BAGCAMS_DEFINE_PARTIAL(gradcampp_f32, bagcams::GradcamppOp, float)
BAGCAMS_DEFINE_PARTIAL(gradcampp_f16, bagcams::GradcamppOp, __half)
BAGCAMS_DEFINE_PARTIAL(pcs_f32, bagcams::PcsOp, float)
BAGCAMS_DEFINE_PARTIAL(pcs_f16, bagcams::PcsOp, __half)

#undef BAGCAMS_DEFINE_PARTIAL

// raw[n][p] = act(sum_g partial[n][g][p]); grid (ceil(P/32), N), block (32, 8).
extern "C" __global__ void __launch_bounds__(bagcams::kReduceX * bagcams::kReduceY)
    bagcams_reduce_partials(const float* __restrict__ partial, float* __restrict__ raw, int groups, int p_total,
                            int relu_after_sum) {
  __shared__ float red[bagcams::kReduceY][bagcams::kReduceX + 1];
  const int tx = threadIdx.x;
  const int ty = threadIdx.y;
  const int n = blockIdx.y;
  const int p = blockIdx.x * bagcams::kReduceX + tx;
  float s = 0.0f;
  if (p < p_total) {
    const float* src = partial + static_cast<size_t>(n) * groups * static_cast<size_t>(p_total) + p;
#pragma unroll 4
    for (int g = ty; g < groups; g += bagcams::kReduceY) s = __fadd_rn(s, src[static_cast<size_t>(g) * p_total]);
  }
  red[ty][tx] = s;
  __syncthreads();
  if (ty == 0 && p < p_total) {
    float c[bagcams::kReduceY];
#pragma unroll
    for (int j = 0; j < bagcams::kReduceY; ++j) c[j] = red[j][tx];
    float v = bagcams::tree_sum<bagcams::kReduceY>(c);
    if (relu_after_sum) v = bagcams::relu(v);
    raw[static_cast<size_t>(n) * p_total + p] = v;
  }
}

// stats[n][b] = (min, max over the finite values, 1 if any value is non-finite) of the upsampled
// chunk [b*chunk, min((b+1)*chunk, H*W)) of image n; grid (blocks, N), block kOutThreads.
extern "C" __global__ void __launch_bounds__(bagcams::kOutThreads)
    bagcams_minmax(const float* __restrict__ raw, float* __restrict__ stats, int h, int w, int H, int W, int chunk,
                   int blocks) {
  __shared__ float s_lo[bagcams::kOutThreads / 32];
  __shared__ float s_hi[bagcams::kOutThreads / 32];
  __shared__ int s_bad[bagcams::kOutThreads / 32];
  const int n = blockIdx.y;
  const int b = blockIdx.x;
  const int total = H * W;
  const int begin = b * chunk;
  const int end = min(begin + chunk, total);
  const float* r = raw + static_cast<size_t>(n) * h * w;
  const float scale_h = __fdiv_rn(static_cast<float>(h), static_cast<float>(H));
  const float scale_w = __fdiv_rn(static_cast<float>(w), static_cast<float>(W));

  float lo = CUDART_INF_F;
  float hi = -CUDART_INF_F;
  int bad = 0;
  for (int o = begin + threadIdx.x; o < end; o += bagcams::kOutThreads) {
    const float v = bagcams::sample_bilinear(r, h, w, H, W, scale_h, scale_w, o);
    if (isfinite(v)) {
      lo = fminf(lo, v);
      hi = fmaxf(hi, v);
    } else {
      bad = 1;
    }
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    lo = fminf(lo, __shfl_xor_sync(0xffffffffu, lo, off));
    hi = fmaxf(hi, __shfl_xor_sync(0xffffffffu, hi, off));
    bad |= __shfl_xor_sync(0xffffffffu, bad, off);
  }
  const int warp = threadIdx.x >> 5;
  if ((threadIdx.x & 31) == 0) {
    s_lo[warp] = lo;
    s_hi[warp] = hi;
    s_bad[warp] = bad;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int j = 1; j < bagcams::kOutThreads / 32; ++j) {
      lo = fminf(lo, s_lo[j]);
      hi = fmaxf(hi, s_hi[j]);
      bad |= s_bad[j];
    }
    float* st = stats + (static_cast<size_t>(n) * blocks + b) * 3;
    st[0] = lo;
    st[1] = hi;
    st[2] = bad ? 1.0f : 0.0f;
  }
}

// out[n][o] = (v - min) / (max - min) for the upsampled value v, or 0 for the whole image when the
// map is constant or has a non-finite value; grid (blocks, N), block kOutThreads.
extern "C" __global__ void __launch_bounds__(bagcams::kOutThreads)
    bagcams_normalize(const float* __restrict__ raw, const float* __restrict__ stats, float* __restrict__ out,
                      int h, int w, int H, int W, int chunk, int blocks) {
  __shared__ float s_lo, s_rng;
  __shared__ int s_ok;
  const int n = blockIdx.y;
  const int b = blockIdx.x;
  if (threadIdx.x < 32) {
    float lo = CUDART_INF_F;
    float hi = -CUDART_INF_F;
    int bad = 0;
    const float* st = stats + static_cast<size_t>(n) * blocks * 3;
    for (int j = threadIdx.x; j < blocks; j += 32) {
      lo = fminf(lo, st[j * 3 + 0]);
      hi = fmaxf(hi, st[j * 3 + 1]);
      bad |= (st[j * 3 + 2] != 0.0f) ? 1 : 0;
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      lo = fminf(lo, __shfl_xor_sync(0xffffffffu, lo, off));
      hi = fmaxf(hi, __shfl_xor_sync(0xffffffffu, hi, off));
      bad |= __shfl_xor_sync(0xffffffffu, bad, off);
    }
    if (threadIdx.x == 0) {
      const float rng = __fsub_rn(hi, lo);
      s_lo = lo;
      s_rng = rng;
      s_ok = (!bad && rng > 0.0f) ? 1 : 0;  // rng > 0 is false for NaN and for an all-empty map
    }
  }
  __syncthreads();
  const float lo = s_lo;
  const float rng = s_rng;
  const int ok = s_ok;
  const int total = H * W;
  const int begin = b * chunk;
  const int end = min(begin + chunk, total);
  const float* r = raw + static_cast<size_t>(n) * h * w;
  float* o_img = out + static_cast<size_t>(n) * total;
  const float scale_h = __fdiv_rn(static_cast<float>(h), static_cast<float>(H));
  const float scale_w = __fdiv_rn(static_cast<float>(w), static_cast<float>(W));
  for (int o = begin + threadIdx.x; o < end; o += bagcams::kOutThreads) {
    float v = 0.0f;
    if (ok) v = __fdiv_rn(__fsub_rn(bagcams::sample_bilinear(r, h, w, H, W, scale_h, scale_w, o), lo), rng);
    o_img[o] = v;
  }
}
