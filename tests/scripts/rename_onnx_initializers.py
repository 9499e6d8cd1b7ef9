"""Renames every initializer of an ONNX model to an opaque `onnx::Weight_<n>` (as exporters
such as torch.onnx name them) and reverses their order, so tests/integration/bake.rs can check
that `exporter bake --patch` finds weights by content, not by name.

usage: rename_onnx_initializers.py IN.onnx OUT.onnx
"""

import sys

import onnx


def main() -> None:
    model = onnx.load(sys.argv[1], load_external_data=True)
    graph = model.graph
    names = {}
    for i, init in enumerate(graph.initializer):
        names[init.name] = f"onnx::Weight_{i}"
        init.name = names[init.name]
    for node in graph.node:
        for j, name in enumerate(node.input):
            if name in names:
                node.input[j] = names[name]
    inits = list(graph.initializer)[::-1]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    onnx.save(model, sys.argv[2])


if __name__ == "__main__":
    main()
