/* bagcams_kernels.h -- C API of the fused CUDA aggregation of gradient-based localisation maps.
 *
 * Turns the `features` F and `gradients` g of a target layer (the two outputs of the exported ONNX
 * graph / TensorRT engine) into the normalised localisation map of BagCAMs, GradCAM, GradCAM++ or
 * PCS, on the caller's stream, reading F and g in place. The formulas are those of
 * bagcams_deploy/methods/aggregation.py:
 *   BagCAMs    t = g*F; a_k = 1 + mean_p t_k(p); M(p) = sum_k ReLU(a_k t_k(p))
 *   GradCAM    w_k = mean_p g_k; M = ReLU(sum_k w_k F_k)
 *   GradCAM++  S_k = sum_p F_k g_k^3; denom = 2 g^2 + S_k (1 where exactly 0) + 1e-7;
 *              w_k = sum_p g^2/denom * ReLU(g); M = ReLU(sum_k w_k F_k)
 *   PCS        M = ReLU(sum_k g_k F_k)
 * then bilinear upsampling h x w -> H x W exactly as torch F.interpolate(mode="bilinear",
 * align_corners=False) and per-image min-max normalisation to [0, 1]; a constant map, or one with
 * any non-finite value, becomes all zeros.
 *
 * Memory layout (device memory, C-contiguous, no padding):
 *   features, gradients  [N, K, h, w]  float32 or float16 (IEEE binary16, __half), same dtype
 *   out                  [N, 1, H, W]  float32, values in [0, 1]
 *   workspace            bagcams_workspace_size(N, K, h, w, H, W) bytes, 256-byte aligned,
 *                        contents undefined on entry and exit; one workspace per concurrently
 *                        running stream.
 * gradient_scale: the gradients given are the true gradients times this factor (fp16 exports
 * scale them up against underflow); the kernel divides it out first. Pass 1.0f when unscaled.
 *
 * Accumulation is float32 whatever the input dtype. No atomics are used: for a given shape,
 * dtype and device the result is bitwise reproducible.
 *
 * Building: compile bagcams_kernels.cu with nvcc into your application or a static library
 * (it includes bagcams_kernels.cuh) and include this header; link with the CUDA runtime.
 * The same device code is shipped prebuilt in bagcams_deploy/kernels/bagcams_kernels.fatbin for
 * the driver API (cuModuleLoad + cuModuleGetFunction) with the __global__ entry points:
 *   bagcams_partial_<m>_<t>[_gmem](const T* F, const T* g, float* partial, int K, int P,
 *                                  int channels_per_block, float gradient_scale)
 *       m in {bagcams, gradcam, gradcampp, pcs}, t in {f32, f16}; grid (G, N), 128 threads,
 *       dynamic shared memory bagcams partial_smem_bytes for the plain variant, 0 for _gmem.
 *   bagcams_reduce_partials(const float* partial, float* raw, int G, int P, int relu_after_sum)
 *       grid (ceil(P/32), N), block (32, 8).
 *   bagcams_minmax(const float* raw, float* stats, int h, int w, int H, int W, int chunk, int B)
 *       grid (B, N), 256 threads.
 *   bagcams_normalize(const float* raw, const float* stats, float* out, int h, int w, int H, int W,
 *                     int chunk, int B)
 *       grid (B, N), 256 threads.
 * bagcams_aggregate below performs exactly this sequence; use it rather than the raw kernels.
 */
#ifndef BAGCAMS_KERNELS_H_
#define BAGCAMS_KERNELS_H_

#include <stddef.h>

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum bagcams_method {
  BAGCAMS_METHOD_BAGCAMS = 0,
  BAGCAMS_METHOD_GRADCAM = 1,
  BAGCAMS_METHOD_GRADCAMPP = 2,
  BAGCAMS_METHOD_PCS = 3
} bagcams_method;

typedef enum bagcams_dtype {
  BAGCAMS_DTYPE_FLOAT32 = 0,
  BAGCAMS_DTYPE_FLOAT16 = 1
} bagcams_dtype;

/* Bytes of device workspace that bagcams_aggregate needs for this shape (0 for invalid dims). */
size_t bagcams_workspace_size(int n, int k, int h, int w, int out_h, int out_w);

/* Enqueue the whole map computation on `stream` (asynchronous; nothing is synchronised).
 * Returns cudaErrorInvalidValue for bad arguments (a dim <= 0, N > 65535, null pointers, a
 * workspace smaller than bagcams_workspace_size, gradient_scale not finite and > 0, unknown
 * method or dtype), otherwise the result of cudaGetLastError() after each launch (the first
 * failure is returned and nothing more is enqueued). */
cudaError_t bagcams_aggregate(bagcams_method method, bagcams_dtype dtype, const void* features,
                              const void* gradients, float* out, int n, int k, int h, int w, int out_h,
                              int out_w, float gradient_scale, void* workspace, size_t workspace_bytes,
                              cudaStream_t stream);

/* Typed conveniences: bagcams_aggregate with the method and dtype fixed. */
#define BAGCAMS_DECLARE_TYPED(NAME, T)                                                                 \
  cudaError_t bagcams_aggregate_##NAME(const T* features, const T* gradients, float* out, int n, int k, \
                                       int h, int w, int out_h, int out_w, float gradient_scale,        \
                                       void* workspace, size_t workspace_bytes, cudaStream_t stream);
BAGCAMS_DECLARE_TYPED(bagcams_f32, float)
BAGCAMS_DECLARE_TYPED(gradcam_f32, float)
BAGCAMS_DECLARE_TYPED(gradcampp_f32, float)
BAGCAMS_DECLARE_TYPED(pcs_f32, float)
/* float16 variants take the raw binary16 buffers (__half* or uint16_t*) as void pointers. */
BAGCAMS_DECLARE_TYPED(bagcams_f16, void)
BAGCAMS_DECLARE_TYPED(gradcam_f16, void)
BAGCAMS_DECLARE_TYPED(gradcampp_f16, void)
BAGCAMS_DECLARE_TYPED(pcs_f16, void)
#undef BAGCAMS_DECLARE_TYPED

#ifdef __cplusplus
}
#endif

#endif /* BAGCAMS_KERNELS_H_ */
