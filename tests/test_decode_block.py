"""benchmarks/decode_block.py (issue 16): the dry run (tiny shapes) prunes the MLP to the target
with SAP, checks the sparse block against the pruned dense one and prints its table, on the CPU,
in float32 and bfloat16."""
import contextlib
import io
import re
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # the script and its timing helper
import decode_block  # noqa: E402


@pytest.fixture(scope="module")
def dry_run():
    threads = torch.get_num_threads()
    out = io.StringIO()  # capsys is per test; the run is shared by the module's tests
    with contextlib.redirect_stdout(out):
        code = decode_block.main(["--dry-run", "--dtype", "float32", "bfloat16"])
    assert torch.get_num_threads() == threads  # no --threads: torch's setting is left alone
    return code, out.getvalue()


def test_dry_run_prunes_to_the_target_with_sap(dry_run):
    code, text = dry_run
    steps = re.findall(r"SAP step \d+ \(gamma 4\): ([\d.]+)% of the MLP weights pruned", text)
    assert steps and float(steps[-1]) >= 70.0 and all(float(a) < 70.0 for a in steps[:-1])
    assert f"pruned {steps[-1]}% of the MLP weights in {len(steps)} SAP steps" in text


def test_dry_run_sparse_block_matches_the_pruned_dense_block(dry_run):
    code, text = dry_run
    assert code == 0
    for dtype in ("float32", "bfloat16"):
        assert re.search(rf"correctness \({dtype}\): sparse block vs pruned dense block, .*: OK$", text, re.M)
    assert "correctness: the sparse block matches the pruned dense block" in text


def test_dry_run_prints_the_table(dry_run):
    _, text = dry_run
    header = "| device | dtype | mode | dense ms | sparse ms | dense / sparse | MLP sparsity | formats |"
    assert header in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and line != header]
    assert [row.split(" | ")[1:3] for row in rows] == [["float32", "eager"], ["bfloat16", "eager"]]
    for row in rows:
        device, _, _, dense, sparse, ratio, sparsity, formats = [c.strip() for c in row.strip("|").split("|")]
        assert "lqkernels CPU capability" in device
        assert float(dense) > 0 and float(sparse) > 0 and ratio.endswith("x")
        assert float(sparsity.rstrip("%")) >= 70.0
        assert re.fullmatch(r"gate \w+.*, up \w+.*, down \w+.*", formats)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_gpu_is_refused_clearly(capsys):
    with pytest.raises(SystemExit) as exit_info:
        decode_block.main(["--device", "cuda", "--dry-run"])
    assert exit_info.value.code == 2 and "torch sees no CUDA device" in capsys.readouterr().err
