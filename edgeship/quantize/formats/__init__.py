"""The per-format quantisers: one module per format, each with one entry point ``(job, precision, tmp) -> Made``
(:mod:`edgeship.quantize.common`), chosen by :data:`edgeship.quantize.QUANTIZERS`."""
