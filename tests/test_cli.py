import subprocess
import sys

import pytest

CLI = [sys.executable, "-m", "valign.cli"]


def test_help_lists_commands_without_heavy_imports():
    out = subprocess.run([*CLI, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for cmd in ("run", "serve", "models", "bench"):
        assert cmd in out.stdout
    probe = "import sys, valign.cli; print('torch' in sys.modules, 'transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.split() == ["False", "False"]


def test_user_error_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("name: t\nrespond:\n  gen: {temprature: 1}\n")
    out = subprocess.run([*CLI, "run", str(bad)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "did you mean 'temperature'?" in lines[0]


def test_missing_config_file(tmp_path):
    out = subprocess.run([*CLI, "run", str(tmp_path / "none.yaml")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "does not exist" in out.stderr


@pytest.mark.slow
def test_bench_generate_reports_both_rates_and_the_limit(tmp_path):
    from valign.bench import bench_generate

    res = bench_generate(prompts=4, new_tokens=8, baseline_prompts=1, json_out=tmp_path / "b.json")
    assert res["baseline"]["tokens"] > 0 and res["valign"]["tokens"] > 0
    assert res["speedup"] == pytest.approx(res["valign"]["tok_per_s"] / res["baseline"]["tok_per_s"], rel=0.05)
    assert 0 < res["fraction_of_limit"] < 1.5 and res["matmul_gflops"] > 1
    assert (tmp_path / "b.json").exists()
