"""The prepared GPU check (`python -m bench.gpu`): it runs anywhere and measures what it says.

This machine has no CUDA device: the script must say so and exit 0, and with ``--cpu`` it
runs the very code of its GPU rows with the CPU in place of the GPU (tiny sizes: a LoRA
step of 8 pairs of 64 tokens, not the GPU row's 32 of 256, which took 6 s a step), so the
day a GPU host is lent the command is known to work up to the device itself.
"""

from __future__ import annotations

import re

import pytest

from bench import gpu


def test_without_a_cuda_device_it_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    if gpu.cuda_available():
        pytest.skip("a CUDA device is visible: the script measures instead")
    assert gpu.main([]) == 0
    assert "no CUDA device: nothing to measure" in capsys.readouterr().out


def test_the_gpu_rows_run_on_the_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu.main(["--cpu", "--docs", "12", "--cpu-docs", "6", "--vectors", "4000",
                     "--steps", "2", "--cpu-steps", "2", "--lora-batch", "8",
                     "--lora-tokens", "64"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    names = [r.split(" | ")[0] for r in rows[1:]]
    assert names == ["| embedding, CPU fp32 (anchor)", "| embedding, cpu (auto)",
                     "| FAISS IVF, 4,000 vectors, CPU (anchor)",
                     "| LoRA r=8, batch 8, 64 tokens, CPU (anchor)"], out
    cosine = float(rows[2].split(" | ")[3])
    assert cosine >= 0.99  # the kept precision agrees with fp32 (the embedder's own rule)
    recall = float(re.search(r"recall@10 ([0-9.]+)", rows[3]).group(1))  # type: ignore[union-attr]
    assert 0.3 <= recall <= 1.0  # nprobe 16 of the lists: most true neighbours found
    assert re.search(r"\d+ steps", rows[4]) and "s/step" in rows[4]
