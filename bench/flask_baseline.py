"""The seed's design, kept as the benchmark baseline: Flask calling the model once per request.

Run under gunicorn by bench/serving.py with VIGIL_BENCH_MODEL_DIR pointing at a downloaded MLflow model folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from flask import Flask, Response, jsonify, request

from vigil.sentiment_model import load_logged

torch.set_num_threads(int(os.environ.get("VIGIL_TORCH_THREADS", "1")))
# A folder bench/serving.py's model holder downloaded and checked against its digest.
classifier = load_logged(Path(os.environ["VIGIL_BENCH_MODEL_DIR"]), expected=None)
app = Flask(__name__)


@app.post("/predict")
def predict() -> Response:
    text = request.get_json()["text"]
    prediction = classifier.predict([text])[0]
    return jsonify({"predictions": [{"label": prediction.label, "score": prediction.score}]})
