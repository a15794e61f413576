"""scripts/benchmark.py --quick runs end to end and writes the documented JSON (timings not judged)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASE_KEYS = {
    "name",
    "impl",
    "precision",
    "fwd_ms",
    "train_ms",
    "fwd_cpu_ms",
    "train_cpu_ms",
    "fwd_seq_per_s",
    "train_seq_per_s",
    "fwd_gflops",
    "train_gflops",
    "fwd_peak_fraction",
    "train_peak_fraction",
    "peak_mem_mb",
}


def test_quick_benchmark_writes_json_with_expected_keys(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--quick", "--threads", "1", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert {"meta", "peak", "configs", "floors"} <= report.keys()
    assert report["meta"]["quick"] is True and report["meta"]["threads"] == 1
    for prec in ("fp32", "bf16"):
        assert report["peak"][prec]["gflops"] > 0
    assert {"moving_mnist", "patch", "deepconvlstm", "deepconvlstm_model", "layer"} <= report["configs"].keys()
    for name, cfg in report["configs"].items():
        assert cfg["flops_forward"] > 0, name
        impls = {c["impl"] for c in cfg["cases"]}
        assert "project" in impls, name
        for case in cfg["cases"]:
            if "error" in case and case["impl"] != "project":
                # a reference that cannot run on this machine is reported with the reason, e.g.
                # torch.nn.LSTM under bf16 autocast on a CPU without native bfloat16 (AVX2)
                assert case["error"] and case["samples_ms"] == {}, (name, case)
                continue
            assert CASE_KEYS <= case.keys(), (name, case["name"], CASE_KEYS - case.keys())
            assert case["train_ms"] > 0 and case["fwd_ms"] > 0
            # the derived figures follow from the timings and the analytic FLOPs
            assert (
                abs(case["train_gflops"] - 3 * cfg["flops_forward"] / (case["train_ms"] / 1e3) / 1e9)
                <= 1e-6 * case["train_gflops"]
            )
            assert (
                abs(case["train_seq_per_s"] - cfg["batch"] / (case["train_ms"] / 1e3)) <= 1e-6 * case["train_seq_per_s"]
            )
    assert {c["impl"] for c in report["configs"]["deepconvlstm"]["cases"]} == {"project", "torch.nn.LSTM"}
    assert "reference" in {c["impl"] for c in report["configs"]["moving_mnist"]["cases"]}
    # floors by the CPU's kind, each comparing rows of one precision: bf16 where the CPU has
    # native bf16, fp32 elsewhere
    from convlstm_vp.nn.fast import cpu_kind

    assert report["meta"]["kind"] == cpu_kind()
    floors = report["floors"]
    assert {"moving_mnist", "deepconvlstm"} <= {f["config"] for f in floors}
    for f in floors:
        assert isinstance(f["measured"], float) and isinstance(f["met"], bool)
    prec = "bf16" if cpu_kind() in ("amx", "avx512_bf16") else "fp32"
    mm = [(f["project"], f["against"]) for f in floors if f["config"] == "moving_mnist" and f["measure"] == "speedup"]
    assert mm == [(f"project {prec}", f"reference {prec}")]
    # the table is printed too
    assert "| case" in proc.stdout and "floors:" in proc.stdout
