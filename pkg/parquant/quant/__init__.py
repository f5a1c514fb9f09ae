"""Quantization: scheme detection today; backends (built-in PTQ, AngelSlim) plug in here."""
