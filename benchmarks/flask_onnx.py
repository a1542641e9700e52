"""The tutorial server for an ONNX model, for comparison in benchmarks/run.py: Flask's threaded
development server, one global ONNX Runtime session with its default options, the upload read
with Pillow and preprocessed per request exactly as run.py's in-process loop does (so both
servers answer the same numbers), softmax, top-5 as JSON. Written the way the classic
"serve your model with Flask" scripts are — nothing tuned.

    python benchmarks/flask_onnx.py MODEL_DIR {tiny,imagenet,mobilenet} PORT
"""

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from flask import Flask, jsonify, request

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import PREPS

app = Flask(__name__)
session = ort.InferenceSession(str(Path(sys.argv[1]) / "model.onnx"))
prepare = PREPS[sys.argv[2]]
input_name = session.get_inputs()[0].name


@app.route("/predict", methods=["POST"])
def predict():
    x = prepare(request.files["image"].read())[None]
    logits = session.run(None, {input_name: x})[0][0]
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    top = np.argsort(-probs)[:5]
    return jsonify({"predictions": [{"index": int(i), "score": float(probs[i])} for i in top]})


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(sys.argv[3]), threaded=True)
