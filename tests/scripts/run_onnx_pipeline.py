"""Runs the fused `pipeline.onnx` of a model folder written by `exporter bake --fused` through
onnx's full checker and onnxruntime (CPU), once per step count, and writes the images. Used by
tests/integration/bake.rs, which compares them with `trainer sample` and judges the numbers.

usage: run_onnx_pipeline.py MODEL_DIR CASES.safetensors OUT.safetensors STEPS...

CASES holds `input_ids` (batch, 77) int64 and `noise` (batch, 4, h, w) float32. OUT gets
`image_<steps>` (batch, 8h, 8w, 3) uint8 for each step count, and the script prints the graph's
inputs and outputs as JSON.
"""

import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from safetensors.numpy import load_file, save_file


def main() -> None:
    model_dir, cases_path, out_path = sys.argv[1:4]
    steps = [int(s) for s in sys.argv[4:]]
    cases = load_file(cases_path)
    path = os.path.join(model_dir, "pipeline.onnx")
    # The path form lets the checker follow external data and check the full model.
    onnx.checker.check_model(path, full_check=True)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    images = {}
    for k in steps:
        feeds = {
            "input_ids": cases["input_ids"],
            "noise": cases["noise"],
            "steps": np.array(k, dtype=np.int64),
        }
        (image,) = session.run(["image"], feeds)
        assert image.dtype == np.uint8, image.dtype
        images[f"image_{k}"] = np.ascontiguousarray(image)
    save_file(images, out_path)
    print(
        json.dumps(
            {
                "inputs": [i.name for i in session.get_inputs()],
                "outputs": [o.name for o in session.get_outputs()],
            }
        )
    )


if __name__ == "__main__":
    main()
