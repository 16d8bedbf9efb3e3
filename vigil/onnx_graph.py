"""The one way Vigil writes a torch network as an ONNX graph and opens one for ONNX Runtime.

Every MiniLM network Vigil serves — the sentiment classifier, the text encoder, the span reader — is exported here:
TorchScript exporter (the torch.export-based one needs onnxscript too), opset 17, a dynamic batch and token axis on
each input, written beside and renamed into place so that two processes exporting at once never read half a file.
The caller checks the graph against torch before serving it.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vigil.credentials import ensure_private_dir

logger = logging.getLogger(__name__)

BATCH_AND_TOKENS = {0: "batch", 1: "tokens"}


def export_graph(module: Any, inputs: Mapping[str, Any], outputs: Mapping[str, Mapping[int, str]], path: Path,
                 what: str) -> Path:
    """Write ``module`` (a torch module; called with ``inputs``' tensors in order) to ``path``; ``outputs`` names
    each output with its dynamic axes. ``module`` is left in eval mode, whatever mode the exporter restores."""
    import torch

    ensure_private_dir(path.parent)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    with warnings.catch_warnings(), torch.no_grad():
        # The tracer warns about branches on the attention mask's shape, which are constant for these encoders;
        # the caller's check against torch catches any that are not.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(), tuple(inputs.values()), str(partial), input_names=list(inputs),
            output_names=list(outputs),
            dynamic_axes={**{name: BATCH_AND_TOKENS for name in inputs}, **{k: dict(v) for k, v in outputs.items()}},
            opset_version=17, dynamo=False,
        )
    module.eval()  # the exporter puts modules back in the mode it found them in, recursively: dropout stays off
    partial.replace(path)
    logger.info("exported the %s to %s", what, path)
    return path


def onnx_session(path: Path, threads: int) -> Any:
    """An ONNX Runtime session on ``threads`` intra-op threads that do not spin."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Spinning threads would take the core the API worker and the clients need; see Settings.torch_threads.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
