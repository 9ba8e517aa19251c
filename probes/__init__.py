"""probes: linear concept probes over captured activations, layer sweeps with honest held-out
metrics and controls, cross-domain generalisation, live per-token monitoring, plots and reports.

    result = probes.sweep_layers(steerlens.capture(model, prompts, "resid_post", labels=y))
    with probes.ProbeMonitor(model, {"truth": result.probe}) as mon:
        model.generate(prompt, do_sample=False, verbose=False)
    mon.scores["truth"]

The truth-probe recipe: train on affirmations and their negations together, choose the layer by
leave-one-family-out transfer, report per family and at a neutral-text operating point:

    rows = probes.labelled_rows("truth")           # truthfulness + negations, groups kept
    result = probes.sweep_layers(acts, lofo="family", select="lofo")
    probes.transfer_report(result, acts, others={"arithmetic": arith}, control=neutral).table()
"""

from importlib import import_module
from typing import TYPE_CHECKING

__all__ = [
    "GeneralizationResult", "LDAProbe", "LayerSweep", "LogisticProbe", "MeanDiffProbe", "ProbeMonitor",
    "TransferReport", "generalization_matrix", "grouped_split", "labelled_rows", "load_probe", "save_probe",
    "sweep_layers", "transfer_report", "write_report",
]

_LAZY = {
    "LogisticProbe": "probes.estimators", "MeanDiffProbe": "probes.estimators", "LDAProbe": "probes.estimators",
    "LayerSweep": "probes.sweep", "sweep_layers": "probes.sweep",
    "GeneralizationResult": "probes.generalize", "generalization_matrix": "probes.generalize",
    "ProbeMonitor": "probes.monitor", "grouped_split": "probes.splits", "labelled_rows": "probes.datasets",
    "TransferReport": "probes.transfer", "transfer_report": "probes.transfer",
    "load_probe": "probes.io", "save_probe": "probes.io", "write_report": "probes.report",
}

if TYPE_CHECKING:
    from probes.datasets import labelled_rows
    from probes.estimators import LDAProbe, LogisticProbe, MeanDiffProbe
    from probes.generalize import GeneralizationResult, generalization_matrix
    from probes.io import load_probe, save_probe
    from probes.monitor import ProbeMonitor
    from probes.report import write_report
    from probes.splits import grouped_split
    from probes.sweep import LayerSweep, sweep_layers
    from probes.transfer import TransferReport, transfer_report


def __getattr__(name: str):
    # Lazy: `import probes` stays cheap; scikit-learn, torch and plotly load on first use.
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'probes' has no attribute {name!r}")
