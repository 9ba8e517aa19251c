"""Concept-erasure experiments: erase a concept with LEACE (Belrose et al. 2023, arXiv:2306.03819),
sequential scrubbing (ibid. §6) or directional ablation (Arditi et al. 2024, arXiv:2406.11717),
then measure both halves of the claim: a probe re-trained on erased activations cannot read the
concept (held-out groups, and a family the eraser never saw), and the model's other behaviour
barely changed (an unrelated concept's probe, KL and perplexity on neutral text, greedy text),
every method next to a same-rank random-subspace control.

    result = editing.run_erasure(model, {"dataset": "truthfulness", "methods": ["leace", "leace_family"],
                                         "layer": 6})
    result.summary()            # one row per method: AUROC before/after, out of family, KL, random control
    result.figures()            # plotly figures
    editing.write_report(result, "runs/erase")
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
import torch
from jaxtyping import Float

from steer.inputs import is_int

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

    from steer.leace import ConceptEraser
    from steerlens.activations import Activations

Method = Literal["leace", "leace_negations", "leace_family", "iterated", "ablation", "scrub"]
METHODS: tuple[str, ...] = get_args(Method)
#: methods whose eraser is fitted at ``layer`` alone, so its effect there is computed offline
_ONE_LAYER = ("leace", "leace_negations", "leace_family", "iterated")


@dataclasses.dataclass(frozen=True)
class ErasureSpec:
    """What an erasure experiment erases, how, and what it measures (``steerlens erase run spec.json``).

    ``dataset``: a shipped labelled dataset (``probes.labelled_rows``) holding the concept in the
    row field ``concept`` (two classes); ``control``: a dataset whose concept must survive (``None``:
    none). ``methods``: any of ``METHODS``. ``layer``: the block whose ``resid_post`` is erased;
    ``scrub_layers`` (default ``0..layer``) for ``scrub``. ``probe_layers``: where probes are
    re-trained before/after (default ``[layer]``; ``"all"``: every layer). ``family``: the row field
    of held-out families (``heldout_families``, default all). ``negations``: the dataset added for
    ``leace_negations``. ``C``: the re-trained probes' inverse regularisation (``None``: chosen by
    grouped cross-validation on each training split). ``rounds``/``chance``: the iterated method's limits. ``limit``: at most this
    many rows per dataset (whole groups, seeded). ``prompts``/``max_new_tokens``: greedy samples. ``fractions``: the
    grouped split of the concept's rows into the eraser's fitting rows (also the re-trained probe's
    training rows), rows the eraser never saw (the ``concept_unseen`` probe's training rows) and
    held-out test rows.
    """

    dataset: str = "truthfulness"
    concept: str = "label"
    control: str | None = "harmfulness"
    methods: tuple[str, ...] = ("leace",)
    layer: int = 6
    scrub_layers: tuple[int, ...] | None = None
    probe_layers: tuple[int, ...] | Literal["all"] | None = None
    family: str = "family"
    heldout_families: tuple[str, ...] | None = None
    negations: str = "negations"
    C: float | None = None
    rounds: int = 4
    chance: float = 0.55
    limit: int | None = None
    fractions: tuple[float, float, float] = (0.5, 0.25, 0.25)
    prompts: tuple[str, ...] = ("The capital of France is", "Water freezes at a temperature of")
    max_new_tokens: int = 16
    batch_size: int = 32
    seed: int = 0
    model: str = "gemma-3-270m"

    def __post_init__(self) -> None:
        def req(ok: bool, field: str, value: Any, allowed: str) -> None:
            if not ok:
                raise ValueError(f"erasure spec: {field} = {value!r} is not allowed; {field} must be {allowed}")

        for f in ("dataset", "concept", "family", "negations", "model"):
            req(isinstance(getattr(self, f), str) and bool(getattr(self, f)), f, getattr(self, f), "a non-empty string")
        req(self.control is None or (isinstance(self.control, str) and bool(self.control)), "control", self.control,
            "a dataset name or null")
        methods = tuple(self.methods) if isinstance(self.methods, (list, tuple)) else self.methods
        req(isinstance(methods, tuple) and bool(methods), "methods", self.methods, f"a non-empty list of {list(METHODS)}")
        for i, m in enumerate(methods):
            req(m in METHODS, f"methods[{i}]", m, f"one of {list(METHODS)}")
        req(len(set(methods)) == len(methods), "methods", self.methods, "a list without repeats")
        object.__setattr__(self, "methods", methods)
        req(is_int(self.layer) and self.layer >= 0, "layer", self.layer, "a non-negative block index")
        for f in ("scrub_layers", "heldout_families", "prompts"):
            v = getattr(self, f)
            if v is not None:
                req(isinstance(v, (list, tuple)) and bool(v), f, v, "a non-empty list")
                object.__setattr__(self, f, tuple(v))
        if self.scrub_layers is not None:
            for i, v in enumerate(self.scrub_layers):
                req(is_int(v) and v >= 0, f"scrub_layers[{i}]", v, "a non-negative block index")
        pl = self.probe_layers
        if pl is not None and pl != "all":
            req(isinstance(pl, (list, tuple)) and bool(pl), "probe_layers", pl, "a non-empty list of block indices or 'all'")
            for i, v in enumerate(pl):
                req(is_int(v) and v >= 0, f"probe_layers[{i}]", v, "a non-negative block index")
            object.__setattr__(self, "probe_layers", tuple(sorted(set(pl))))
        req(self.prompts is not None and all(isinstance(p, str) and p for p in self.prompts), "prompts", self.prompts,
            "a list of non-empty strings")
        for f in ("rounds", "max_new_tokens", "batch_size"):
            req(is_int(getattr(self, f)) and getattr(self, f) >= 1, f, getattr(self, f), "an integer >= 1")
        req(self.limit is None or (is_int(self.limit) and self.limit >= 10), "limit", self.limit, "null or an integer >= 10")
        req(is_int(self.seed), "seed", self.seed, "an integer")
        req(self.C is None or (isinstance(self.C, (int, float)) and not isinstance(self.C, bool) and self.C > 0), "C",
            self.C, "null or a positive number")
        req(isinstance(self.chance, (int, float)) and 0.5 <= self.chance < 1, "chance", self.chance, "a number in [0.5, 1)")
        fr = self.fractions
        req(isinstance(fr, (list, tuple)) and len(fr) == 3 and all(isinstance(v, (int, float)) and v > 0 for v in fr),
            "fractions", fr, "three positive numbers (eraser fit, probe train, probe test)")
        object.__setattr__(self, "fractions", tuple(float(v) for v in fr))

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> "ErasureSpec":
        """A spec from a JSON object; an unknown key is an error naming it and the allowed keys."""
        if not isinstance(spec, Mapping):
            raise TypeError(f"an erasure spec must be an object, got {type(spec).__name__}")
        allowed = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(spec) - set(allowed))
        if unknown:
            raise ValueError(f"unknown erasure spec keys {unknown}; allowed: {allowed}")
        return cls(**dict(spec))

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    def check(self, model: "TransformerBridge") -> None:
        """Raise ``ValueError`` naming the field when a layer is outside the model."""
        n = int(model.cfg.n_layers)
        named = [("layer", self.layer)] + [(f"scrub_layers[{i}]", v) for i, v in enumerate(self.scrub_layers or ())]
        if isinstance(self.probe_layers, tuple):
            named += [(f"probe_layers[{i}]", v) for i, v in enumerate(self.probe_layers)]
        for field, v in named:
            if not 0 <= v < n:
                raise ValueError(f"erasure spec: {field} = {v} is out of range for a model with {n} layers (0..{n - 1})")


@dataclasses.dataclass(frozen=True)
class ErasureResult:
    """The numbers of one experiment (``run_erasure``), JSON-ready through ``to_dict``.

    ``before``: ``{"concept": {layer: AUROC}, "concept_unseen": {...}, "control": {layer: AUROC},
    "perplexity", "generations"}``: test AUROC on held-out groups of a probe re-trained per layer on
    the eraser's own fitting rows (``concept``, the usual protocol) or on a further part of the
    groups the eraser never saw (``concept_unseen``: does the erasure carry over to new statements of
    the same kind?). ``methods``: per method the same after
    erasure plus ``kl`` (nats/token vs the unerased model), ``rank``, ``layers``, ``out_of_family``
    (``{"by_family": {f: {"before", "after"}}, "mean", "max"}``, or ``None`` where not computed,
    with the reason in ``notes``), ``random`` (a same-rank random subspace at the same layers:
    ``kl``, ``perplexity``, ``concept``), ``notes``. ``erasers``: the fitted ``ConceptEraser`` (or
    the ablation direction) of each method.
    """

    spec: ErasureSpec
    layers: tuple[int, ...]
    before: dict
    methods: dict
    info: dict = dataclasses.field(default_factory=dict)
    erasers: dict = dataclasses.field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return _jsonable({"spec": self.spec.to_dict(), "layers": list(self.layers), "before": self.before,
                          "methods": self.methods, "info": self.info, "summary": self.summary()})

    def summary(self) -> list[dict[str, Any]]:
        """One row per method: AUROC at ``spec.layer`` before/after (concept, control), out of
        family (mean and max over held-out families), KL, perplexity, and the random control's."""
        L = self.spec.layer
        rows = []
        for name, m in self.methods.items():
            oof = m.get("out_of_family") or {}
            rows.append({
                "method": name, "rank": m["rank"], "concept_before": self.before["concept"].get(L),
                "concept_after": m["concept"].get(L), "concept_unseen_before": self.before["concept_unseen"].get(L),
                "concept_unseen_after": m["concept_unseen"].get(L), "control_before": self.before["control"].get(L),
                "control_after": m["control"].get(L), "out_of_family_mean": oof.get("mean"),
                "out_of_family_max": oof.get("max"), "kl": m["kl"], "perplexity": m["perplexity"],
                "random_kl": m["random"]["kl"], "random_perplexity": m["random"]["perplexity"],
                "random_concept_after": m["random"]["concept"].get(L),
            })
        return rows

    def figures(self) -> list:
        """Plotly figures: concept and control AUROC by layer before/after each method; out-of-family
        AUROC per method; KL of each method next to its random control."""
        import plotly.graph_objects as go

        figs = []
        for key, title in (("concept", f"'{self.spec.concept}' of {self.spec.dataset}: re-trained probe AUROC (held-out groups)"),
                           ("control", f"control concept ({self.spec.control}): re-trained probe AUROC")):
            if not self.before[key]:
                continue
            layers = sorted(self.before[key])
            fig = go.Figure([go.Scatter(x=layers, y=[self.before[key][layer] for layer in layers], name="before", mode="lines+markers")])
            for name, m in self.methods.items():
                ls = sorted(m[key])
                fig.add_trace(go.Scatter(x=ls, y=[m[key][layer] for layer in ls], name=name, mode="lines+markers"))
            fig.add_hline(y=0.5, line_dash="dot")
            fig.update_layout(title=title, xaxis_title="layer", yaxis_title="AUROC", yaxis_range=[0.3, 1.02])
            figs.append(fig)
        names = list(self.methods)
        oof = [(self.methods[n].get("out_of_family") or {}).get("mean") for n in names]
        fig = go.Figure([go.Bar(x=names, y=oof, name="after (mean over held-out families)")])
        fig.add_hline(y=0.5, line_dash="dot")
        fig.update_layout(title="Out of family: probe re-trained on a family the eraser never saw", yaxis_title="AUROC",
                          yaxis_range=[0.3, 1.02])
        figs.append(fig)
        fig = go.Figure([go.Bar(x=names, y=[self.methods[n]["kl"] for n in names], name="method"),
                         go.Bar(x=names, y=[self.methods[n]["random"]["kl"] for n in names], name="random subspace, same rank")])
        fig.update_layout(title="KL on neutral text (nats/token)", barmode="group", yaxis_title="KL")
        figs.append(fig)
        return figs


# -- the runner -----------------------------------------------------------------------------------
def run_erasure(model: "TransformerBridge", spec: ErasureSpec | Mapping[str, Any], *,
                acts: Mapping[str, "Activations"] | None = None, progress: bool = True) -> ErasureResult:
    """Run an erasure experiment (``ErasureSpec`` or its dict) on ``model``.

    Rows of ``spec.dataset`` are split by group (``probes.grouped_split``, ``fractions``) three
    ways: every eraser is fitted on the first part only; a ``LogisticProbe`` is re-trained on the
    erased first part (``concept``) or the erased second part (``concept_unseen``) and scored on the
    erased third, held-out groups (the control dataset's probe trains on the first two parts). ``acts``:
    activations already captured (``{dataset name: Activations}``, last-token ``resid_post`` of
    every row of ``probes.labelled_rows(name)``, in order) reused instead of capturing again.
    """
    from threadpoolctl import threadpool_limits
    from tqdm.auto import tqdm

    from steerlens.neutral import next_token_logprobs, next_tokens, perplexity

    spec = spec if isinstance(spec, ErasureSpec) else ErasureSpec.from_dict(spec)
    spec.check(model)
    n_layers = int(model.cfg.n_layers)
    probe_layers = tuple(range(n_layers)) if spec.probe_layers == "all" else (spec.probe_layers or (spec.layer,))
    acts = dict(acts or {})
    ds = _Data.load(model, spec, spec.dataset, spec.concept, acts, tuple(sorted({*probe_layers, spec.layer})))
    ctrl = (_Data.load(model, spec, spec.control, "label", acts, probe_layers) if spec.control else None)
    ex = _Experiment(model, spec, ds, ctrl, acts)

    with threadpool_limits(limits=1):  # small logistic fits run fastest single-threaded
        pairs = {layer: ex.both(ds, ds.X[layer]) for layer in probe_layers}
        before = {"concept": {k: v[0] for k, v in pairs.items()}, "concept_unseen": {k: v[1] for k, v in pairs.items()},
                  "control": {layer: ex.heldout(ctrl, ctrl.X[layer]) for layer in probe_layers} if ctrl else {}}
    ref = next_token_logprobs(model)
    targets = next_tokens(model)
    before["perplexity"] = perplexity(ref, targets)
    before["generations"] = _generate(model, spec, contextlib.nullcontext())
    methods, erasers = {}, {}
    for name in tqdm(spec.methods, desc="erasure methods", unit="method", disable=not progress):
        with threadpool_limits(limits=1):
            m, obj = ex.method(name, probe_layers, ref, targets)
        methods[name], erasers[name] = m, obj
    info = {"n_rows": len(ds.rows), "n_control_rows": len(ctrl.rows) if ctrl else 0, "probe": "LogisticProbe",
            "split": {"eraser_fit": int(len(ds.fit)), "probe_train": int(len(ds.tr)), "probe_test": int(len(ds.te))}, "ablation": "editing.ablated (every residual write)",
            "model": getattr(model.cfg, "model_name", None)}
    return ErasureResult(spec, tuple(probe_layers), before, methods, info=info, erasers=erasers)


class _Data:
    """One dataset's rows, labels (0/1), groups, families, train/test split and activations by layer."""

    def __init__(self, rows: list[dict], y: np.ndarray, X: dict[int, np.ndarray], spec: ErasureSpec, name: str):
        from probes.splits import grouped_split

        self.name, self.rows, self.y, self.X = name, rows, y, X
        self.prompts = [r["prompt"] for r in rows]
        self.groups = np.asarray([str(r.get("group", i)) for i, r in enumerate(rows)])
        self.family = (np.asarray([str(r[spec.family]) for r in rows]) if rows and all(r.get(spec.family) is not None for r in rows)
                       else None)
        self.fit, self.tr, self.te = grouped_split(y, self.groups, fractions=spec.fractions, seed=spec.seed)
        if name == spec.dataset:  # the probe re-trained on the eraser's own rows, and on rows it never saw
            self.probe_tr, self.unseen_tr = self.fit, self.tr
        else:  # nothing is fitted on a control dataset: its probe trains on both parts
            self.probe_tr, self.unseen_tr = np.sort(np.concatenate([self.fit, self.tr])), None

    @classmethod
    def load(cls, model, spec: ErasureSpec, name: str, concept: str, acts: dict, layers: Sequence[int]) -> "_Data":
        from probes.datasets import labelled_rows

        rows = labelled_rows(name)
        field = "concept" if name == spec.dataset else "control"
        if any(concept not in r for r in rows):
            raise ValueError(f"erasure spec: concept = {concept!r} is not a field of every row of {name!r} "
                             f"(fields: {sorted(rows[0])})")
        idx = _subsample(rows, spec.limit, spec.seed)
        rows = [rows[i] for i in idx]
        classes, y = np.unique(np.asarray([r[concept] for r in rows]), return_inverse=True)
        if len(classes) != 2:
            raise ValueError(f"erasure spec: the {field} {concept!r} of {name!r} has {len(classes)} class(es) "
                             f"{[_py(c) for c in classes[:5]]}; an erasure experiment needs exactly two")
        X = _activations(model, spec, name, rows, idx, acts, layers)
        return cls(rows, y.astype(np.int64), X, spec, name)


class _Experiment:
    def __init__(self, model, spec: ErasureSpec, ds: _Data, ctrl: _Data | None, acts: dict):
        self.model, self.spec, self.ds, self.ctrl, self.acts = model, spec, ds, ctrl, acts
        self._negations: _Data | None = None
        self._oof_before: dict[str, float] = {}
        from steerlens.models import fingerprint, model_name

        self.prov = {"model_name": model_name(model), "fingerprint": fingerprint(model), "dataset": spec.dataset}

    # -- probes ---------------------------------------------------------------------------------
    def heldout(self, d: _Data, X: np.ndarray, tr: np.ndarray | None = None, te: np.ndarray | None = None) -> float:
        """Test AUROC (held-out groups) of a ``LogisticProbe`` re-trained on ``X[tr]`` (default: the
        eraser's fitting rows)."""
        return _probe_auroc(X, d.y, d.groups, d.probe_tr if tr is None else tr, d.te if te is None else te, self.spec)

    def both(self, d: _Data, X: np.ndarray) -> tuple[float, float | None]:
        """``heldout`` with the probe trained on the eraser's rows, and on rows the eraser never saw."""
        return self.heldout(d, X), (None if d.unseen_tr is None else self.heldout(d, X, d.unseen_tr))

    # -- one method -----------------------------------------------------------------------------
    def method(self, name: str, probe_layers, ref, targets) -> tuple[dict, Any]:
        from steer.leace import ConceptEraser
        from steerlens.neutral import kl, next_token_logprobs, perplexity

        spec, ds, L = self.spec, self.ds, self.spec.layer
        notes: list[str] = []
        if name == "scrub":
            eraser, pre = self.scrub(ds.fit)
            concept = {layer: self.both(ds, _erase(eraser, layer, pre[layer])) for layer in eraser.layers}
            rest = [layer for layer in probe_layers if layer not in concept]
            concept.update(self.after(ds, eraser, rest))
            concept = dict(sorted(concept.items()))
            obj, rank, layers = eraser, _rank(eraser), eraser.layers
        elif name == "ablation":
            v = self.direction(ds.X[L][ds.fit], ds.y[ds.fit], ds.groups[ds.fit])
            concept = self.after(ds, v, probe_layers)
            obj, rank, layers = v, 1, list(range(int(self.model.cfg.n_layers)))
        else:
            eraser = self.fit(name, ds.fit)
            concept = self.after(ds, eraser, probe_layers)
            obj, rank, layers = eraser, _rank(eraser), eraser.layers
        control = {k: v[0] for k, v in self.after(self.ctrl, obj, probe_layers).items()} if self.ctrl else {}
        with _context(self.model, obj):
            cur = next_token_logprobs(self.model)
        gens = _generate(self.model, spec, _context(self.model, obj))
        oof = self.out_of_family(name, notes)
        # the same-rank random control at the same layers (same centring for erasers)
        rnd = _random_like(obj, rank, spec.seed, ds.X[L].shape[1])
        with _context(self.model, rnd):
            cur_r = next_token_logprobs(self.model)
        rnd_concept = {}
        if isinstance(rnd, ConceptEraser) and L in rnd.layers and min(rnd.layers) == L:
            rnd_concept[L] = self.heldout(ds, _erase(rnd, L, ds.X[L]))
        elif isinstance(rnd, torch.Tensor):
            rnd_concept[L] = self.heldout(ds, _project_out(ds.X[L], rnd))
            notes.append("random control's AUROC: the random direction projected out at the erased layer only")
        out = {"rank": rank, "layers": list(layers), "concept": {k: v[0] for k, v in concept.items()},
               "concept_unseen": {k: v[1] for k, v in concept.items()}, "control": control,
               "kl": kl(ref, cur), "perplexity": perplexity(cur, targets), "generations": gens,
               "out_of_family": oof,
               "random": {"rank": rank, "kl": kl(ref, cur_r), "perplexity": perplexity(cur_r, targets), "concept": rnd_concept},
               "notes": notes}
        if name == "iterated":
            out["rounds"] = self._rounds
        return out, obj

    def after(self, d: _Data, obj: Any, layers: Sequence[int]) -> dict[int, tuple[float, float | None]]:
        """Held-out AUROC at ``layers`` with ``obj`` applied: offline where exact (an eraser at one
        layer, read at that layer or below), else through a capture under the intervention."""
        from steer.leace import ConceptEraser

        out, recapture = {}, []
        for layer in layers:
            if isinstance(obj, ConceptEraser) and layer < min(obj.layers):
                out[layer] = self.both(d, d.X[layer])
            elif isinstance(obj, ConceptEraser) and obj.layers == [layer]:
                out[layer] = self.both(d, _erase(obj, layer, d.X[layer]))
            else:
                recapture.append(layer)
        if recapture:
            X = _capture(self.model, d.prompts, recapture, self.spec.batch_size, _context(self.model, obj))
            out.update({layer: self.both(d, X[layer]) for layer in recapture})
        return dict(sorted(out.items()))

    # -- fitting ----------------------------------------------------------------------------------
    def fit(self, name: str, idx: np.ndarray, ds: _Data | None = None) -> "ConceptEraser":
        """The eraser of a one-layer method fitted on rows ``idx`` of the concept dataset."""
        from steer.leace import EraserFitter

        ds, L = ds or self.ds, self.spec.layer
        X, y = ds.X[L][idx], ds.y[idx]
        if name == "leace":
            return EraserFitter([0, 1]).update({L: X}, y).eraser(info={"method": name}, **self.prov)
        if name == "leace_negations":
            neg = self.negations()
            keep = np.flatnonzero(np.isin(neg.groups, ds.groups[idx]))  # a statement's negations share its group
            return (EraserFitter([0, 1]).update({L: X}, y).update({L: neg.X[L][keep]}, neg.y[keep])
                    .eraser(info={"method": name, "n_negations": int(len(keep))}, **self.prov))
        if name == "leace_family":
            if ds.family is None:
                raise ValueError(f"method 'leace_family' needs the field family = {self.spec.family!r} on every row "
                                 f"of {ds.name!r}")
            joint = np.asarray([f"{a}|{b}" for a, b in zip(y, ds.family[idx])])
            return EraserFitter(sorted(set(joint.tolist()))).update({L: X}, joint).eraser(info={"method": name}, **self.prov)
        if name == "iterated":
            eraser, self._rounds = _iterated(X, y, ds.groups[idx], ds.family[idx] if ds.family is not None else None,
                                             L, self.spec)
            return dataclasses.replace(eraser, **self.prov)
        raise ValueError(f"unknown method {name!r}; methods: {list(METHODS)}")

    def direction(self, X: np.ndarray, y: np.ndarray, g: np.ndarray) -> Float[torch.Tensor, " d"]:
        """The unit direction of a ``LogisticProbe`` fitted on ``X`` (for directional ablation)."""
        probe = _probe(X, y, g, self.spec)
        return torch.as_tensor(np.asarray(probe.direction_), dtype=torch.float32)

    def scrub(self, idx: np.ndarray) -> tuple["ConceptEraser", dict[int, np.ndarray]]:
        """Sequential scrubbing: fit layer ``l``'s eraser on activations captured with the erasers
        of the earlier scrubbed layers applied; returns the eraser and each layer's captured input."""
        from steer.leace import ConceptEraser, EraserFitter

        ds = self.ds
        layers = sorted(self.spec.scrub_layers or range(self.spec.layer + 1))
        erasers, pre = {}, {}
        for layer in layers:
            ctx = _context(self.model, ConceptEraser(dict(erasers))) if erasers else contextlib.nullcontext()
            X = (ds.X[layer] if not erasers and layer in ds.X
                 else _capture(self.model, ds.prompts, [layer], self.spec.batch_size, ctx)[layer])
            pre[layer] = X
            erasers[layer] = EraserFitter([0, 1]).update({layer: X[idx]}, ds.y[idx]).eraser()[layer]
        return ConceptEraser(erasers, info={"method": "scrub"}, **self.prov), pre

    def negations(self) -> _Data:
        if self._negations is None:
            spec = dataclasses.replace(self.spec, limit=None)
            neg = _Data.load(self.model, spec, self.spec.negations, "label", self.acts, (self.spec.layer,))
            self._negations = neg
        return self._negations

    # -- out of family ----------------------------------------------------------------------------
    def out_of_family(self, name: str, notes: list[str]) -> dict | None:
        """Per held-out family ``f``: fit on every row of the other families, re-train and test a
        probe on ``f`` alone (grouped split within ``f``), before and after erasure at ``layer``."""
        from probes.splits import grouped_split

        ds, L, spec = self.ds, self.spec.layer, self.spec
        if ds.family is None:
            notes.append(f"out of family not computed: the rows of {ds.name!r} have no {spec.family!r} field")
            return None
        fams = list(spec.heldout_families or dict.fromkeys(ds.family.tolist()))
        unknown = [f for f in fams if f not in set(ds.family.tolist())]
        if unknown:
            raise ValueError(f"erasure spec: heldout_families holds {unknown}, not families of {ds.name!r} "
                             f"({sorted(set(ds.family.tolist()))})")
        by_family = {}
        for f in fams:
            inside, other = np.flatnonzero(ds.family == f), np.flatnonzero(ds.family != f)
            if len(np.unique(ds.y[inside])) < 2 or len(np.unique(ds.groups[inside])) < 4:
                continue
            tr, te = (inside[s] for s in grouped_split(ds.y[inside], ds.groups[inside],
                                                      fractions=spec.fractions[1:], seed=spec.seed))
            if name == "ablation":
                v = self.direction(ds.X[L][other], ds.y[other], ds.groups[other])
                Xe = _project_out(ds.X[L], v)
            elif name == "scrub":  # every scrubbed layer re-fitted without f, f's rows captured through them
                eraser, pre = self.scrub(other)
                Xe = (_erase(eraser, L, pre[L]) if L in eraser.layers else
                      _capture(self.model, ds.prompts, [L], spec.batch_size, _context(self.model, eraser))[L])
            else:
                Xe = _erase(self.fit(name, other), L, ds.X[L])
            if f not in self._oof_before:
                self._oof_before[f] = self.heldout(ds, ds.X[L], tr, te)
            by_family[f] = {"before": self._oof_before[f], "after": self.heldout(ds, Xe, tr, te)}
        if name == "ablation":
            notes.append("out of family for ablation: the direction projected out at the erased layer only")
        if name == "scrub":
            notes.append("out of family for scrub: all scrubbed layers re-fitted per held-out family (a capture per layer)")
        if not by_family:
            notes.append("out of family not computed: no family holds both classes in four or more groups")
            return None
        after = [v["after"] for v in by_family.values()]
        return {"by_family": by_family, "mean": float(np.mean(after)), "max": float(np.max(after))}


# -- pieces ---------------------------------------------------------------------------------------
def _iterated(X: np.ndarray, y: np.ndarray, g: np.ndarray, fam: np.ndarray | None, layer: int,
              spec: ErasureSpec) -> tuple["ConceptEraser", list[dict]]:
    """Iterated LEACE: erase the concept; while a probe re-trained within each family on the erased
    rows (half the groups, scored on the other half) beats ``chance`` on average, add those probes'
    scores as further concept columns and re-fit on the original activations, up to ``rounds``."""
    from steer.leace import EraserFitter

    z = np.eye(2)[y][:, 1:]
    parts = [np.arange(len(y))] if fam is None else [np.flatnonzero(fam == f) for f in dict.fromkeys(fam.tolist())]
    history = []
    for r in range(spec.rounds):
        eraser = EraserFitter().update({layer: X}, z=z).eraser(info={"method": "iterated", "rounds": r + 1})
        Xe = _erase(eraser, layer, X)
        aucs, cols = [], []
        for k, idx in enumerate(parts):
            halves = _halves(y[idx], g[idx], spec.seed + 1000 * r + k)
            if halves is None:
                continue
            a, b = (idx[h] for h in halves)
            probe = _probe(Xe[a], y[a], g[a], spec)
            from probes.metrics import auroc

            aucs.append(float(auroc(y[b], probe.decision_function(Xe[b]))))
            cols.append(probe.decision_function(Xe))
        mean = float(np.mean(aucs)) if aucs else 0.5
        history.append({"round": r + 1, "rank": int(z.shape[1]), "probe_auroc": mean})
        if mean <= spec.chance or not cols:
            break
        s = np.stack(cols, 1)
        z = np.concatenate([z, (s - s.mean(0)) / (s.std(0) + 1e-12)], 1)
    return eraser, history


def _halves(y: np.ndarray, g: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray] | None:
    from probes.splits import grouped_split

    if len(np.unique(y)) < 2 or len(np.unique(g)) < 4:
        return None
    try:
        return grouped_split(y, g, fractions=(0.5, 0.5), seed=seed)
    except ValueError:
        return None


def _probe(X: np.ndarray, y: np.ndarray, g: np.ndarray, spec: ErasureSpec):
    import warnings

    from probes.estimators import LogisticProbe

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LogisticProbe(C=spec.C, random_state=spec.seed).fit(X, y, groups=g)


def _probe_auroc(X: np.ndarray, y: np.ndarray, g: np.ndarray, tr: np.ndarray, te: np.ndarray, spec: ErasureSpec) -> float:
    from probes.metrics import auroc

    return float(auroc(y[te], _probe(X[tr], y[tr], g[tr], spec).decision_function(X[te])))


def _erase(eraser: "ConceptEraser", layer: int, X: np.ndarray) -> np.ndarray:
    return eraser(torch.as_tensor(X, dtype=torch.float32), layer).numpy()


def _project_out(X: np.ndarray, v: torch.Tensor) -> np.ndarray:
    from steer.operators import ablate

    return ablate(torch.as_tensor(X, dtype=torch.float32), v).numpy()


def _rank(eraser: "ConceptEraser") -> int:
    return max(int(torch.linalg.matrix_rank(e.proj_right.double(), rtol=1e-6)) for e in eraser.erasers.values())


def _random_like(obj: Any, rank: int, seed: int, d: int) -> Any:
    """A random subspace of the same rank at the same layers: an orthogonal eraser with the
    eraser's centring (``h − QQᵀ(h − b)``), or a random unit direction for ablation."""
    from steer.leace import ConceptEraser
    from steer.operators import EraserTensors

    gen = torch.Generator().manual_seed(seed + 7919)
    if isinstance(obj, torch.Tensor):
        v = torch.randn(d, generator=gen)
        return v / v.norm()
    out = {}
    for layer, e in obj.erasers.items():
        q, _ = torch.linalg.qr(torch.randn(d, rank, generator=gen, dtype=torch.float64))
        out[layer] = EraserTensors(q.float(), q.T.float(), e.bias.clone())
    return ConceptEraser(out, info={"method": "random", "rank": rank})


def _context(model, obj: Any):
    """The run-time intervention of a method: a ``ConceptEraser`` through ``steer.apply(op="leace")``
    at every position, or directional ablation of a direction at every residual write
    (``editing.orthogonalization.ablated``, equal to the weights orthogonalized against it)."""
    import steer
    from editing.orthogonalization import ablated

    if isinstance(obj, torch.Tensor):
        return ablated(model, obj)
    return steer.apply(model, obj, op="leace", positions="all")


def _generate(model, spec: ErasureSpec, ctx) -> list[str]:
    import steer

    with ctx:
        return steer.generate(model, list(spec.prompts), max_new_tokens=spec.max_new_tokens, do_sample=False)


def _capture(model, prompts: list[str], layers: Sequence[int], batch_size: int, ctx) -> dict[int, np.ndarray]:
    import steerlens

    with ctx:
        acts = steerlens.capture(model, prompts, "resid_post", layers=list(layers), pool="last",
                                 batch_size=batch_size, progress=False)
    return {layer: acts.at(layer).numpy() for layer in layers}


def _activations(model, spec: ErasureSpec, name: str, rows: list[dict], idx: np.ndarray, acts: dict,
                 layers: Sequence[int]) -> dict[int, np.ndarray]:
    """``{layer: [n, d]}`` of the selected rows: from ``acts[name]`` if given (checked), else captured."""
    d = int(model.cfg.d_model)
    given = acts.get(name)
    if given is None:
        return _capture(model, [r["prompt"] for r in rows], layers, spec.batch_size, contextlib.nullcontext())
    from probes.datasets import labelled_rows

    full = [r["prompt"] for r in labelled_rows(name)]
    if [r.get("prompt") for r in given.rows] != full:
        raise ValueError(f"acts[{name!r}]: its rows are not the rows of labelled_rows({name!r}) in order")
    out = {}
    for layer in layers:
        if layer not in given.layers:
            raise ValueError(f"acts[{name!r}] holds no resid_post at layer {layer}; captured layers: {given.layers}")
        X = given.at(layer, "resid_post")
        if X.ndim != 2 or X.shape[1] != d:
            raise ValueError(f"acts[{name!r}] at layer {layer} is {tuple(X.shape)} wide; the model's d_model is {d}")
        out[layer] = X[torch.as_tensor(idx)].float().numpy()
    return out


def _subsample(rows: list[dict], limit: int | None, seed: int) -> np.ndarray:
    """Indices of at most ``limit`` rows, whole groups drawn in seeded random order (sorted)."""
    if limit is None or limit >= len(rows):
        return np.arange(len(rows))
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(str(r.get("group", i)), []).append(i)
    keys = list(groups)
    out: list[int] = []
    for k in np.random.default_rng(seed).permutation(len(keys)):
        if len(out) + len(groups[keys[k]]) > limit:
            continue
        out += groups[keys[k]]
    return np.sort(np.asarray(out, dtype=np.int64))


def _py(x: Any) -> Any:
    return x.item() if hasattr(x, "item") else x


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x


def load_erasure_spec(path: str | os.PathLike) -> ErasureSpec:
    """Read a ``.json`` erasure spec (``ErasureSpec`` fields); errors name the file and the field."""
    import json
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"erasure spec not found: {path}")
    if path.suffix != ".json":
        raise ValueError(f"an erasure spec must be a .json file, got {path.name}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    try:
        return ErasureSpec.from_dict(raw)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None
