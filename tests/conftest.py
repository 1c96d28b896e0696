import os

import pytest
import torch

# Without a GPU the Triton kernels run on CPU tensors through the Triton interpreter; it must be
# chosen before triton compiles (decorates) them, i.e. before they are first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Statistical tests declare their false-alarm rate through Z: a two-sided normal tail of
# 4.5 standard errors has probability 6.8e-6, so a suite of ~50 such checks fails by chance
# with probability < 4e-4. All seeds are fixed, so a run is reproducible.
Z = 4.5


@pytest.fixture(autouse=True)
def _seed_and_restore_threads():
    # Some code under test sets the thread count (benchmarks, the CLI): restore it, since
    # results that must match bit for bit across processes depend on it.
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


BF16_UNIT_ROUNDOFF = 2.0**-8  # bfloat16: 8 significand bits


def bf16_relative_bound(q: torch.Tensor, k: torch.Tensor, norm: float) -> float:
    """Error of the bfloat16 fused bidirectional path relative to the output scale, to first
    order: each rounding of a log-feature costs ≤ u·|log|, and |log| is dominated by the norm
    term a·‖x̃‖²/2 (the random part x̃·ω has mean 0 and averages over the M features of the
    normalized weights); the products, the rounded summary and the output add ~2u."""
    x_sq = max(q.float().square().sum(-1).max().item(), k.float().square().sum(-1).max().item())
    x_sq *= q.shape[-1] ** -0.5  # x̃ = x·D^(-1/4)
    return BF16_UNIT_ROUNDOFF * (2 + norm * x_sq / 2)


@pytest.fixture
def cli_error(capsys):
    """``cli_error(argv, match=None)``: run ``performers.cli.main(argv)`` expecting a user error —
    exit status 2, one line ``performers CMD: error: MESSAGE`` last on stderr, no traceback —
    and return that line (``match``: a regular expression it must contain)."""
    import re

    from performers.cli import main

    def run(argv: list[str], match: str | None = None) -> str:
        capsys.readouterr()
        status = main(argv)
        err = capsys.readouterr().err
        # The error is the last line (a progress bar, e.g. of Hugging Face weights, may precede it).
        lines = err.strip().splitlines()
        assert status == 2, (status, err)
        assert lines and lines[-1].startswith("performers ") and ": error: " in lines[-1], err
        assert sum(": error: " in line for line in lines) == 1 and "Traceback" not in err, err
        if match is not None:
            assert re.search(match, lines[-1]), (match, lines[-1])
        return lines[-1]

    return run
