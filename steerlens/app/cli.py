"""The ``steerlens`` command line. Heavy imports happen inside commands, so ``--help`` is instant."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from typer.core import TyperGroup

#: what a user can fix: printed as ``error: <message>`` (exit status 2) unless ``--debug``
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError, typer.BadParameter)
_DEBUG = "steerlens.debug"


class _Group(TyperGroup):
    """The top command group: turns a user error raised by any command into one line on stderr."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except USER_ERRORS as e:
            if ctx.meta.get(_DEBUG):
                raise
            typer.echo(f"error: {_message(e)}", err=True)
            raise typer.Exit(2) from None


def _message(e: Exception) -> str:
    if isinstance(e, typer.BadParameter):
        return e.message if e.param is None else e.format_message()
    return str(e) or type(e).__name__


app = typer.Typer(help="steerlens: capture activations, probe, steer and edit transformer models.",
                  no_args_is_help=True, add_completion=False, cls=_Group)


@app.callback()
def _options(ctx: typer.Context, debug: bool = typer.Option(
        False, "--debug", help="On an error, show the full traceback instead of one 'error:' line.")) -> None:
    ctx.meta[_DEBUG] = debug


MODEL = typer.Option("gemma-3-270m", "--model", "-m", help="'gemma-3-270m', an HF directory, a .gguf file or a hub id.")
DEVICE = typer.Option(None, help="cpu, cuda, ... (default: cuda if available).")
DTYPE = typer.Option(None, help="float32 (default), bfloat16 or float16.")


def _layers(spec: Optional[str]):
    if spec is None or spec == "all":
        return spec
    try:
        return [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"--layers takes 'all' or comma-separated ints, got {spec!r}") from None


@app.command()
def info(
    model: str = MODEL,
    device: Optional[str] = DEVICE,
    dtype: Optional[str] = DTYPE,
    hooks: bool = typer.Option(False, "--hooks", help="List every hook name."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Model, layers, width, hook names and cache location."""
    from steerlens.hooks import SHORTHANDS
    from steerlens.models import cache_dir, fingerprint, load_model, model_name

    m = load_model(model, device=device, dtype=dtype)
    cfg = m.cfg
    p = next(m.parameters())
    summary = {
        "model": model_name(m), "architecture": cfg.architecture, "n_layers": cfg.n_layers,
        "d_model": cfg.d_model, "d_mlp": cfg.d_mlp, "n_heads": cfg.n_heads, "n_ctx": cfg.n_ctx,
        "d_vocab": cfg.d_vocab, "dtype": str(p.dtype).removeprefix("torch."), "device": str(p.device),
        "fingerprint": fingerprint(m), "cache": str(cache_dir()),
        "shorthands": {k: v.format("L") for k, v in SHORTHANDS.items()},
    }
    if hooks:
        summary["hooks"] = list(m.hook_dict)
    if as_json:
        typer.echo(json.dumps(summary, indent=1))
        return
    for k, v in summary.items():
        if isinstance(v, dict):
            typer.echo(f"{k}:")
            for a, b in v.items():
                typer.echo(f"  {a:<11} {b}")
        elif isinstance(v, list):
            typer.echo(f"{k} ({len(v)}):")
            for name in v:
                typer.echo(f"  {name}")
        else:
            typer.echo(f"{k:<12} {v}")


@app.command()
def capture(
    out: Path = typer.Option(..., "--out", "-o", help="Output directory (safetensors shards + manifest.json)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="A shipped dataset (see `steerlens datasets`)."),
    jsonl: Optional[Path] = typer.Option(None, "--jsonl", help="A JSONL file with a 'prompt' or 'text' field per line."),
    hooks: str = typer.Option("resid_post", help="Comma-separated hook names or shorthands."),
    layers: Optional[str] = typer.Option(None, help="'all' (default) or comma-separated layer indices."),
    pool: str = typer.Option("last", help="last, mean or all."),
    batch_size: int = typer.Option(16, help="Prompts per forward pass."),
    limit: Optional[int] = typer.Option(None, help="Use only the first N prompts."),
    model: str = MODEL,
    device: Optional[str] = DEVICE,
    dtype: Optional[str] = DTYPE,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing activations directory at --out."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Capture pooled activations of a dataset or JSONL file into --out."""
    from steerlens import data
    from steerlens.capturing import capture as run_capture
    from steerlens.models import load_model

    if (dataset is None) == (jsonl is None):
        raise typer.BadParameter("pass exactly one of --dataset or --jsonl")
    rows = data.prompt_rows(dataset if dataset else jsonl)
    rows = rows[:limit] if limit else rows
    m = load_model(model, device=device, dtype=dtype)
    acts = run_capture(
        m, [r["prompt"] for r in rows], [h.strip() for h in hooks.split(",")], layers=_layers(layers),
        pool=pool, rows=rows, batch_size=batch_size, out=out, overwrite=overwrite, progress=progress,
    )
    shapes = {h: list(acts[h].shape) for h in acts.hooks}
    typer.echo(json.dumps({"out": str(out), "n": len(acts), "shapes": shapes}, indent=1))


@app.command()
def datasets() -> None:
    """List the shipped datasets with their sizes."""
    from steerlens import data

    for name in data.names():
        typer.echo(f"{name:<14} {len(data.load(name)):>5} records")


@app.command()
def tour(
    out: Path = typer.Option(Path("runs/tour"), "--out", "-o", help="Directory for index.html and tour.json."),
    model: str = MODEL,
    device: Optional[str] = DEVICE,
    dtype: Optional[str] = DTYPE,
    n_facts: int = typer.Option(3, help="Facts to edit (one at a time, each reverted)."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Every capability end to end (capture, probe sweep, calibrated steering, ROME edits and a
    causal trace) on one model, written as one HTML report."""
    from steerlens.models import load_model
    from steerlens.app.tour import layer_span, run_tour

    m = load_model(model, device=device, dtype=dtype)
    path = run_tour(m, out, n_facts=n_facts, progress=progress)
    summary = json.loads((path.parent / "tour.json").read_text())
    p, e = summary["probes"], summary["editing"]
    typer.echo(f"probes: {p['method']} at layer {p['best_layer']}, test AUROC {p['test_auroc']:.3f}")
    typer.echo(f"steer: coeff {summary['steer']['coeff']:.3g} at {layer_span(summary['steer']['layers'])}")
    typer.echo(f"editing: efficacy {e['after']['efficacy']:.2f}, neighbourhood {e['after']['neighbourhood']:.2f} "
               f"(before {e['before']['neighbourhood']:.2f})")
    typer.echo(f"report: {path}")


edit_app = typer.Typer(help="ROME weight edits: causal traces, scripted edit/erase experiments with reports.",
                       no_args_is_help=True, add_completion=False)
app.add_typer(edit_app, name="edit")


@edit_app.command("run")
def edit_run(
    experiment: Path = typer.Argument(..., help="A .jsonl of edits (one per line) or a .json/.toml spec."),
    out: Path = typer.Option(Path("runs/edit"), "--out", "-o", help="Report directory (report.html + report.json)."),
    mode: Optional[str] = typer.Option(None, help="rewrite (default) or erase."),
    stacked: Optional[bool] = typer.Option(None, "--stacked/--one-at-a-time", help="Apply all edits together, or each reverted before the next (default)."),
    layer: Optional[int] = typer.Option(None, help="Block whose MLP is edited (default: the measured layer for the model, e.g. 2 for Gemma 3 270M; else a quarter of the way up)."),
    corpus: Optional[Path] = typer.Option(None, help="Text or JSONL file for the key covariance, or 'shipped' for the shipped datasets' text (more specific factual edits). Default: text sampled from the model (under 2 min on 2 CPU cores, then cached)."),
    n_tokens: Optional[int] = typer.Option(None, help="Covariance token budget (default: 8000 sampled, 20000 from a corpus)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="'gemma-3-270m' (default), an HF directory, a .gguf file or a hub id."),
    device: Optional[str] = DEVICE,
    dtype: Optional[str] = DTYPE,
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Apply a list of edits or erasures, evaluate before/after, write one report."""
    from editing.experiment import load_spec, run_experiment
    from steerlens.models import load_model

    spec = load_spec(experiment)
    m = load_model(model or spec.get("model", "gemma-3-270m"), device=device, dtype=dtype)
    report = run_experiment(spec, model=m, out=out, progress=progress, mode=mode, stacked=stacked, layer=layer,
                            corpus=str(corpus) if corpus else None, n_tokens=n_tokens)
    summary = {"out": str(out / "report.html"), "mode": report.mode, "layer": report.layer,
               "before": report.before.summary(), "after": report.after.summary()}
    typer.echo(json.dumps(summary, indent=1, default=str))


@edit_app.command("trace")
def edit_trace(
    prompt: str = typer.Argument(..., help="The prompt, e.g. 'The Eiffel Tower is located in the city of'."),
    subject: str = typer.Option(..., "--subject", "-s", help="The subject inside the prompt."),
    target: Optional[str] = typer.Option(None, help="The object (default: the model's top-1 next token)."),
    out: Path = typer.Option(Path("runs/trace.html"), "--out", "-o", help="HTML file (a .json sidecar is written too)."),
    kinds: str = typer.Option("resid,mlp,attn", help="Comma-separated: resid, mlp, attn."),
    samples: int = typer.Option(5, help="Noise samples averaged."),
    noise: float = typer.Option(3.0, help="Noise std as a multiple of the embedding std."),
    window: Optional[int] = typer.Option(None, help="Layers restored together for mlp/attn."),
    seed: int = typer.Option(0),
    model: str = MODEL,
    device: Optional[str] = DEVICE,
    dtype: Optional[str] = DTYPE,
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Causal trace (ROME §2): heatmaps token × layer and the curve at the last subject token."""
    from editing.tracing import causal_trace
    from steerlens.io import write_json
    from steerlens.models import load_model

    m = load_model(model, device=device, dtype=dtype)
    tr = causal_trace(m, prompt, subject, target=target, kinds=[k.strip() for k in kinds.split(",") if k.strip()],
                      samples=samples, noise=noise, window=window, seed=seed, progress=progress)
    tr.save_html(out)
    write_json(out.with_suffix(".json"), tr.to_dict())
    typer.echo(json.dumps({"out": str(out), "target": tr.target, "p_clean": tr.p_clean, "p_corrupt": tr.p_corrupt,
                           "last_subject_curve": tr.last_subject_curve()}, indent=1))


# -- erase: concept-erasure experiments (issue 14) --------------------------------------------------
erase_app = typer.Typer(help="Concept erasure: LEACE, sequential scrubbing and directional ablation experiments "
                             "with before/after reports.", no_args_is_help=True, add_completion=False)
app.add_typer(erase_app, name="erase")


@erase_app.command("run")
def erase_run(
    spec_file: Path = typer.Argument(..., metavar="SPEC", help="A .json erasure spec (editing.erasure.ErasureSpec fields)."),
    out: Path = typer.Option(Path("runs/erase"), "--out", "-o", help="Report directory (report.html, report.json, one "
                             "<method>.eraser.safetensors per fitted eraser); must not exist or be empty."),
    layer: Optional[int] = typer.Option(None, help="Override the spec's erased layer."),
    methods: Optional[str] = typer.Option(None, help="Override the spec's methods (comma-separated)."),
    limit: Optional[int] = typer.Option(None, help="Override the spec's row limit per dataset."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="'gemma-3-270m' (default: the spec's), an HF directory, a .gguf file or a hub id."),
    device: Optional[str] = DEVICE,
    dtype: Optional[str] = DTYPE,
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Erase a concept, re-train probes, measure the cost; write one report (never over an existing one)."""
    import dataclasses

    from editing.erasure import load_erasure_spec, run_erasure
    from editing.report import write_report
    from steerlens.models import load_model

    spec = load_erasure_spec(spec_file)
    overrides = {"layer": layer, "limit": limit,
                 "methods": [m.strip() for m in methods.split(",") if m.strip()] if methods is not None else None}
    spec = dataclasses.replace(spec, **{k: v for k, v in overrides.items() if v is not None})
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"--out {out} already exists and is not an empty directory; nothing is ever "
                              "replaced: choose another --out")
    m = load_model(model or spec.model, device=device, dtype=dtype)
    result = run_erasure(m, spec, progress=progress)
    path = write_report(result, out, title=f"steerlens erase run ({spec.dataset}, layer {spec.layer})")
    import steer

    for name, obj in result.erasers.items():
        if isinstance(obj, steer.ConceptEraser):
            obj.save(out / f"{name}.eraser.safetensors")
    typer.echo(json.dumps({"out": str(path), "summary": result.summary()}, indent=1, default=str))


# -- steer: steering vectors (issue 4) ------------------------------------------------------------
steer_app = typer.Typer(help="Steering vectors: compute, calibrate, sweep, generate, export to llama.cpp.",
                        no_args_is_help=True)
app.add_typer(steer_app, name="steer")


def _steer_vector(path: Path):
    from steer.gguf_io import import_gguf
    from steer.vector import SteeringVector

    if not path.is_file():
        raise typer.BadParameter(f"no vector file at {path}")
    return import_gguf(path) if path.suffix.lower() == ".gguf" else SteeringVector.load(path)


def _positions(spec: str):
    if spec in ("all", "prompt", "generated"):
        return spec
    try:
        return [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"--positions takes all, prompt, generated or comma-separated ints, got {spec!r}") from None


def _floats(spec: str, name: str) -> list[float]:
    try:
        return [float(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"{name} takes comma-separated numbers, got {spec!r}") from None


@steer_app.command("compute")
def steer_compute(
    out: Path = typer.Option(..., "--out", "-o", help="Output .safetensors file."),
    dataset: str = typer.Option("sentiment", "--dataset", "-d", help="A shipped dataset of contrastive pairs."),
    layers: str = typer.Option("all", help="'all' (the default recipe: every layer) or comma-separated layer indices (block outputs)."),
    method: str = typer.Option("mean_diff", help="mean_diff or pca."),
    pool: str = typer.Option("mean", help="Pool each sentence's activations: mean or last."),
    calibrate: bool = typer.Option(False, "--calibrate", help="Also calibrate the coefficient (see --target-shift)."),
    target_shift: Optional[float] = typer.Option(0.3, help="--calibrate: smallest coefficient raising the judge's positive share by this much on the calibration openings (0: the KL-budget calibration instead)."),
    judge: str = typer.Option("vader", help="--calibrate --target-shift: the judge (vader)."),
    ppl_budget: Optional[float] = typer.Option(1.3, help="--calibrate: perplexity-ratio cap on neutral text."),
    max_degenerate: Optional[float] = typer.Option(0.05, help="--calibrate --target-shift: cap on the degenerate-continuation rate."),
    kl_budget: float = typer.Option(0.1, help="KL budget (nats) for --calibrate --target-shift 0."),
    batch_size: int = typer.Option(16, help="Prompts per forward pass."),
    model: str = MODEL,
    device: Optional[str] = DEVICE,
    dtype: Optional[str] = DTYPE,
) -> None:
    """Compute a steering vector from a shipped contrastive dataset."""
    import steer
    from steerlens.models import load_model

    m = load_model(model, device=device, dtype=dtype)
    v = steer.compute(m, dataset, layers=_layers(layers), method=method, pool=pool, batch_size=batch_size)
    if calibrate and target_shift:
        v = steer.calibrate(m, v, target_shift=target_shift, judge=_judge(judge), ppl_budget=ppl_budget,
                            max_degenerate=max_degenerate, start=1.0, steps=2)
    elif calibrate:
        v = steer.calibrate(m, v, kl_budget=kl_budget)
    v.save(out)
    typer.echo(json.dumps({"out": str(out), "layers": v.layers, "norms": v.norms(), "coeff": v.coeff}, indent=1))


@steer_app.command("calibrate")
def steer_calibrate(
    vector: Path = typer.Argument(..., help="A .safetensors (or .gguf) vector."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Where to write (default: overwrite the input)."),
    kl_budget: Optional[float] = typer.Option(0.1, help="Mean KL budget on neutral text, nats."),
    ppl_budget: Optional[float] = typer.Option(None, help="Perplexity-ratio budget, e.g. 1.1."),
    op: str = typer.Option("add", help="add or add_norm."),
    target_shift: Optional[float] = typer.Option(None, help="Behaviour mode: the smallest coefficient raising the judge's positive share by this much (KL budget ignored)."),
    judge: str = typer.Option("vader", help="--target-shift: the judge (vader)."),
    max_degenerate: Optional[float] = typer.Option(None, help="--target-shift: cap on the degenerate-continuation rate, e.g. 0.05."),
    report: Optional[Path] = typer.Option(None, help="--target-shift: also write the effect-cost report (report.html + report.json) here."),
    force: bool = typer.Option(False, help="Accept a vector computed on another model (same width)."),
    model: str = MODEL,
    device: Optional[str] = DEVICE,
    dtype: Optional[str] = DTYPE,
) -> None:
    """Find the largest coefficient within the budget (or, with --target-shift, the smallest reaching
    the behaviour shift) and store it in the vector."""
    import steer
    from steerlens.models import load_model

    v = _steer_vector(vector)
    m = load_model(model, device=device, dtype=dtype)
    if target_shift is not None:
        v = steer.calibrate(m, v, target_shift=target_shift, judge=_judge(judge), ppl_budget=ppl_budget,
                            max_degenerate=max_degenerate, op=op, force=force, progress=True)
        if report is not None:
            steer.write_report(v, report)
    else:
        v = steer.calibrate(m, v, kl_budget=kl_budget, ppl_budget=ppl_budget, op=op, force=force)
    target = out or (vector if vector.suffix != ".gguf" else vector.with_suffix(".safetensors"))
    v.save(target)
    cal = v.info["calibration"]
    extra = {k: cal[k] for k in ("shift", "reached", "positive_share", "negative_share", "degenerate") if k in cal}
    typer.echo(json.dumps({"out": str(target), "coeff": v.coeff, "kl": cal["kl"], "ppl_ratio": cal["ppl_ratio"],
                           **extra}, indent=1))


def _judge(name: str):
    if name != "vader":
        raise typer.BadParameter(f"--judge must be vader (steer.judges.VaderJudge), got {name!r}")
    from steer.judges import VaderJudge

    return VaderJudge()


@steer_app.command("sweep")
def steer_sweep(
    vector: Path = typer.Option(..., "--vector", "-v", help="A .safetensors (or .gguf) vector."),
    out: Path = typer.Option(..., "--out", "-o", help="Report directory (report.html + report.json)."),
    coeffs: str = typer.Option("0,1,2,4,8", help="Comma-separated coefficients."),
    prompt: Optional[list[str]] = typer.Option(None, "--prompt", "-p", help="Generation prompt (repeatable; default: neutral openings)."),
    behaviour: str = typer.Option("auto", help="vader (an external sentiment judge), probe (a probe judge: a logistic probe on the vector's dataset), logit-diff, none, or auto (vader for a sentiment vector, else probe when the vector names a dataset)."),
    probe_layer: Optional[int] = typer.Option(None, help="Layer of the behaviour probe (default: the vector's first layer)."),
    target: Optional[list[str]] = typer.Option(None, help="logit-diff: tokens that count for the behaviour (repeatable)."),
    against: Optional[list[str]] = typer.Option(None, help="logit-diff: tokens that count against it (repeatable)."),
    op: str = typer.Option("add", help="add, ablate, clamp or add_norm."),
    positions: str = typer.Option("all", help="all, prompt, generated or comma-separated token indices."),
    max_new_tokens: int = typer.Option(20, help="Tokens to generate per prompt."),
    control: bool = typer.Option(True, help="Also sweep a random vector of the same norm."),
    seed: int = typer.Option(0, help="Seed of the random control."),
    force: bool = typer.Option(False, help="Accept a vector computed on another model (same width)."),
    model: str = MODEL,
    device: Optional[str] = DEVICE,
    dtype: Optional[str] = DTYPE,
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Behaviour vs cost (KL, perplexity) over coefficients, with a random control: HTML + JSON report."""
    import steer
    from steer.evaluate import NEUTRAL_OPENINGS, LogitDiff, ProbeScore
    from steerlens.models import load_model

    v = _steer_vector(vector)
    m = load_model(model, device=device, dtype=dtype)
    if behaviour == "auto":
        behaviour = "logit-diff" if target else ("vader" if v.dataset == "sentiment" else "probe" if v.dataset else "none")
    if behaviour == "vader":
        scorer = _judge("vader")
    elif behaviour == "probe":
        if not v.dataset:
            raise typer.BadParameter("--behaviour probe needs a vector computed from a shipped dataset")
        layer = probe_layer if probe_layer is not None else v.layers[0]
        scorer = ProbeScore(_dataset_probe(m, v.dataset, layer, v.info.get("pool", "mean")), layer,
                            pool=v.info.get("pool", "mean"), name=f"P(positive) probe judge@{layer}")
    elif behaviour == "logit-diff":
        if not target or not against:
            raise typer.BadParameter("--behaviour logit-diff needs --target and --against tokens")
        scorer = LogitDiff(positive=list(target), negative=list(against))
    elif behaviour == "none":
        scorer = None
    else:
        raise typer.BadParameter(f"--behaviour must be auto, vader, probe, logit-diff or none, got {behaviour!r}")
    res = steer.sweep(m, v, _floats(coeffs, "--coeffs"), list(prompt) if prompt else NEUTRAL_OPENINGS,
                      behaviour=scorer, op=op, positions=_positions(positions), max_new_tokens=max_new_tokens,
                      control=control, seed=seed, force=force, progress=progress)
    steer.write_report(res, out)
    rows = [{"run": name, "coeff": p.coeff, "behaviour": p.behaviour, "positive_share": p.positive_share,
             "negative_share": p.negative_share, "degenerate": p.degenerate, "kl": p.kl, "ppl_ratio": p.ppl_ratio}
            for name, pts in (("vector", res.points), ("control", res.control)) for p in pts]
    typer.echo(json.dumps({"out": str(out), "points": rows}, indent=1))


def _dataset_probe(m, dataset: str, layer: int, pool: str):
    """A logistic probe separating the dataset's positive from its negative sentences."""
    from probes import LogisticProbe
    from steerlens import data
    from steerlens.capturing import capture

    pairs = data.load(dataset)
    texts = [p.positive for p in pairs] + [p.negative for p in pairs]
    labels = [1] * len(pairs) + [0] * len(pairs)
    acts = capture(m, texts, "resid_post", layers=[layer], pool=pool, labels=labels, progress=False)
    return LogisticProbe().fit(acts.numpy(acts.hooks[0]), acts.labels)


@steer_app.command("generate")
def steer_generate(
    prompts: list[str] = typer.Argument(..., help="One or more prompts."),
    vector: Path = typer.Option(..., "--vector", "-v", help="A .safetensors (or .gguf) vector."),
    coeff: Optional[float] = typer.Option(None, help="Coefficient (default: the calibrated one, else 1)."),
    layers: Optional[str] = typer.Option(None, help="Comma-separated layers (default: the vector's)."),
    op: str = typer.Option("add", help="add, ablate, clamp or add_norm."),
    positions: str = typer.Option("all", help="all, prompt, generated or comma-separated token indices."),
    max_new_tokens: int = typer.Option(30, help="Tokens to generate."),
    sample: bool = typer.Option(False, "--sample", help="Sample instead of greedy decoding."),
    temperature: float = typer.Option(1.0, help="Sampling temperature."),
    seed: Optional[int] = typer.Option(None, help="Sampling seed."),
    compare: bool = typer.Option(False, "--compare", help="Also print the unsteered continuation."),
    force: bool = typer.Option(False, help="Accept a vector computed on another model (same width)."),
    model: str = MODEL,
    device: Optional[str] = DEVICE,
    dtype: Optional[str] = DTYPE,
) -> None:
    """Generate with a steering vector applied."""
    import steer
    from steerlens.models import load_model

    v = _steer_vector(vector)
    m = load_model(model, device=device, dtype=dtype)
    kw = dict(max_new_tokens=max_new_tokens, do_sample=sample, temperature=temperature, seed=seed)
    steered = steer.generate(m, list(prompts), v, coeff=coeff, layers=_layers(layers), op=op,
                             positions=_positions(positions), force=force, **kw)
    plain = steer.generate(m, list(prompts), None, **kw) if compare else None
    for i, p in enumerate(prompts):
        typer.echo(f"{p}{steered[i]}")
        if plain is not None:
            typer.echo(f"  (unsteered) {p}{plain[i]}")


@steer_app.command("export-gguf")
def steer_export_gguf(
    vector: Path = typer.Argument(..., help="A .safetensors vector."),
    out: Path = typer.Argument(..., help="Output .gguf (run: llama-completion ... --control-vector-scaled OUT:COEFF)."),
    model_hint: Optional[str] = typer.Option(None, help="controlvector.model_hint (default: the model type)."),
    n_layers: Optional[int] = typer.Option(None, help="Block count of the model llama.cpp will run (Gemma 3 270M: 18): warn about layers it would ignore."),
    drop_layer_0: bool = typer.Option(False, "--drop-layer-0", help="Export without block 0, which llama.cpp cannot steer (the default recipe steers every layer, block 0 included)."),
) -> None:
    """Export a vector as a llama.cpp control vector: direction.N is added to the output of block N
    (N >= 1; llama.cpp skips a file holding direction.0), scaled by --control-vector-scaled OUT:COEFF."""
    import warnings

    from steer.gguf_io import export_gguf

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        v = _steer_vector(vector)
        if drop_layer_0 and 0 in v.layers:
            if v.layers == [0]:
                raise typer.BadParameter(f"{vector} steers block 0 only: nothing is left to export without it")
            v = v.select([layer for layer in v.layers if layer != 0])
        try:
            export_gguf(v, out, model_hint=model_hint, n_layers=n_layers)
        except ValueError as e:
            hint = " (on the command line: --drop-layer-0)" if 0 in v.layers else ""
            raise typer.BadParameter(f"{e}{hint}") from None
    for w in caught:
        typer.echo(f"warning: {w.message}", err=True)
    typer.echo(json.dumps({"out": str(out), "layers": v.layers, "coeff": v.coeff}, indent=1))


@steer_app.command("import-gguf")
def steer_import_gguf(
    path: Path = typer.Argument(..., help="A control-vector .gguf (steerlens, llama.cpp or repeng)."),
    out: Path = typer.Argument(..., help="Output .safetensors."),
    n_layers: Optional[int] = typer.Option(None, help="Block count of the model the file is for: warn about layers llama.cpp would ignore."),
) -> None:
    """Convert a GGUF control vector to a steerlens vector (warns if llama.cpp would skip or ignore parts of it)."""
    import warnings

    from steer.gguf_io import import_gguf

    if not path.is_file():
        raise typer.BadParameter(f"no vector file at {path}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        v = import_gguf(path, n_layers=n_layers)
    for w in caught:
        typer.echo(f"warning: {w.message}", err=True)
    v.save(out)
    typer.echo(json.dumps({"out": str(out), "layers": v.layers, "model": v.model_name}, indent=1))


# -- probe: linear probes (issue 3) ----------------------------------------------------------------
@app.command()
def probe(
    dataset: str = typer.Option(..., "--dataset", "-d", help="A shipped dataset with binary labels: truthfulness, harmfulness or sentiment; or truth (truthfulness + negations, groups kept: the truth-probe recipe)."),
    hook: str = typer.Option("resid_post", help="Hook shorthand swept over the layers (resid_post, resid_mid, attn_out, mlp_out)."),
    layers: Optional[str] = typer.Option(None, help="'all' (default) or comma-separated layer indices."),
    methods: str = typer.Option("logistic,mean_diff,lda", help="Comma-separated probe methods."),
    pool: str = typer.Option("last", help="Token pooling per prompt: last or mean."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Report directory (default: runs/probe-DATASET)."),
    by: Optional[str] = typer.Option(None, help="Row field for the generalisation matrix (default: 'family' if the dataset has it; 'none' skips it)."),
    lofo: Optional[str] = typer.Option(None, help="Row field for leave-one-family-out validation (default: 'family' for --dataset truth; 'none' skips it)."),
    select: Optional[str] = typer.Option(None, help="What chooses the layer and method: val (validation split) or lofo (leave-one-family-out AUROC; the default when --lofo is on)."),
    seed: int = typer.Option(0, help="Seed of the grouped split, the controls and the bootstrap."),
    limit: Optional[int] = typer.Option(None, help="Use only the first N prompts."),
    batch_size: int = typer.Option(16, help="Prompts per forward pass."),
    model: str = MODEL,
    device: Optional[str] = DEVICE,
    dtype: Optional[str] = DTYPE,
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Sweep probes over every layer of a dataset: report.html, report.json and probe.safetensors in --out.
    For truth datasets the report adds the chosen probe's transfer (per dataset and family, flagged when read
    backwards) and its operating point at 1% FPR on neutral sentences."""
    from probes import generalization_matrix, labelled_rows, sweep_layers, transfer_report, write_report
    from probes.datasets import TRUTH_FAMILIES, dataset_names
    from steerlens import data
    from steerlens.capturing import capture as run_capture
    from steerlens.models import load_model

    if pool not in ("last", "mean"):
        raise typer.BadParameter(f"--pool takes 'last' or 'mean', got {pool!r}")
    try:
        rows = labelled_rows(dataset)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    rows = rows[:limit] if limit else rows
    out = out or Path("runs") / f"probe-{dataset}"
    lofo = ("family" if dataset == "truth" else None) if lofo is None else (None if lofo == "none" else lofo)
    select = select or ("lofo" if lofo else "val")
    if select not in ("val", "lofo") or (select == "lofo" and not lofo):
        raise typer.BadParameter(f"--select takes 'val' or 'lofo' (which needs --lofo), got {select!r}")
    m = load_model(model, device=device, dtype=dtype)
    acts = run_capture(m, [r["prompt"] for r in rows], hook, layers=_layers(layers), pool=pool, rows=rows,
                       batch_size=batch_size, progress=progress)
    try:
        result = sweep_layers(acts, methods=[x.strip() for x in methods.split(",") if x.strip()], hook=hook, seed=seed,
                              dataset=dataset, dataset_hash=data.digest(dataset) if dataset in data.names() else None,
                              lofo=lofo, select=select, progress=progress)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    transfer = None
    if set(dataset_names(dataset)) <= set(TRUTH_FAMILIES):  # a truth probe: report its transfer
        from steerlens.neutral import NEUTRAL_TEXTS

        others = {}
        for name in TRUTH_FAMILIES:
            if name not in dataset_names(dataset):
                o = labelled_rows(name)
                others[name] = run_capture(m, [r["prompt"] for r in o], result.best["hook"], pool=pool, rows=o,
                                           batch_size=batch_size, progress=progress)
        control = run_capture(m, list(NEUTRAL_TEXTS), result.best["hook"], pool=pool, batch_size=batch_size, progress=progress)
        transfer = transfer_report(result, acts, others=others, control=control)
    by = ("family" if all("family" in r for r in rows) else None) if by is None else (None if by == "none" else by)
    gen = None
    if by and len({str(r.get(by)) for r in rows}) > 1:
        gen = generalization_matrix(acts, by=by, layer=result.best["layer"], hook=hook, method=result.best["method"], seed=seed)
    page = write_report(result, out, generalization=gen, transfer=transfer, acts=acts)
    b = result.best
    typer.echo(json.dumps({
        "out": {"html": str(page), "json": str(out / "report.json"), "probe": str(out / "probe.safetensors")},
        "best": {"layer": b["layer"], "method": b["method"], "hook": b["hook"]},
        "val_auroc": b["val"]["auroc"], "test": {k: b["test"][k] for k in ("auroc", "auroc_ci", "accuracy", "tpr_at_1pct_fpr", "ece")},
        "control": b["control"], "generalization": gen.to_dict() if gen is not None else None,
        "select": result.select, "picks": result.picks,
        "transfer": transfer.to_dict() if transfer is not None else None,
    }, indent=1))


@app.command()
def serve(
    model: str = MODEL,
    vectors: Optional[Path] = typer.Option(None, help="Directory of steering vector files (registered by file name)."),
    probes: Optional[Path] = typer.Option(None, help="Directory of probe files (registered by file name)."),
    host: str = typer.Option("127.0.0.1", help="Address to bind (loopback by default)."),
    port: int = typer.Option(8000, help="Port to listen on."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="STEERLENS_API_KEY",
                                          help="Require 'Authorization: Bearer KEY' on every route."),
    max_batch: int = typer.Option(16, help="Rows decoded together."),
    max_queue: int = typer.Option(64, help="Requests that may wait; beyond, 429 with Retry-After."),
    max_tokens: int = typer.Option(512, help="Largest max_tokens a request may ask for."),
    timeout: float = typer.Option(300.0, help="Seconds a request may take (queue + generation)."),
    max_body: int = typer.Option(4 << 20, help="Largest request body in bytes."),
    mode: str = typer.Option("continuous", help="continuous (rows join at every step) or static."),
    engine: str = typer.Option("inprocess", help="inprocess (steerlens' engine) or vllm (needs steerlens[vllm])."),
    tensor_parallel_size: int = typer.Option(1, help="vLLM only: workers to shard the model over (GPUs; on the "
                                             "CPU, core groups: set VLLM_CPU_OMP_THREADS_BIND, e.g. '0-7|8-15', or "
                                             "VLLM_CPU_SIM_MULTI_NUMA=1)."),
    nnodes: int = typer.Option(1, help="vLLM only: nodes the workers span (this is node 0; on the others run "
                               "'python -m steer.serve.vllm_node', see docs/serve.md)."),
    master_addr: Optional[str] = typer.Option(None, help="vLLM only, with --nnodes > 1: this node's address as the "
                                              "other nodes reach it (default 127.0.0.1)."),
    model_id: Optional[str] = typer.Option(None, help="The name clients pass as 'model' (default: --model, "
                                           "or a local path's last component)."),
    device: Optional[str] = DEVICE,
    dtype: Optional[str] = DTYPE,
) -> None:
    """Serve the model over an OpenAI-compatible API with per-request steering vectors and probe
    monitors (POST /v1/completions with "steering": [...], "monitors": [...])."""
    from steer.serve import Limits
    from steer.serve import serve as run_server

    for name, value in (("--port", port), ("--max-batch", max_batch), ("--max-queue", max_queue),
                        ("--max-tokens", max_tokens), ("--max-body", max_body)):
        if value < (0 if name == "--port" else 1) or (name == "--port" and value > 65535):
            raise typer.BadParameter(f"{name} must be {'0..65535' if name == '--port' else '>= 1'}, got {value}")
    if not timeout > 0:
        raise typer.BadParameter(f"--timeout must be > 0 seconds, got {timeout}")
    if mode not in ("continuous", "static"):
        raise typer.BadParameter(f"--mode takes 'continuous' or 'static', got {mode!r}")
    if engine not in ("inprocess", "vllm"):
        raise typer.BadParameter(f"--engine takes 'inprocess' or 'vllm', got {engine!r}")
    if tensor_parallel_size < 1:
        raise typer.BadParameter(f"--tensor-parallel-size must be >= 1, got {tensor_parallel_size}")
    if nnodes < 1:
        raise typer.BadParameter(f"--nnodes must be >= 1, got {nnodes}")
    if (nnodes > 1 or master_addr is not None) and engine != "vllm":
        raise typer.BadParameter(f"--nnodes and --master-addr need --engine vllm, got --engine {engine}")
    if nnodes > 1 and tensor_parallel_size % nnodes:
        raise typer.BadParameter(f"--nnodes {nnodes} must divide --tensor-parallel-size {tensor_parallel_size} "
                                 "(each node runs the same number of workers)")
    run_server(model, vectors=None if vectors is None else str(vectors), probes=None if probes is None else str(probes),
               host=host, port=port, api_key=api_key, max_batch=max_batch, max_queue=max_queue, mode=mode,
               limits=Limits(max_tokens=max_tokens, timeout=timeout, max_body=max_body), device=device, dtype=dtype,
               model_id=model_id, engine=engine, tensor_parallel_size=tensor_parallel_size, nnodes=nnodes,
               master_addr=master_addr)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
