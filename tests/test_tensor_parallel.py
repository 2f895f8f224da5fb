"""LongHeads under transformers' tensor parallelism: two CPU processes (torchrun, gloo) against one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

CHECK = Path(__file__).with_name("tensor_parallel_check.py")


def test_sharded_heads_select_and_score_as_one_process(tmp_path: Path) -> None:
    """Each rank holds half the heads (tp_plan="auto"); the question's votes are pooled over every rank's heads
    with one all-reduce per layer and step, so each rank's heads read the chunks that one process's read."""
    path = os.pathsep.join(filter(None, [str(CHECK.parents[1]), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1")
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            str(CHECK), str(tmp_path / "model")]
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("[")]
    reports = json.loads(line)
    assert len(reports) == 2
    for r in reports:
        assert r["ranks"] == 2 and r["local_heads"] == 4, r  # 8 query heads over two ranks
        assert r["selection_rows_equal"] == r["selection_rows"] > 0, r
        assert r["max_abs_diff"] < 1e-5 * max(1.0, r["max_abs_logit"]), r
