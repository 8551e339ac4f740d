"""`valign bench generate --peers` and `valign.peers`: a peer that cannot be had is reported
as missing with its reason (no server started, nothing estimated), the llama.cpp build is
the documented one, and, where a built llama-server is cached under VALIGN_HOME, a real
one is started, driven and stopped. The request driver against a real vLLM server is in
test_vllm_served.py, next to that module's session server."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from valign import peers
from valign.bench import bench_prompts
from valign.errors import ValignError
from valign.hardware import cpu_has_bf16


def test_missing_vllm_environment_is_a_reason_not_a_figure(tmp_path):
    res = peers.measure_vllm(tmp_path, bench_prompts(2), 4, python=tmp_path / "nonexistent" / "python", say=lambda m: None)
    assert res.missing and "vLLM's environment is missing" in res.missing and "make vllm-env" in res.missing
    out = res.as_json()
    assert out["status"] == "missing" and out["tok_per_s"] is None and out["tokens"] == 0


def test_missing_llama_server_binary_is_a_reason(tmp_path):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    res = peers.measure_llama_server(gguf, bench_prompts(2), 4, prompt_tokens=40, binary=tmp_path / "no-llama-server", say=lambda m: None)
    assert res.as_json()["status"] == "missing" and "no llama-server binary" in res.missing


def test_a_machine_without_cmake_cannot_build_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("VALIGN_HOME", str(tmp_path))  # nothing cached here
    monkeypatch.setattr(peers.shutil, "which", lambda name: None if name == "cmake" else f"/usr/bin/{name}")
    with pytest.raises(ValignError, match=r"cmake is not installed"):
        peers.build_llama_server(say=lambda m: None)
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    res = peers.measure_llama_server(gguf, bench_prompts(2), 4, prompt_tokens=40, say=lambda m: None)
    assert res.missing == "llama-server cannot be built: cmake is not installed (apt-get install cmake)."
    assert not (tmp_path / "peers" / f"llama-server-{peers.LLAMA_CPP_PYTHON}").exists()


def test_a_server_groups_cpu_time_is_counted_from_proc():
    # A process in a group of its own (as servers are started) that burns 0.6 s of CPU, then sleeps.
    code = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass\ntime.sleep(30)"
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while (used := peers.group_cpu_seconds(proc.pid)) < 0.5 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert 0.5 <= used < 5
    finally:
        proc.kill()
        proc.wait()
    assert peers.group_cpu_seconds(proc.pid) == 0  # gone: nothing left to count


def test_llama_build_is_native_release_server_only():
    configure, build = peers.llama_build_commands(Path("src/vendor/llama.cpp"), Path("b"), jobs=2)
    assert configure[:5] == ["cmake", "-S", "src/vendor/llama.cpp", "-B", "b"]
    for flag in ("-DGGML_NATIVE=ON", "-DLLAMA_BUILD_SERVER=ON", "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF",
                 "-DLLAMA_USE_PREBUILT_UI=OFF"):
        assert flag in configure
    assert build == ["cmake", "--build", "b", "--target", "llama-server", "-j", "2"]


def test_llama_server_command_has_its_slots_and_context():
    srv = peers.LlamaServer(binary=Path("/x/llama-server"), gguf=Path("/m.gguf"), slots=16, slot_tokens=256, threads=2, port=9)
    cmd = srv.command()
    assert cmd[cmd.index("-np") + 1] == "16" and cmd[cmd.index("-c") + 1] == str(16 * 256)
    assert cmd[cmd.index("-t") + 1] == "2" and cmd[cmd.index("--port") + 1] == "9" and srv.url == "http://127.0.0.1:9/v1"


@pytest.mark.slow
@pytest.mark.model
def test_bench_generate_peers_reports_missing_peers_and_still_measures_valign(tmp_path):
    out = tmp_path / "peers.json"
    run = subprocess.run(
        [sys.executable, "-m", "valign.cli", "bench", "generate", "--peers", "--prompts", "2", "--new-tokens", "4",
         "--baseline-prompts", "1", "--vllm-python", "/nonexistent/python", "--llama-server", "/nonexistent/llama-server",
         "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    res = json.loads(out.read_text())
    assert res["valign"]["tokens"] > 0
    assert res["peers"]["vllm"]["status"] == "missing" and "/nonexistent/python" in res["peers"]["vllm"]["missing"]
    assert res["peers"]["llama_server"]["status"] == "missing" and "/nonexistent/llama-server" in res["peers"]["llama_server"]["missing"]
    assert res["vs_vllm"] is None and res["vs_llama_server"] is None
    if cpu_has_bf16():
        assert res["peer_targets_met"] == {"vs_vllm": None, "vs_llama_server": None, "fraction_of_bf16_limit": res["fraction_of_bf16_limit"] >= 0.4}
        assert res["bf16_matmul_gflops"] > 1 and 0 < res["fraction_of_bf16_limit"] < 1.5
    else:  # bf16 would be emulated: no limit to reach, and the table says why
        assert res["peer_targets_met"] == {"vs_vllm": None, "vs_llama_server": None, "fraction_of_bf16_limit": None}
        assert res["bf16_matmul_gflops"] is None and res["fraction_of_bf16_limit"] is None
    assert res["targets"]["vs_vllm"] == 1.2 and res["targets"]["vs_llama_server"] == 1.8 and res["targets"]["fraction_of_bf16_limit"] == 0.4
    assert run.stdout.count("missing") >= 2  # the table's rows say so too
    assert set(res["cpu_share"]) == {"valign"} and 0 < res["cpu_share"]["valign"] <= 1.05


@pytest.mark.slow
@pytest.mark.model
@pytest.mark.skipif(peers.cached_llama_server() is None, reason="no llama-server cached under VALIGN_HOME (`make peers` builds it)")
def test_cached_llama_server_serves_the_embedded_gguf_and_is_measured():
    from valign.models.embedded import gguf_file

    res = peers.measure_llama_server(gguf_file(), bench_prompts(4), 8, prompt_tokens=64, binary=peers.cached_llama_server(),
                                     slots=2, say=lambda m: None)  # fmt: skip
    assert res.missing is None, res.missing
    assert res.tokens == 4 * 8 and res.details["finished_by_length"] == 4 and res.details["peak_in_flight"] == 2
    assert res.tok_per_s and res.tok_per_s > 0 and 0 < res.cpu_share <= 1.05
    with pytest.raises(httpx.HTTPError):  # stopped once measured
        httpx.get(res.details["url"] + "/models", timeout=5)
