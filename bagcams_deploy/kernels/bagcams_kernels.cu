// bagcams_kernels.cu -- host launch functions of the fused aggregation (see bagcams_kernels.h) and,
// through bagcams_kernels.cuh, the device code that build.sh compiles into the shipped fatbin.
//
// The launch plan (channel groups, output chunks, workspace layout, shared-memory path) is
// mirrored by bagcams_deploy/kernels/launcher.py: change both together.
#include "bagcams_kernels.h"

#include "bagcams_kernels.cuh"

#include <math.h>

namespace {

using namespace bagcams;

constexpr long long kTargetPartialBlocks = 1024;  // K1 blocks aimed at (shape-only => reproducible)
constexpr long long kMaxPartialFloats = 1LL << 24; // cap of the partial maps (64 MiB) for huge h*w
constexpr long long kOutPerBlock = 2048;          // outputs per minmax/normalize block
constexpr long long kMaxOutBlocks = 1024;
constexpr size_t kAlign = 256;
constexpr size_t kDefaultSmem = 48 * 1024;
constexpr size_t kStaticSmemBound = 256;  // >= the partial kernels' static shared memory (coef[kWarps])

size_t round_up(size_t v, size_t a) { return (v + a - 1) / a * a; }
long long ceil_div(long long a, long long b) { return (a + b - 1) / b; }

struct Plan {
  int groups, cpb, blocks, chunk;
  size_t partial_off, raw_off, stats_off, bytes;
};

bool make_plan(int n, int k, int h, int w, int H, int W, Plan* plan) {
  if (n <= 0 || k <= 0 || h <= 0 || w <= 0 || H <= 0 || W <= 0 || n > 65535) return false;
  const long long P = static_cast<long long>(h) * w;
  const long long HW = static_cast<long long>(H) * W;
  if (P > 0x7fffffffLL || HW > 0x7fffffffLL) return false;
  long long want = ceil_div(kTargetPartialBlocks, n);
  const long long max_groups = kMaxPartialFloats / (static_cast<long long>(n) * P);
  if (want > max_groups) want = max_groups > 1 ? max_groups : 1;
  long long cpb = ceil_div(k, want);
  cpb = ceil_div(cpb, kWarps) * kWarps;
  plan->cpb = static_cast<int>(cpb);
  plan->groups = static_cast<int>(ceil_div(k, cpb));
  long long blocks = ceil_div(HW, kOutPerBlock);
  if (blocks > kMaxOutBlocks) blocks = kMaxOutBlocks;
  plan->blocks = static_cast<int>(blocks);
  plan->chunk = static_cast<int>(ceil_div(HW, blocks));
  const size_t partial = static_cast<size_t>(n) * plan->groups * P * sizeof(float);
  const size_t raw = static_cast<size_t>(n) * P * sizeof(float);
  const size_t stats = static_cast<size_t>(n) * plan->blocks * 3 * sizeof(float);
  plan->partial_off = 0;
  plan->raw_off = round_up(partial, kAlign);
  plan->stats_off = plan->raw_off + round_up(raw, kAlign);
  plan->bytes = plan->stats_off + round_up(stats, kAlign);
  return true;
}

// Host handle of a __global__ partial kernel, launched through cudaLaunchKernel.
typedef const void* PartialKernel;

template <typename T>
PartialKernel as_generic(void (*f)(const T*, const T*, float*, int, int, int, float)) {
  return reinterpret_cast<const void*>(f);
}

struct MethodKernels {
  PartialKernel smem, gmem;
  int stored;
  bool relu_after_sum;
};

bool pick(bagcams_method method, bagcams_dtype dtype, MethodKernels* mk) {
  const bool f16 = dtype == BAGCAMS_DTYPE_FLOAT16;
  if (dtype != BAGCAMS_DTYPE_FLOAT16 && dtype != BAGCAMS_DTYPE_FLOAT32) return false;
#define BAGCAMS_PICK(M, OP)                                                                       \
  mk->smem = f16 ? as_generic(bagcams_partial_##M##_f16) : as_generic(bagcams_partial_##M##_f32);    \
  mk->gmem = f16 ? as_generic(bagcams_partial_##M##_f16_gmem) : as_generic(bagcams_partial_##M##_f32_gmem); \
  mk->stored = OP::kStored;                                                                       \
  mk->relu_after_sum = OP::kReluAfterSum;                                                         \
  return true;
  switch (method) {
    case BAGCAMS_METHOD_BAGCAMS: BAGCAMS_PICK(bagcams, BagcamsOp)
    case BAGCAMS_METHOD_GRADCAM: BAGCAMS_PICK(gradcam, GradcamOp)
    case BAGCAMS_METHOD_GRADCAMPP: BAGCAMS_PICK(gradcampp, GradcamppOp)
    case BAGCAMS_METHOD_PCS: BAGCAMS_PICK(pcs, PcsOp)
    default: return false;
  }
#undef BAGCAMS_PICK
}

}  // namespace

extern "C" size_t bagcams_workspace_size(int n, int k, int h, int w, int out_h, int out_w) {
  Plan plan;
  return make_plan(n, k, h, w, out_h, out_w, &plan) ? plan.bytes : 0;
}

extern "C" cudaError_t bagcams_aggregate(bagcams_method method, bagcams_dtype dtype, const void* features,
                                         const void* gradients, float* out, int n, int k, int h, int w,
                                         int out_h, int out_w, float gradient_scale, void* workspace,
                                         size_t workspace_bytes, cudaStream_t stream) {
  Plan plan;
  MethodKernels mk;
  if (!make_plan(n, k, h, w, out_h, out_w, &plan) || !pick(method, dtype, &mk)) return cudaErrorInvalidValue;
  if (!features || !gradients || !out || !workspace || workspace_bytes < plan.bytes) return cudaErrorInvalidValue;
  if (!(gradient_scale > 0.0f) || !isfinite(gradient_scale)) return cudaErrorInvalidValue;

  char* ws = static_cast<char*>(workspace);
  float* partial = reinterpret_cast<float*>(ws + plan.partial_off);
  float* raw = reinterpret_cast<float*>(ws + plan.raw_off);
  float* stats = reinterpret_cast<float*>(ws + plan.stats_off);
  const int P = h * w;

  // 1. partial maps: shared-memory path when the stage fits (opt-in above 48 KiB), else the
  //    global-memory fallback.
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  int optin = 0;
  err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err != cudaSuccess) return err;
  const unsigned long long smem = partial_smem_bytes(mk.stored, P);
  PartialKernel kernel = mk.gmem;
  size_t dyn = 0;
  if (smem + kStaticSmemBound <= kDefaultSmem) {
    kernel = mk.smem;
    dyn = static_cast<size_t>(smem);
  } else {
    cudaFuncAttributes attr;
    err = cudaFuncGetAttributes(&attr, mk.smem);
    if (err != cudaSuccess) return err;
    if (smem + attr.sharedSizeBytes <= static_cast<unsigned long long>(optin)) {
      // Raise the per-kernel limit to the device maximum (idempotent, safe with concurrent callers).
      err = cudaFuncSetAttribute(mk.smem, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 optin - static_cast<int>(attr.sharedSizeBytes));
      if (err != cudaSuccess) return err;
      kernel = mk.smem;
      dyn = static_cast<size_t>(smem);
    }
  }
  {
    int k_arg = k, p_arg = P, cpb_arg = plan.cpb;
    float scale_arg = gradient_scale;
    void* args[] = {&features, &gradients, &partial, &k_arg, &p_arg,
                    &cpb_arg, &scale_arg};
    err = cudaLaunchKernel(kernel, dim3(plan.groups, n), dim3(kPartialThreads), args, dyn, stream);
    if (err != cudaSuccess) return err;
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
  }

  // 2. channel-group reduction + activation.
  bagcams_reduce_partials<<<dim3(static_cast<unsigned>(ceil_div(P, kReduceX)), n), dim3(kReduceX, kReduceY), 0,
                            stream>>>(partial, raw, plan.groups, P, mk.relu_after_sum ? 1 : 0);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;

  // 3. per-chunk min / max / non-finite flag of the upsampled map.
  bagcams_minmax<<<dim3(plan.blocks, n), kOutThreads, 0, stream>>>(raw, stats, h, w, out_h, out_w, plan.chunk,
                                                                   plan.blocks);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;

  // 4. normalised output, interpolation recomputed.
  bagcams_normalize<<<dim3(plan.blocks, n), kOutThreads, 0, stream>>>(raw, stats, out, h, w, out_h, out_w,
                                                                      plan.chunk, plan.blocks);
  return cudaGetLastError();
}

#define BAGCAMS_DEFINE_TYPED(NAME, T, METHOD, DTYPE)                                                         \
  extern "C" cudaError_t bagcams_aggregate_##NAME(const T* features, const T* gradients, float* out, int n,   \
                                                  int k, int h, int w, int out_h, int out_w,                  \
                                                  float gradient_scale, void* workspace,                      \
                                                  size_t workspace_bytes, cudaStream_t stream) {              \
    return bagcams_aggregate(METHOD, DTYPE, features, gradients, out, n, k, h, w, out_h, out_w, gradient_scale, \
                             workspace, workspace_bytes, stream);                                             \
  }
BAGCAMS_DEFINE_TYPED(bagcams_f32, float, BAGCAMS_METHOD_BAGCAMS, BAGCAMS_DTYPE_FLOAT32)
BAGCAMS_DEFINE_TYPED(gradcam_f32, float, BAGCAMS_METHOD_GRADCAM, BAGCAMS_DTYPE_FLOAT32)
BAGCAMS_DEFINE_TYPED(gradcampp_f32, float, BAGCAMS_METHOD_GRADCAMPP, BAGCAMS_DTYPE_FLOAT32)
BAGCAMS_DEFINE_TYPED(pcs_f32, float, BAGCAMS_METHOD_PCS, BAGCAMS_DTYPE_FLOAT32)
BAGCAMS_DEFINE_TYPED(bagcams_f16, void, BAGCAMS_METHOD_BAGCAMS, BAGCAMS_DTYPE_FLOAT16)
BAGCAMS_DEFINE_TYPED(gradcam_f16, void, BAGCAMS_METHOD_GRADCAM, BAGCAMS_DTYPE_FLOAT16)
BAGCAMS_DEFINE_TYPED(gradcampp_f16, void, BAGCAMS_METHOD_GRADCAMPP, BAGCAMS_DTYPE_FLOAT16)
BAGCAMS_DEFINE_TYPED(pcs_f16, void, BAGCAMS_METHOD_PCS, BAGCAMS_DTYPE_FLOAT16)
#undef BAGCAMS_DEFINE_TYPED
