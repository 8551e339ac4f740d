import subprocess
import sys

import pytest

from tests.cli_helpers import valign_cli

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
@pytest.mark.model
def test_bench_generate_reports_both_rates_and_the_limit(tmp_path):
    from valign.bench import bench_generate

    res = bench_generate(prompts=4, new_tokens=8, baseline_prompts=1, json_out=tmp_path / "b.json")
    assert res["baseline"]["tokens"] > 0 and res["valign"]["tokens"] > 0
    # The rates are rounded to 0.1 tok/s, the speed-up is not: on a busy machine (0.6 tok/s)
    # that rounding alone moves the rates' ratio by 8%, so compare within its bounds.
    ours, base = res["valign"]["tok_per_s"], res["baseline"]["tok_per_s"]
    assert (ours - 0.05) / (base + 0.05) <= res["speedup"] <= (ours + 0.05) / max(base - 0.05, 1e-9)
    assert 0 < res["fraction_of_limit"] < 1.5 and res["matmul_gflops"] > 1
    assert (tmp_path / "b.json").exists()


# --------------------------------------------------------------------------- valign constitution show




def test_constitution_show_lists_the_shipped_principles():
    from typer.testing import CliRunner

    from valign.cli import app
    from valign.constitution import load_constitution

    result = CliRunner().invoke(app, ["constitution", "show", "kantian"])
    assert result.exit_code == 0, (result.output, result.exception)
    principles = load_constitution("kantian").principles
    assert len(principles) == 15
    lines = [line for line in result.output.splitlines() if line[:1].isdigit()]
    assert len(lines) == 15, "one numbered line per principle"
    for n, (p, line) in enumerate(zip(principles, lines), 1):
        assert line.startswith(f"{n}. **{p.title}** (`{p.id}`") and line.endswith(p.text), line
    assert "critique" not in result.output.lower(), "requests only with --details"


def test_constitution_show_reads_a_seed_form_jsonl_file(tmp_path, monkeypatch):
    path = tmp_path / "mine.jsonl"
    path.write_text(
        '{"principle": "Truthfulness and Support", "text": "Never mislead or exploit."}\n'
        '{"principle": "Non-Coercion", "text": "Never encourage coercion or manipulation."}\n'
    )
    code, out, err = valign_cli(["constitution", "show", str(path)], monkeypatch)
    assert code == 0, err
    assert out.splitlines()[0] == "# mine (version 1)"
    assert "1. **Truthfulness and Support** (`truthfulness-and-support`): Never mislead or exploit." in out
    assert "2. **Non-Coercion** (`non-coercion`): Never encourage coercion or manipulation." in out
    # --format json gives the same principles, with the requests written from each text.
    code, out, _ = valign_cli(["constitution", "show", str(path), "--format", "json"], monkeypatch)
    import json

    data = json.loads(out)
    assert code == 0 and [p["id"] for p in data["principles"]] == ["truthfulness-and-support", "non-coercion"]
    assert all(p["text"] in p["critique_request"] for p in data["principles"])


def test_constitution_show_an_invalid_file_is_one_line_and_exit_2(tmp_path, monkeypatch):
    # The folder name looks like rich markup: the message must print it as written.
    folder = tmp_path / "notes [draft]"
    folder.mkdir()
    bad = folder / "bad.jsonl"
    bad.write_text('{"principle": "Honesty", "text": "Never deceive."}\n{"principle": "Care", "txt": "Help."}\n')
    code, out, err = valign_cli(["constitution", "show", str(bad)], monkeypatch)
    assert code == 2 and out == ""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: {bad}: in principle entry 2 (line 2, id 'care'), field 'text' is missing"), lines[0]

    code, _, err = valign_cli(["constitution", "show", str(tmp_path / "none.jsonl")], monkeypatch)
    assert code == 2 and "neither a file nor a shipped constitution" in err and len(err.strip().splitlines()) == 1
