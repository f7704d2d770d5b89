import argparse
from dataclasses import dataclass, field

import pytest
import torch

from picochat.config import add_config_args, config_from_args, explicit_fields
from picochat.errors import PicochatError
from picochat.hardware import cpu_has_native_bf16
from picochat.runtime import compute_dtype, init_runtime, picochat_home, print0


def test_cpu_defaults_to_fp32(monkeypatch):
    monkeypatch.delenv("PICOCHAT_DTYPE", raising=False)
    assert compute_dtype(torch.device("cpu")) == torch.float32


@pytest.mark.parametrize("name,dtype", [("float32", torch.float32), ("bfloat16", torch.bfloat16), ("float16", torch.float16)])
def test_dtype_override(monkeypatch, name, dtype):
    monkeypatch.setenv("PICOCHAT_DTYPE", name)
    assert compute_dtype(torch.device("cpu")) == dtype


ZEN4_FLAGS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
SKYLAKE_FLAGS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni\n"


def test_native_bf16_is_read_from_the_cpu_flags():
    assert cpu_has_native_bf16(ZEN4_FLAGS)
    assert cpu_has_native_bf16(SKYLAKE_FLAGS.replace("avx512_vnni", "amx_bf16 amx_tile"))
    assert not cpu_has_native_bf16(SKYLAKE_FLAGS)
    assert not cpu_has_native_bf16("processor\t: 0\nmodel name\t: avx512_bf16 in a name, not a flag\n")


@pytest.mark.parametrize("native", [True, False])
def test_inference_on_a_cpu_takes_bf16_only_where_it_is_native(monkeypatch, native):
    monkeypatch.delenv("PICOCHAT_DTYPE", raising=False)
    monkeypatch.setattr("picochat.runtime.cpu_has_native_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert compute_dtype(cpu, inference=True) == (torch.bfloat16 if native else torch.float32)
    assert compute_dtype(cpu) == torch.float32  # training and evaluation keep fp32
    monkeypatch.setenv("PICOCHAT_DTYPE", "float32")
    assert compute_dtype(cpu, inference=True) == torch.float32


def test_unknown_dtype_is_refused_with_the_allowed_names(monkeypatch):
    monkeypatch.setenv("PICOCHAT_DTYPE", "fp8")
    with pytest.raises(PicochatError, match="float32, bfloat16, float16"):
        compute_dtype(torch.device("cpu"))


def test_single_process_runtime(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "PICOCHAT_DTYPE"):
        monkeypatch.delenv(var, raising=False)
    rt = init_runtime("cpu", seed=1)
    assert (rt.rank, rt.world_size, rt.is_master, rt.distributed) == (0, 1, True, False)
    assert rt.device.type == "cpu" and rt.dtype == torch.float32


def test_unknown_device_is_refused():
    with pytest.raises(PicochatError, match="cuda, mps or cpu"):
        init_runtime("tpu")


def test_home_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("PICOCHAT_HOME", str(tmp_path))
    assert picochat_home() == tmp_path


def test_print0_is_silent_off_rank_zero(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    print0("hidden")
    monkeypatch.setenv("RANK", "0")
    print0("shown")
    assert capsys.readouterr().out == "shown\n"


@dataclass
class _Demo:
    depth: int = 4
    lr: float | None = None
    name: str = "x"
    compile: bool = True
    note: str = field(default="", metadata={"help": "free text"})


def test_config_flags_mirror_the_dataclass():
    parser = argparse.ArgumentParser()
    add_config_args(parser, _Demo)
    args = parser.parse_args(["--depth", "6", "--lr", "0.5", "--no-compile"])
    cfg = config_from_args(_Demo, args)
    assert cfg == _Demo(depth=6, lr=0.5, name="x", compile=False)
    assert explicit_fields(args, _Demo) == {"depth", "lr", "compile"}
