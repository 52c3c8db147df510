"""The README's goal table is computed from a benchmark's measurements, never typed: its verdicts."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cpu_bench():
    spec = importlib.util.spec_from_file_location("run_cpu_benchmarks", ROOT / "benchmarks" / "run_cpu_benchmarks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("value", "bar", "kind", "cell"),
    [(1.6775, 1.7, "max", "1.68x ✓"), (1.7034, 1.7, "max", "1.703x ✗"), (1.6999, 1.7, "max", "1.6999x ✓"),
     (1.7, 1.7, "max", "1.70x ✓"), (2.995, 3.0, "min", "2.995x ✗"), (3.39, 3.0, "min", "3.39x ✓")],
)  # fmt: skip
def test_ratio_cells_never_round_a_miss_into_a_pass(cpu_bench, value, bar, kind, cell):
    assert cpu_bench._ratio_cell(value, bar, kind) == cell


def _report(x8: float, rss: float) -> dict:
    def layer(x_fwd: float) -> dict:
        ratios = {f"{b}@{n}": {"speedup_vs_torch_reference": 3.2, "x_forward_only": x_fwd} for b in ("ort-cpu",)
                  for n in (1, 8)}  # fmt: skip
        rows = [{"backend": "ort-cpu", "batch_size": n, "peak_rss_mb": rss} for n in (1, 8)]
        return {"rows": rows, "ratios": ratios}

    return {"threads": 2, "layers": {"layer3": layer(x8), "layer4": layer(1.02)},
            "export": {"layer3": {"seconds": 3.0, "peak_rss_mb": 1200.0}}}  # fmt: skip


def test_goal_table_verdicts_follow_the_measurements(cpu_bench):
    good = cpu_bench.goal_table(_report(1.65, 800))
    assert "✗" not in good and good.count("✓") == 8 and "| ort-cpu |" in good.splitlines()[0]
    bad = cpu_bench.goal_table(_report(1.72, 1100)).splitlines()
    assert next(r for r in bad if "layer3, batch 8" in r and "forward-only" in r).endswith("1.72x ✗ |")
    assert next(r for r in bad if r.startswith("| peak RSS")).endswith("1100 MB ✗ |")


def test_committed_results_render_to_the_committed_markdown(cpu_bench):
    """benchmarks/results/cpu_resnet50.md is exactly what the script makes of the committed JSON."""
    results = ROOT / "benchmarks" / "results"
    report = json.loads((results / "cpu_resnet50.json").read_text())
    assert cpu_bench.markdown(report) == (results / "cpu_resnet50.md").read_text()
    readme = (ROOT / "README.md").read_text()
    assert cpu_bench.goal_table(report) in readme


def test_a_value_just_past_the_bar_never_prints_as_the_bar(cpu_bench):
    assert cpu_bench._ratio_cell(1.7004, 1.7, "max") == "1.7004x ✗"
    assert cpu_bench._ratio_cell(2.4996, 2.5, "min") == "2.4996x ✗"


def test_goal_table_shows_a_ratio_bench_left_out_as_a_dash(cpu_bench):
    """bench leaves ``x_forward_only`` null (with its reason) for rows not comparable with the floor."""
    report = _report(1.65, 800)
    report["layers"]["layer3"]["ratios"]["ort-cpu@8"] = {"speedup_vs_torch_reference": 3.2, "x_forward_only": None}
    row = next(r for r in cpu_bench.goal_table(report).splitlines() if "layer3, batch 8" in r and "forward-only" in r)
    assert row.endswith("| - |")


def test_fp16_stress_markdown_is_made_from_its_json():
    """benchmarks/results/fp16_stress.md (quoted by the README) is what the script makes of the committed JSON."""
    spec = importlib.util.spec_from_file_location("fp16_stress", ROOT / "benchmarks" / "fp16_stress.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = ROOT / "benchmarks" / "results"
    report = json.loads((results / "fp16_stress.json").read_text())
    assert not report["setup"]["quick"]  # the README quotes the full run
    assert module.markdown(report) == (results / "fp16_stress.md").read_text()
