// emu_main.cpp -- runs the four kernels of bagcams_kernels.cuh on the CPU emulation with a launch
// plan given on the command line (the Python launcher computes it, so the plan is tested too).
//
//   bagcams_emu METHOD DTYPE N K h w H W SCALE GROUPS CPB BLOCKS CHUNK SMEM F.bin G.bin OUT.bin
//     METHOD bagcams|gradcam|gradcampp|pcs; DTYPE f32|f16 (F.bin/G.bin raw little-endian
//     float32 or binary16); SMEM 1 = shared-memory partial kernel, 0 = the _gmem fallback.
//   Writes OUT.bin: N*H*W float32.
#include "cuda_emu.h"

#include "../bagcams_kernels.cuh"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

template <typename T>
static std::vector<T> read_file(const char* path, size_t count) {
  std::vector<T> v(count);
  std::ifstream f(path, std::ios::binary);
  f.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(count * sizeof(T)));
  if (!f) {
    std::fprintf(stderr, "cannot read %zu elements from %s\n", count, path);
    std::exit(2);
  }
  return v;
}

template <typename T, class Op>
static void run(int argc, char** argv) {
  const int n = std::atoi(argv[3]), k = std::atoi(argv[4]), h = std::atoi(argv[5]), w = std::atoi(argv[6]);
  const int H = std::atoi(argv[7]), W = std::atoi(argv[8]);
  const float scale = std::strtof(argv[9], nullptr);
  const int groups = std::atoi(argv[10]), cpb = std::atoi(argv[11]), blocks = std::atoi(argv[12]);
  const int chunk = std::atoi(argv[13]), smem = std::atoi(argv[14]);
  (void)argc;
  const int P = h * w;
  const size_t count = static_cast<size_t>(n) * k * P;
  std::vector<T> F = read_file<T>(argv[15], count);
  std::vector<T> G = read_file<T>(argv[16], count);
  std::vector<float> partial(static_cast<size_t>(n) * groups * P, std::nanf(""));
  std::vector<float> raw(static_cast<size_t>(n) * P, std::nanf(""));
  std::vector<float> stats(static_cast<size_t>(n) * blocks * 3, std::nanf(""));
  std::vector<float> out(static_cast<size_t>(n) * H * W, std::nanf(""));

  const size_t dyn = smem ? static_cast<size_t>(bagcams::partial_smem_bytes(Op::kStored, P)) : 0;
  emu_launch(groups, n, bagcams::kPartialThreads, 1, dyn, [&] {
    if (smem)
      bagcams::partial_body<Op, T, true>(F.data(), G.data(), partial.data(), k, P, cpb, scale);
    else
      bagcams::partial_body<Op, T, false>(F.data(), G.data(), partial.data(), k, P, cpb, scale);
  });
  emu_launch((P + bagcams::kReduceX - 1) / bagcams::kReduceX, n, bagcams::kReduceX, bagcams::kReduceY, 0,
             [&] { bagcams_reduce_partials(partial.data(), raw.data(), groups, P, Op::kReluAfterSum ? 1 : 0); });
  emu_launch(blocks, n, bagcams::kOutThreads, 1, 0,
             [&] { bagcams_minmax(raw.data(), stats.data(), h, w, H, W, chunk, blocks); });
  emu_launch(blocks, n, bagcams::kOutThreads, 1, 0,
             [&] { bagcams_normalize(raw.data(), stats.data(), out.data(), h, w, H, W, chunk, blocks); });

  std::ofstream o(argv[17], std::ios::binary);
  o.write(reinterpret_cast<const char*>(out.data()), static_cast<std::streamsize>(out.size() * sizeof(float)));
}

template <typename T>
static void dispatch(const std::string& method, int argc, char** argv) {
  if (method == "bagcams") return run<T, bagcams::BagcamsOp>(argc, argv);
  if (method == "gradcam") return run<T, bagcams::GradcamOp>(argc, argv);
  if (method == "gradcampp") return run<T, bagcams::GradcamppOp>(argc, argv);
  if (method == "pcs") return run<T, bagcams::PcsOp>(argc, argv);
  std::fprintf(stderr, "unknown method %s\n", method.c_str());
  std::exit(2);
}

int main(int argc, char** argv) {
  if (argc != 18) {
    std::fprintf(stderr,
                 "usage: %s METHOD DTYPE N K h w H W SCALE GROUPS CPB BLOCKS CHUNK SMEM F.bin G.bin OUT.bin\n",
                 argv[0]);
    return 2;
  }
  const std::string dtype = argv[2];
  if (dtype == "f32") {
    dispatch<float>(argv[1], argc, argv);
  } else if (dtype == "f16") {
    dispatch<__half>(argv[1], argc, argv);
  } else {
    std::fprintf(stderr, "unknown dtype %s\n", dtype.c_str());
    return 2;
  }
  return 0;
}
