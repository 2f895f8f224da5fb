"""The Triton fast path against the PyTorch reference path: same chunks selected, same outputs.

On a CUDA machine the kernels run natively (bfloat16 and float32); elsewhere they run in Triton's CPU
interpreter in float32, so CI checks the kernels' logic too. Each run is a subprocess (see fast_path_check.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton", reason="the fast path needs triton (pip install 'longheads[gpu]')")
CHECK = Path(__file__).with_name("fast_path_check.py")


def _check(device: str, dtype: str, checks: list[str], head_dim: int, length: int, interpret: bool) -> list[dict]:
    """Runs fast_path_check.py on `checks` (see its docstring) in one process."""
    # The source tree first, so that the check imports this checkout's longheads even where it is not installed
    # (as `python -m pytest` in the checkout finds it for the tests themselves).
    path = os.pathsep.join(filter(None, [str(CHECK.parents[1]), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, TRITON_INTERPRET="1" if interpret else "0", PYTHONPATH=path)
    if interpret:  # the interpreter runs one program at a time: one thread each, so that two checks share the CPU
        env["OMP_NUM_THREADS"] = "1"
    args = [sys.executable, str(CHECK), device, dtype, ",".join(checks), str(head_dim), str(length)]
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = [json.loads(line) for line in proc.stdout.strip().splitlines() if line.startswith("{")]
    assert len(reports) == len(checks), proc.stdout[-3000:]
    return reports


def _interpreter_works() -> bool:
    # Triton 3.6's interpreter turns 1-element arrays into ints, which numpy 2.3+ refuses.
    import numpy

    return tuple(int(x) for x in numpy.__version__.split(".")[:2]) < (2, 3)


# Interpreter checks (see fast_path_check.py). The interpreter takes Hopper's path (tiles through tensor
# descriptors); pointers: the path before it. The vote-scope checks compare the reference, which pools the
# question's votes token by token, with the fast path's cumulative sums; the default scope ("model") is the
# first kernels check's.
KERNEL_CHECKS = {"grouped-query": "default", "one-kv-head-per-query-head": "mha", "pointer-loads": "pointers"}
VOTE_CHECKS = {"vote-scope-head": "head", "vote-scope-layer": "layer"}


@pytest.fixture(scope="module")
def interpreter_checks(request: pytest.FixtureRequest):
    """The selected tests' checks, each about half a minute of one core, in one process per core."""
    if not _interpreter_works():
        pytest.skip("Triton's CPU interpreter needs numpy < 2.3")
    checks = sorted({item.callspec.params["check"] for item in request.session.items
                     if "interpreter_checks" in getattr(item, "fixturenames", ())})
    workers = max(1, min(4, os.cpu_count() or 1, len(checks)))
    batches = [checks[i::workers] for i in range(workers)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_check, "cpu", "float32", batch, 32, 300, interpret=True) for batch in batches]
        yield {check: (future, batch.index(check)) for future, batch in zip(futures, batches, strict=True)
               for check in batch}


def _assert_matches(check: tuple[Future, int]) -> None:
    future, index = check
    r = future.result()[index]
    assert r["selection_rows_equal"] == r["selection_rows"], r
    assert r["max_abs_diff"] < 1e-5, r


@pytest.mark.parametrize("check", KERNEL_CHECKS.values(), ids=KERNEL_CHECKS.keys())
def test_kernels_match_reference_in_interpreter(interpreter_checks, check):
    _assert_matches(interpreter_checks[check])


@pytest.mark.parametrize("check", VOTE_CHECKS.values(), ids=VOTE_CHECKS.keys())
def test_batched_votes_match_reference_in_interpreter(interpreter_checks, check):
    _assert_matches(interpreter_checks[check])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype,check,head_dim,length", [
    ("float32", "default", 64, 3000),
    ("bfloat16", "default", 128, 3000),
    ("bfloat16", "mha", 64, 1000),
    ("float32", "offload", 128, 1000),
    ("bfloat16", "offload", 128, 3000),
    ("float32", "offload_keys", 64, 3000),
    ("bfloat16", "offload_keys", 128, 3000),
])
def test_kernels_match_reference_on_gpu(dtype, check, head_dim, length):
    (r,) = _check("cuda", dtype, [check], head_dim, length, interpret=False)
    offload = check.startswith("offload")
    # bfloat16 rounding can flip a near-tie between two chunks' scores; float32 must agree exactly.
    exact = dtype == "float32"
    needed = r["selection_rows"] if exact else int(0.9 * r["selection_rows"])
    assert r["selection_rows_equal"] >= needed, r
    assert r["max_abs_diff"] < (1e-4 if exact else 0.1) * max(1.0, r["max_abs_logit"]), r
    if offload:  # the same kernels read the same numbers wherever the cache lives
        assert r["offload_selection_rows_equal"] == r["selection_rows"], r
        assert r["offload_max_abs_diff"] == 0.0, r


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_offloaded_cache_memory_is_exact_pinned_and_read_in_place():
    from longheads import kernels
    from longheads.cache import pinned_empty

    shape = (3, 1000, 64)  # 1000 tokens: the last chunk of 64 is cut short
    values = pinned_empty(shape, torch.bfloat16)
    assert values.shape == shape and values.is_pinned()
    assert values.untyped_storage().nbytes() == 3 * 1000 * 64 * 2  # no rounding up to a power of two
    values.copy_(torch.randn(shape))
    order = torch.tensor([[15, 0, 7], [3, 3, 9], [14, 1, 2]], device="cuda")
    staged = kernels.gather_chunks(values, order, 64, torch.device("cuda"))
    padded = torch.cat([values, values.new_zeros(3, 24, 64)], 1)  # chunk 15 holds 40 tokens, then zeros
    tokens = (order.cpu()[:, :, None] * 64 + torch.arange(64)).flatten(1)
    assert torch.equal(staged.cpu(), padded[torch.arange(3)[:, None], tokens])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_memory_that_cannot_be_registered_falls_back_to_pinned_blocks_without_a_stale_error(monkeypatch):
    import numpy

    from longheads import cache

    taken = numpy.empty(1 << 16, dtype=numpy.uint8)  # registered already: CUDA refuses to register it again
    assert int(torch.cuda.cudart().cudaHostRegister(taken.ctypes.data, taken.nbytes, 0)) == 0
    try:
        monkeypatch.setattr(cache.numpy, "empty", lambda *args, **kwargs: taken)
        values = cache.pinned_empty((1, 1 << 15), torch.bfloat16)
        monkeypatch.undo()
        assert values.shape == (1, 1 << 15) and values.is_pinned()
        assert values.data_ptr() != taken.ctypes.data  # PyTorch's own pinned block, not the refused buffer
        assert float((torch.ones(4, device="cuda") + 1).sum()) == 8.0  # no stale CUDA error left behind
    finally:
        torch.cuda.cudart().cudaHostUnregister(taken.ctypes.data)
