#!/usr/bin/env bash
# Everything this project checks on a CUDA GPU, as one command that fits a short lease of a GPU machine
# (no network there; Python 3.12 with torch, onnx, onnxruntime, opencv, typer and rich installed).
#
#   here:   bash tools/build_pycuda_wheel.sh .whl    # PyCUDA cp312 wheel + its small dependencies
#   there:  bash benchmarks/gpu_checks.sh            # device tool: carry [".whl"], timeout_s 600
#
# It runs, each under its own time limit so that one hang cannot eat the lease: the GPU tests
# (`pytest -m gpu`: kernels against the numpy oracle, the CUDA backends, TensorRT where installed),
# the kernel benchmark (achieved bandwidth against the device-to-device copy), and the end-to-end
# torch backends on CUDA (torch-reference, torch-analytic, torch-analytic-cudagraph; ResNet-50 layer3
# BagCAMs, 224x224, batch 1/8/32). TensorRT and onnxruntime-gpu are not carried (too large), so their
# tests skip with a reason and the results say so.
# Results go to $OUT (the device tool's folder) or ./gpu-results: log.txt, device.txt,
# backends.txt, pytest_gpu.txt, kernel.json, bench_cuda.json.
set -uo pipefail
out="${OUT:-gpu-results}"
mkdir -p "$out"
exec > >(tee "$out/log.txt") 2>&1
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi

echo "== device"
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || echo "no nvidia-smi"; } \
  | tee "$out/device.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda available:', torch.cuda.is_available())"
python3 - <<'EOF'
try:
    import pycuda.driver as drv

    drv.init()
    print("pycuda", drv.get_version(), drv.Device(0).name())
except Exception as exc:  # noqa: BLE001 - a report line, not a failure
    print(f"pycuda: not usable here ({type(exc).__name__}: {exc})")
EOF
python3 -c "import tensorrt" 2>/dev/null && echo "tensorrt: installed" || echo "tensorrt: not installed (its tests skip)"
timeout 60 python3 -c "from bagcams_deploy.cli import main; main()" backends | tee "$out/backends.txt"

echo "== pytest -m gpu"
timeout 240 python3 -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tee "$out/pytest_gpu.txt"

echo "== kernel benchmark"
timeout 120 python3 benchmarks/bench_kernel.py --output "$out/kernel.json"

echo "== torch backends on CUDA, end to end"
work="$(mktemp -d)"
timeout 60 python3 - "$work" <<'EOF'
import sys
from pathlib import Path

from bagcams_deploy.export.onnx_export import export_onnx
from bagcams_deploy.models import build_model, save_checkpoint

work = Path(sys.argv[1])
model = build_model("resnet50", 200, seed=0, randomize_batchnorm=True)
save_checkpoint(model, work / "r50.pth")
export_onnx(model, work / "r50.onnx", method="bagcams", target_layer="layer3")
print("exported", work / "r50.onnx")
EOF
timeout 240 python3 -c "from bagcams_deploy.cli import main; main()" bench "$work/r50.onnx" \
  --checkpoint "$work/r50.pth" --backends torch-reference,torch-analytic,torch-analytic-cudagraph \
  --device cuda --batch-sizes 1,8,32 --warmup 3 --iters 20 --no-floor --json "$out/bench_cuda.json"
echo "== done"
