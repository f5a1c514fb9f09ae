"""Quantization: the method registry (methods.py), checkpoint formats (formats/), the quantization
config, calibration data, and the two backends (built-in PTQ: ptq.py, rtn.py, ptq_stage.py;
AngelSlim: angelslim.py, angelslim_compat.py)."""
