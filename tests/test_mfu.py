"""The CPU's MFU peak is measured once per machine and kept with its date; CPU runs log tok/s per peak GFLOP/s."""
from __future__ import annotations

import json
from datetime import date

import torch

from picochat.train import mfu
from picochat.train.metrics import progress_line


def counting_measurement(monkeypatch, flops: float) -> list:
    calls = []
    monkeypatch.setattr(mfu, "measure_matmul_flops", lambda *a, **kw: calls.append(a) or flops)
    return calls


def test_the_cpu_peak_is_measured_once_then_read_with_its_date(home, monkeypatch):
    calls = counting_measurement(monkeypatch, 150e9)
    peak, source = mfu.peak_flops(torch.device("cpu"), "cpu")
    assert peak == 150e9 and len(calls) == 1
    kept = json.loads(mfu.cpu_peak_file().read_text())
    assert kept[mfu.cpu_machine_key()] == {"flops": 150e9, "measured": date.today().isoformat(),
                                           "matmul": mfu.CPU_PEAK_MATMUL}
    assert date.today().isoformat() in source and str(mfu.cpu_peak_file()) in source
    counting_measurement(monkeypatch, 90e9)  # a busier minute would measure less: it is not asked
    assert mfu.peak_flops(torch.device("cpu"), "cpu")[0] == 150e9


def test_another_machine_sharing_the_home_measures_its_own_peak(home, monkeypatch):
    counting_measurement(monkeypatch, 150e9)
    mfu.cpu_peak_flops()
    monkeypatch.setattr(mfu, "cpu_machine_key", lambda: "other-host|x86_64|8 threads|torch 2.13")
    calls = counting_measurement(monkeypatch, 400e9)
    assert mfu.cpu_peak_flops()[0] == 400e9 and len(calls) == 1
    assert len(json.loads(mfu.cpu_peak_file().read_text())) == 2


def test_cpu_records_carry_tokens_per_second_per_peak_gflop():
    assert mfu.cpu_rate_fields(torch.device("cpu"), 1200.0, 150e9) == {"tok_per_peak_gflop": 8.0}
    assert mfu.cpu_rate_fields(torch.device("cuda"), 1200.0, 150e9) == {}
    record = {"step": 3, "loss": 2.5, "lr": 0.02, "tok_per_sec": 1200.0, "mfu": 0.4, "flops": 1e12, "time": 9.0,
              "tok_per_peak_gflop": 8.0}
    assert "8.00 tok/s per peak GFLOP/s" in progress_line(record, 10)
