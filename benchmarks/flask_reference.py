"""The reference server, written the way the classic tutorials write it: Flask, a global Keras
model, ``model.predict`` per request. Kept for comparison with modelhost
(benchmarks/keras_serving.py).

    python benchmarks/flask_reference.py model.h5 PORT
"""

import sys

import numpy as np
from flask import Flask, jsonify, request
from keras.applications.mobilenet_v2 import preprocess_input
from keras.models import load_model
from PIL import Image

app = Flask(__name__)
model = load_model(sys.argv[1])


@app.route("/predict", methods=["POST"])
def predict():
    image = Image.open(request.files["image"]).convert("RGB").resize((224, 224))
    x = preprocess_input(np.expand_dims(np.asarray(image, dtype="float32"), 0))
    probs = model.predict(x)[0]
    top = np.argsort(-probs)[:5]
    return jsonify({"predictions": [{"index": int(i), "score": float(probs[i])} for i in top]})


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(sys.argv[2]))
