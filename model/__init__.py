"""Data readers, preprocessing, the compressor, its training, evaluation and export."""
