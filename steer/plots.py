"""Plotly figures for steering sweeps: behaviour against cost (KL, perplexity ratio), with the
random same-norm control beside the vector."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from steer.evaluate import SteeringSweep


def tradeoff_figure(result: "SteeringSweep") -> "go.Figure":
    """Two panels: behaviour vs KL on neutral text, and behaviour vs perplexity ratio. Each marker
    is one coefficient (labelled); the control is dashed. Without a behaviour score, the panels
    show KL and perplexity ratio against the coefficient instead."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    has_behaviour = result.points and result.points[0].behaviour is not None
    if has_behaviour:
        titles = ("behaviour vs KL (nats, neutral text)", "behaviour vs perplexity ratio")
        axes = [("kl", "KL(p_base ‖ p_steered), nats"), ("ppl_ratio", "perplexity / unsteered perplexity")]
    else:
        titles = ("KL vs coefficient", "perplexity ratio vs coefficient")
        axes = [("coeff", "coefficient"), ("coeff", "coefficient")]
    fig = make_subplots(rows=1, cols=2, subplot_titles=titles)
    runs = [("vector", result.points, "solid", "#1f77b4"), ("random control", result.control, "dash", "#7f7f7f")]
    for col, (xkey, xlabel) in enumerate(axes, start=1):
        for name, points, dash, color in runs:
            if not points:
                continue
            x = [getattr(p, xkey) for p in points]
            if has_behaviour:
                y = [p.behaviour for p in points]
            else:
                y = [p.kl if col == 1 else p.ppl_ratio for p in points]
            fig.add_trace(go.Scatter(
                x=x, y=y, mode="lines+markers+text", name=name, legendgroup=name, showlegend=col == 1,
                text=[f"{p.coeff:g}" for p in points], textposition="top center",
                line=dict(dash=dash, color=color),
                hovertemplate="coeff %{text}<br>x %{x:.4g}<br>y %{y:.4g}<extra>" + name + "</extra>"), row=1, col=col)
        fig.update_xaxes(title_text=xlabel, row=1, col=col)
    ylabel = f"behaviour ({result.behaviour})" if has_behaviour else ""
    fig.update_yaxes(title_text=ylabel or "KL, nats", row=1, col=1)
    fig.update_yaxes(title_text=ylabel or "perplexity ratio", row=1, col=2)
    vec = result.meta.get("vector", {})
    fig.update_layout(title=f"Steering trade-off: {vec.get('method', '')} vector, layers {result.meta.get('layers')}, "
                            f"op {result.meta.get('op')}", height=480, width=1100, template="plotly_white")
    return fig
