"""editing: causal tracing, ROME rank-one weight edits and erasures, and their evaluation.

Happy path::

    handle = editing.edit(model, request)        # ROME (r-ROME key), returns a handle
    report = editing.evaluate_edits(model, [request])   # before/after CounterFact-style metrics
    handle.revert()                              # bit-exact
    with editing.edited(model, request): ...     # temporary edit
    handle = editing.orthogonalize(model, direction)  # directional ablation baked into the weights
    with editing.ablated(model, direction): ...  # the same intervention through hooks
    result = editing.run_erasure(model, {"methods": ["leace", "leace_family"], "layer": 6})   # concept erasure
    editing.write_report(result, "runs/erase")
"""

from importlib import import_module
from typing import TYPE_CHECKING

__all__ = [
    "EditHandle", "RomeConfig", "ablated", "causal_trace", "edit", "edited", "erase", "evaluate", "evaluate_edits",
    "key_statistics", "orthogonalize", "orthogonalized", "run_erasure", "run_experiment", "write_report",
]
# Also public, one level down: editing.covariance.CovarianceFitter, editing.rome.rank_one_update,
# editing.orthogonalization.Orthogonalization (the handle orthogonalize returns).

_LAZY = {
    "key_statistics": "editing.covariance",
    "EditHandle": "editing.rome",
    "RomeConfig": "editing.rome",
    "edit": "editing.rome",
    "edited": "editing.rome",
    "erase": "editing.rome",
    "causal_trace": "editing.tracing",
    "evaluate": "editing.evaluation",
    "evaluate_edits": "editing.evaluation",
    "write_report": "editing.report",
    "run_experiment": "editing.experiment",
    "ablated": "editing.orthogonalization",
    "orthogonalize": "editing.orthogonalization",
    "orthogonalized": "editing.orthogonalization",
    "run_erasure": "editing.erasure",
}

if TYPE_CHECKING:
    from editing.covariance import key_statistics
    from editing.erasure import run_erasure
    from editing.evaluation import evaluate, evaluate_edits
    from editing.experiment import run_experiment
    from editing.orthogonalization import ablated, orthogonalize, orthogonalized
    from editing.report import write_report
    from editing.rome import EditHandle, RomeConfig, edit, edited, erase
    from editing.tracing import causal_trace


#: public submodules, reachable as attributes after `import editing` (e.g. editing.sites.down_proj)
_MODULES = {"covariance", "erasure", "erasure_report", "evaluation", "experiment", "orthogonalization", "prompts", "report", "rome", "sites", "tracing"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    if name in _MODULES:
        return import_module(f"editing.{name}")
    raise AttributeError(f"module 'editing' has no attribute {name!r}")
