"""QuantizationConfig: precedence, unknown keys, impossible combinations, exit codes naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from parquant.errors import ConfigError, InputNotFoundError, UsageError
from parquant.quant.config import load_config


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "quant.yaml"
    path.write_text(text)
    return str(path)


def test_defaults() -> None:
    config = load_config(environ={})
    assert (
        config.method == "int8-weight"
        and config.backend == "auto"
        and config.ignore == ["lm_head", "*.gate", "*.router"]
    )
    assert config.fallback is True and not config.needs_calibration


def test_precedence_file_then_environment_then_flags(tmp_path: Path) -> None:
    path = write(tmp_path, "method: fp8-dynamic\ngroup_size: 64\ncalibration:\n  num_samples: 8\n  seq_len: 64\n")
    config = load_config(path, environ={})
    assert (config.method, config.group_size, config.calibration.num_samples) == ("fp8-dynamic", 64, 8)
    env = {
        "PARQUANT_METHOD": "int8-dynamic",
        "PARQUANT_NUM_SAMPLES": "16",
        "PARQUANT_FALLBACK": "false",
        "PARQUANT_IGNORE": "lm_head, *.down_proj",
    }
    config = load_config(path, environ=env)
    assert (config.method, config.calibration.num_samples, config.fallback) == ("int8-dynamic", 16, False)
    assert config.ignore == ["lm_head", "*.down_proj"]
    config = load_config(path, flags={"method": "int8-weight", "calibration.num_samples": None}, environ=env)
    assert config.method == "int8-weight" and config.calibration.num_samples == 16


def test_a_quantization_section_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, "quantization:\n  method: int4-awq\n  calibration:\n    data: c.jsonl\n")
    assert load_config(path, environ={}).method == "int4-awq"


def test_unknown_key_in_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    path = write(tmp_path, "method: int8-weight\ngroupsize: 64\n")
    with pytest.raises(ConfigError, match="unknown key 'groupsize'") as info:
        load_config(path, environ={})
    assert info.value.exit_code == 78
    with pytest.raises(ConfigError, match=r"unknown key 'calibration\.samples'"):
        load_config(write(tmp_path, "calibration:\n  samples: 3\n"), environ={})


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"method": "int3-magic"}, "method 'int3-magic'"),
        ({"method": "fp8-dynamc"}, "is unknown: did you mean fp8-dynamic"),
        ({"backend": "ptq", "method": "int4-awq"}, "not offered by the ptq backend"),
        ({"backend": "angelslim", "method": "int8-weight"}, "not offered by the angelslim backend"),
        ({"method": "int4-gptq"}, "needs calibration data"),
        ({"group_size": 100}, "group_size 100"),
        ({"device": "tpu"}, "device 'tpu'"),
    ],
)
def test_impossible_flags_are_usage_errors(flags: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message) as info:
        load_config(flags=flags, environ={})
    assert info.value.exit_code == 64


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "method: [unclosed\n"), environ={})
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- a\n- b\n"), environ={})
    with pytest.raises(ConfigError, match="invalid value"):
        load_config(write(tmp_path, "fallback: maybe\n"), environ={})
    with pytest.raises(ConfigError, match="not passed through"):
        load_config(write(tmp_path, "angelslim:\n  rm_rf: true\n"), environ={})
    with pytest.raises(InputNotFoundError):
        load_config(str(tmp_path / "missing.yaml"), environ={})
    with pytest.raises(UsageError, match="PARQUANT_FALLBACK"):
        load_config(environ={"PARQUANT_FALLBACK": "perhaps"})
    assert load_config(write(tmp_path, ""), environ={}).method == "int8-weight"
