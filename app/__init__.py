"""The /embed service: onnxruntime engine, dynamic batching, cache and metrics."""
