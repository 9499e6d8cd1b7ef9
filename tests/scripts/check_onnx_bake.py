"""Runs a model folder written by `exporter bake` through onnx's full checker and onnxruntime
(CPU), on the inputs of a cases file, and prints the largest differences from the expected
outputs as JSON. Used by tests/integration/bake.rs, which computes the expected outputs with the
trainer's tch networks and judges the numbers.

usage: check_onnx_bake.py MODEL_DIR CASES.safetensors

CASES holds the inputs `input_ids` (int64), `sample`, `timestep`, `encoder_hidden_states`,
`latent_sample` and the expected outputs `last_hidden_state`, `out_sample`, `vae_sample`.
"""

import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from safetensors.numpy import load_file


def main() -> None:
    model_dir, cases_path = sys.argv[1], sys.argv[2]
    cases = load_file(cases_path)
    runs = {
        "text_encoder": ({"input_ids": cases["input_ids"]}, "last_hidden_state"),
        "unet": (
            {
                "sample": cases["sample"],
                "timestep": cases["timestep"],
                "encoder_hidden_states": cases["encoder_hidden_states"],
            },
            "out_sample",
        ),
        "vae_decoder": ({"latent_sample": cases["latent_sample"]}, "vae_sample"),
    }
    report = {}
    for name, (feeds, expected_key) in runs.items():
        path = os.path.join(model_dir, f"{name}.onnx")
        # The path form lets the checker follow external data and check the full model.
        onnx.checker.check_model(path, full_check=True)
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        (out,) = session.run(None, feeds)
        expected = cases[expected_key]
        assert out.shape == expected.shape, (name, out.shape, expected.shape)
        report[name] = {
            "max_abs": float(np.abs(out.astype(np.float64) - expected).max()),
            "max_ref": float(np.abs(expected).max()),
            "inputs": [i.name for i in session.get_inputs()],
        }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
