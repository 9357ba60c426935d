"""The onnxruntime backend: padded arrays in, vectors out. No queues, no HTTP.

The provider is chosen from the setting, then read back from the session: what
`/info` and the metrics report is what onnxruntime really runs on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from model.features import DENSE_FEATURES, INPUT_NAMES, OUTPUT_NAME, Encoded, FloatArray, pad_batch

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
WARM_UP_BATCH_SIZES = (1, 8)


class EngineError(RuntimeError):
    """The model cannot be served as configured (message says what to change)."""


def choose_providers(requested: str, available: Sequence[str]) -> list[str]:
    """Providers to ask onnxruntime for, most preferred first."""
    if requested in ("cuda", "auto") and CUDA in available:
        return [CUDA, CPU]
    return [CPU]


class Engine:
    def __init__(self, onnx_path: Path, dim: int, requested_provider: str = "auto", intra_op_threads: int = 0) -> None:
        options = ort.SessionOptions()
        # 0 lets onnxruntime use one thread per physical core; one batch runs at a time.
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        # No busy-waiting between batches: spinning pool threads take the cores the event loop needs.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = choose_providers(requested_provider, ort.get_available_providers())
        self.session = ort.InferenceSession(str(onnx_path), options, providers=providers)
        self.requested_provider = requested_provider
        self.provider = self.session.get_providers()[0]
        if requested_provider == "cuda" and self.provider != CUDA:
            # Serve on CPU rather than not at all, but loudly: /info, the model_info metric
            # (requested_provider="cuda") and the UbsEmbedGpuRequestedButOnCpu alert show it.
            log.error(
                "UBS_PROVIDER=cuda but the session runs on %s (onnxruntime offers %s): serving on CPU; "
                "check the NVIDIA driver, the GPU reservation and that onnxruntime-gpu is installed",
                self.provider,
                ", ".join(ort.get_available_providers()),
            )
        elif providers[0] == CUDA and self.provider != CUDA:
            log.warning("CUDA is offered but the session runs on %s; serving on CPU", self.provider)
        self.dim = dim
        self._check_signature()
        log.info("onnxruntime session on %s (requested %s), model %s", self.provider, requested_provider, onnx_path)

    def _check_signature(self) -> None:
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if sorted(inputs) != sorted(INPUT_NAMES) or OUTPUT_NAME not in outputs:
            raise EngineError(f"model inputs {inputs} / outputs {outputs} do not match {INPUT_NAMES} -> {OUTPUT_NAME}")

    def embed(self, batch: Sequence[Encoded]) -> FloatArray:
        """One padded batch -> (len(batch), dim) float32."""
        (out,) = self.session.run([OUTPUT_NAME], pad_batch(batch))
        vectors = np.asarray(out, dtype=np.float32)
        if vectors.shape != (len(batch), self.dim):
            raise EngineError(f"model returned shape {vectors.shape}, expected {(len(batch), self.dim)}")
        return vectors

    def warm_up(self, max_len: int) -> None:
        """Run the shapes serving will see, so the first request pays no allocation cost."""
        ones = np.ones(max_len, dtype=np.int64)
        full = Encoded(ones, ones, np.zeros((max_len, len(DENSE_FEATURES)), dtype=np.float32), max_len)
        for size in WARM_UP_BATCH_SIZES:
            self.embed([full] * size)
