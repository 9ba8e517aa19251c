"""Plotly figures for steering: a sweep's behaviour against cost (KL, perplexity ratio), with the
random same-norm control beside the vector; a behaviour calibration's effect–cost curve."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from steer.evaluate import SteeringSweep
    from steer.vector import SteeringVector


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


def calibration_figure(calibration: "dict | SteeringVector") -> "go.Figure":
    """The effect–cost curve of ``calibrate(target_shift=...)``: judged shift against the
    coefficient and against the perplexity ratio on neutral text (degenerate rate and KL on
    hover), the target as a dotted line and the chosen coefficient as a star."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    cal = calibration.info.get("calibration") if hasattr(calibration, "info") else calibration
    if not isinstance(cal, dict) or cal.get("mode") != "behaviour":
        raise ValueError("calibration_figure needs the info['calibration'] of calibrate(target_shift=...)")
    tried = cal["tried"]
    chosen = next(t for t in tried if t["coeff"] == cal["coeff"])
    fig = make_subplots(rows=1, cols=2, subplot_titles=("shift vs coefficient", "shift vs perplexity ratio (cost)"))
    for col, key in ((1, "coeff"), (2, "ppl_ratio")):
        fig.add_trace(go.Scatter(
            x=[t[key] for t in tried], y=[t["shift"] for t in tried], mode="lines+markers", name="tried",
            showlegend=col == 1, line=dict(color="#1f77b4"),
            customdata=[[t["coeff"], t["kl"], t["degenerate"]] for t in tried],
            hovertemplate="coeff %{customdata[0]:.3g}<br>shift %{y:.3f}<br>KL %{customdata[1]:.3f}"
                          "<br>degenerate %{customdata[2]:.2f}<extra></extra>"), row=1, col=col)
        fig.add_trace(go.Scatter(x=[chosen[key]], y=[chosen["shift"]], mode="markers", name="chosen",
                                 showlegend=col == 1, marker=dict(symbol="star", size=16, color="#d62728")),
                      row=1, col=col)
        fig.add_hline(y=cal["target_shift"], line_dash="dot", line_color="#7f7f7f", row=1, col=col)
    fig.update_xaxes(title_text="coefficient", type="log", row=1, col=1)
    fig.update_xaxes(title_text="perplexity / unsteered perplexity", row=1, col=2)
    fig.update_yaxes(title_text=f"shift in {cal['metric']} ({cal['judge']})", row=1, col=1)
    fig.update_layout(title=f"Calibration to a behaviour shift of {cal['target_shift']:g}: coefficient "
                            f"{chosen['coeff']:.3g}" + ("" if cal["reached"] else " (target not reached)"),
                      height=480, width=1100, template="plotly_white")
    return fig
