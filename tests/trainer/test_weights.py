"""Instance weights mean what SPEC §3 says: w / w_bar, w_bar the mean weight over the training set, so a
record counts the same in one batch of 8, in 4 accumulated micro-batches of 2 and in 2 processes of 4."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from synthetic import make_dataset
from weights_ddp import GLOBAL_BATCH, accumulated, one_batch, records

HERE = Path(__file__).parent
ROOT = HERE.parent.parent


def test_weights_are_normalised_by_the_training_set_mean(dataset: Path) -> None:
    data = records(dataset)
    raw = [r.weight for r in data.records]
    assert len(set(raw)) > 1, "the synthetic instances must have unequal weights"
    for i, record in enumerate(data.records):
        assert data[(i, 0, 0)]["weight"] == pytest.approx(record.weight / np.mean(raw))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_batch_accumulation_and_two_processes_agree(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "ds", sources=GLOBAL_BATCH // 2, val_sources=0)
    single, accum = one_batch(data), accumulated(data)

    out = tmp_path / "ddp.json"
    # `accelerate launch --cpu` starts several CPU processes through mpirun only; `--multi_gpu` starts them
    # through torchrun, and the script's Accelerator(cpu=True) then joins them with the gloo backend.
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    command += ["--main_process_port", str(free_port()), str(HERE / "weights_ddp.py"), str(data), str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)]), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ddp = json.loads(out.read_text())
    assert ddp["processes"] == 2 and ddp["backend"] == "gloo"

    for other in (accum, ddp):
        assert other["loss"] == pytest.approx(single["loss"], rel=1e-9, abs=1e-12)
        assert other["grad"] == pytest.approx(single["grad"], rel=1e-7, abs=1e-12)
    assert any(abs(g) > 1e-6 for g in single["grad"])
