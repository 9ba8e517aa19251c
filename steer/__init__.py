"""steer: steering vectors computed from contrastive data, injected during generation (per batch row,
KV-cache correct), evaluated against their cost, calibrated, saved, and exported to llama.cpp;
LEACE concept erasers fitted on captured activations and applied the same way.

    v = steer.compute(model, "sentiment")                        # mean_diff of the pairs, every layer
    v = steer.calibrate(model, v)                                # largest coeff with KL <= 0.1 nats
    v = steer.calibrate(model, v, target_shift=0.3, ppl_budget=1.3)  # smallest coeff moving an outside judge
    with steer.apply(model, v, coeff=v.coeff, positions="all"):
        model.generate(...)
    steer.generate(model, prompts, [v1, v2, None], coeff=[4, 2, 0])   # one vector per row
    with steer.apply(model, steer.fit_eraser(acts, layers=[6]), op="leace"): ...   # LEACE erasure
    steer.export_gguf(v, "v.gguf")
"""

from importlib import import_module
from typing import TYPE_CHECKING

__all__ = [
    "ConceptEraser", "SteeringVector", "actadd", "apply", "calibrate", "compute", "export_gguf", "fit_eraser",
    "from_probe", "generate", "import_gguf", "mean_diff", "pca", "sweep", "write_report",
]

_LAZY = {
    "SteeringVector": "steer.vector", "ConceptEraser": "steer.leace", "fit_eraser": "steer.leace",
    "actadd": "steer.computing", "compute": "steer.computing", "from_probe": "steer.computing",
    "mean_diff": "steer.computing", "pca": "steer.computing",
    "apply": "steer.steering", "generate": "steer.generation",
    "calibrate": "steer.evaluate", "sweep": "steer.evaluate",
    "export_gguf": "steer.gguf_io", "import_gguf": "steer.gguf_io",
    "write_report": "steer.report",
}

if TYPE_CHECKING:
    from steer.leace import ConceptEraser, fit_eraser
    from steer.generation import generate
    from steer.steering import apply
    from steer.computing import actadd, compute, from_probe, mean_diff, pca
    from steer.evaluate import calibrate, sweep
    from steer.gguf_io import export_gguf, import_gguf
    from steer.report import write_report
    from steer.vector import SteeringVector


#: submodules reachable as attributes after a bare ``import steer`` (``steer.judges.VaderJudge``)
_SUBMODULES = ("evaluate", "judges", "plots")


def __getattr__(name: str):
    # Lazy, so `import steer` (and the CLI's --help) does not import torch/transformer-lens.
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    if name in _SUBMODULES:
        return import_module(f"steer.{name}")
    raise AttributeError(f"module 'steer' has no attribute {name!r}")
