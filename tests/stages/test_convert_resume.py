"""A SIGKILLed local import leaves no model behind, and the rerun finishes it from where it stopped."""

from __future__ import annotations

from pathlib import Path

from parquant.stages.hf_export import export_checkpoint

from .test_convert_s3 import _big_checkpoint, _kill_when, _start_import


def test_killed_import_leaves_no_manifest_and_resumes(tmp_path: Path) -> None:
    source = _big_checkpoint(tmp_path / "hf", 48, (512, 512))
    output = tmp_path / "pq"
    staging = tmp_path / ".pq.parquant-partial"
    proc = _start_import(str(source), str(output), [])
    _kill_when(proc, lambda: (staging / ".parquant-progress.json").exists())
    assert not output.exists()
    assert not (staging / "parquant.json").exists()
    rerun = _start_import(str(source), str(output), [])
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err.decode()
    assert b"resuming:" in err
    assert (output / "parquant.json").exists() and not staging.exists()
    assert len(list(output.glob("model-*-of-*.parquet"))) >= 48
    export_checkpoint(str(output), str(tmp_path / "back"))
    assert (tmp_path / "back" / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()
