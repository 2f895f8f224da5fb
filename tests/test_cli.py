"""The `longheads` command: a real answer about the sample PDF with its page map, and bad input refused with
a message and exit status 2 before any model is loaded."""

from __future__ import annotations

from pathlib import Path

from longheads.cli import main

SAMPLE = str(Path(__file__).resolve().parents[1] / "apps" / "longheads_app" / "samples" / "eddystone.pdf")


def test_ask_answers_from_the_pdf_and_names_the_page(capsys):
    rc = main(["ask", SAMPLE, "Who built the first lighthouse on the Eddystone rocks?", "--device", "cpu",
               "--max-new-tokens", "16", "--prefill-piece", "512"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "Winstan" in out  # Henry Winstanley, on page 2 of the sample
    assert "eddystone.pdf: " in err and " tokens" in err
    # The sample is shorter than a head's window, so every head reads every chunk; the one ranked first runs
    # from page 1 onto page 2 and counts for both.
    read_most = next(line for line in err.splitlines() if line.startswith("[heads read most:"))
    assert "page 2" in read_most


def test_bad_input_exits_2_with_a_message(capsys, tmp_path):
    assert main(["ask", str(tmp_path / "missing.pdf"), "q"]) == 2
    assert "missing.pdf' does not exist" in capsys.readouterr().err
    assert main(["ask", SAMPLE, "q", "--prefill-piece", "1000"]) == 2
    assert "prefill_piece=1000 is invalid" in capsys.readouterr().err
    assert main(["ask", SAMPLE, "q", "--offload-keys"]) == 2  # the keys go only where the values went
    assert "offload_keys=True is invalid: it needs cpu_offload=True" in capsys.readouterr().err
    assert main(["ask", SAMPLE, "q", "--num-beams", "0"]) == 2
    assert "num_beams=0 must be an integer >= 1" in capsys.readouterr().err
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    assert main(["ask", str(tmp_path / "latin1.txt"), "q"]) == 2
    assert "is not a UTF-8 text file" in capsys.readouterr().err
