"""The ``steerlens`` command line. Heavy imports happen inside commands, so ``--help`` is instant."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="steerlens: capture activations, probe, steer and edit transformer models.",
                  no_args_is_help=True, add_completion=False)

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
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Capture pooled activations of a dataset or JSONL file into --out."""
    from steerlens import data
    from steerlens.capturing import capture as run_capture
    from steerlens.models import load_model

    if (dataset is None) == (jsonl is None):
        raise typer.BadParameter("pass exactly one of --dataset or --jsonl")
    rows = data.prompt_rows(dataset) if dataset else data.prompt_rows_from_jsonl(jsonl)
    rows = rows[:limit] if limit else rows
    m = load_model(model, device=device, dtype=dtype)
    acts = run_capture(
        m, [r["prompt"] for r in rows], [h.strip() for h in hooks.split(",")], layers=_layers(layers),
        pool=pool, rows=rows, batch_size=batch_size, out=out, progress=progress,
    )
    shapes = {h: list(acts[h].shape) for h in acts.hooks}
    typer.echo(json.dumps({"out": str(out), "n": len(acts), "shapes": shapes}, indent=1))


@app.command()
def datasets() -> None:
    """List the shipped datasets with their sizes."""
    from steerlens import data

    for name in data.names():
        typer.echo(f"{name:<14} {len(data.load(name)):>5} records")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
