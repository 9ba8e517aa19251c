"""Plotly figures for probe results: metric by layer, score histograms, the generalisation
matrix, and a 2-D projection of activations. Each function returns a ``plotly`` ``Figure``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from jaxtyping import Float, Shaped

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from probes.estimators import _LinearProbe
    from probes.generalize import GeneralizationResult
    from probes.sweep import LayerSweep

_COLORS = {"logistic": "#1f77b4", "mean_diff": "#2ca02c", "lda": "#d62728"}
_NAMES = {"logistic": "logistic", "mean_diff": "mass-mean", "lda": "LDA (shrunk)"}


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def layer_curves(result: "LayerSweep", metric: str = "auroc") -> "go.Figure":
    """Test ``metric`` by layer per method, with its bootstrap CI band (AUROC), the validation
    curve (dashed), each method's label-shuffle control (dotted) and the random-direction control."""
    import plotly.graph_objects as go

    fig = go.Figure()
    layers = list(result.layers)
    for m in result.methods:
        color = _COLORS.get(m, "#7f7f7f")
        recs = [r for r in result.records if r["method"] == m]
        if metric == "auroc" and all("auroc_ci" in r["test"] for r in recs):
            lo = [r["test"]["auroc_ci"][0] for r in recs]
            hi = [r["test"]["auroc_ci"][1] for r in recs]
            fig.add_trace(go.Scatter(x=layers + layers[::-1], y=hi + lo[::-1], fill="toself", fillcolor=_rgba(color, 0.15),
                                     line=dict(width=0), hoverinfo="skip", showlegend=False, legendgroup=m))
        fig.add_trace(go.Scatter(x=layers, y=result.curve(metric, "test", m), mode="lines+markers", name=f"{_NAMES.get(m, m)} (test)",
                                 line=dict(color=color), legendgroup=m))
        fig.add_trace(go.Scatter(x=layers, y=result.curve(metric, "val", m), mode="lines", name=f"{_NAMES.get(m, m)} (val)",
                                 line=dict(color=color, dash="dash", width=1), legendgroup=m))
        if metric == "auroc" and all("shuffle_auroc" in r["control"] for r in recs):
            fig.add_trace(go.Scatter(x=layers, y=result.curve("shuffle_auroc", method=m), mode="lines",
                                     name=f"{_NAMES.get(m, m)} label-shuffle control", line=dict(color=color, dash="dot", width=1),
                                     legendgroup=m))
    if metric == "auroc" and all("random_auroc" in r["control"] for r in result.records):
        fig.add_trace(go.Scatter(x=layers, y=result.curve("random_auroc", method=result.methods[0]), mode="lines",
                                 name="random-direction control", line=dict(color="#7f7f7f", dash="dot")))
    b = result.best
    fig.add_trace(go.Scatter(x=[b["layer"]], y=[b["test"][metric]], mode="markers", name=f"chosen on val: {b['method']} @ {b['layer']}",
                             marker=dict(symbol="star", size=16, color="gold", line=dict(color="black", width=1))))
    fig.update_layout(title=f"Probe {metric} by layer ({result.hook}; CI: 95% bootstrap, test split)",
                      xaxis_title="layer", yaxis_title=metric, template="plotly_white", hovermode="x unified")
    return fig


def score_histogram(result: "LayerSweep", nbins: int = 30) -> "go.Figure":
    """Test-split scores (log-odds) of the chosen probe, one histogram per class."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for k, cls in enumerate(result.classes):
        fig.add_trace(go.Histogram(x=result.test_scores[result.test_labels == k], name=f"label {cls}", opacity=0.6, nbinsx=nbins))
    b = result.best
    fig.update_layout(barmode="overlay", template="plotly_white", xaxis_title="probe score (log-odds)", yaxis_title="count",
                      title=f"Test scores of {b['method']} @ layer {b['layer']} (AUROC {b['test']['auroc']:.3f})")
    fig.add_vline(x=0, line_dash="dash", line_color="gray")
    return fig


def generalization_heatmap(gen: "GeneralizationResult") -> "go.Figure":
    """Train domain (rows) × test domain (columns) AUROC, annotated."""
    import plotly.graph_objects as go

    text = [[f"{v:.2f}" for v in row] for row in gen.auroc]
    fig = go.Figure(go.Heatmap(z=gen.auroc, x=list(gen.domains), y=list(gen.domains), zmin=0, zmax=1, colorscale="RdBu",
                               zmid=0.5, text=text, texttemplate="%{text}", colorbar=dict(title="AUROC")))
    where = f" at layer {gen.layer}" if gen.layer is not None else ""
    fig.update_layout(title=f"Generalisation: train on row, test on column ({gen.method}{where})", template="plotly_white",
                      xaxis_title="test domain", yaxis_title="train domain", yaxis_autorange="reversed")
    return fig


def projection(
    X: Float[np.ndarray | torch.Tensor, "n d"],
    labels: Shaped[np.ndarray, " n"],
    probe: "_LinearProbe | None" = None,
    *,
    title: str | None = None,
) -> "go.Figure":
    """2-D scatter of activations coloured by label: x = the probe direction, y = the top
    principal component orthogonal to it (without a probe: the top two principal components)."""
    import plotly.graph_objects as go

    X = X.detach().to("cpu", torch.float32).numpy() if isinstance(X, torch.Tensor) else np.asarray(X, dtype=np.float32)
    labels = np.asarray(labels)
    if len(X) != len(labels):
        raise ValueError(f"X has {len(X)} rows but labels has {len(labels)}")
    Xc = X - X.mean(0)
    if probe is not None:
        u = probe.direction.numpy()
        a = Xc @ u
        rest = Xc - np.outer(a, u)
        v = np.linalg.svd(rest, full_matrices=False)[2][0]
        b, axes = rest @ v, ("probe direction", "top PC orthogonal to it")
    else:
        vt = np.linalg.svd(Xc, full_matrices=False)[2]
        a, b, axes = Xc @ vt[0], Xc @ vt[1], ("PC 1", "PC 2")
    fig = go.Figure()
    for cls in np.unique(labels):
        k = labels == cls
        fig.add_trace(go.Scatter(x=a[k], y=b[k], mode="markers", name=f"label {cls}", marker=dict(size=6, opacity=0.7)))
    fig.update_layout(title=title or "Activations projected to 2-D", xaxis_title=axes[0], yaxis_title=axes[1], template="plotly_white")
    return fig
