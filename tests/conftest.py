import os

import pytest
import torch

# Without a GPU the Triton kernels run on CPU tensors through the Triton interpreter; it must be
# chosen before triton compiles (decorates) them, i.e. before they are first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Under pytest-xdist (make test runs one worker per core) each worker computes on one thread:
# more threads than cores make OpenMP's spinning threads wait for each other, many times slower.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_and_restore_threads():
    # Some code under test sets the thread count (benchmarks, the CLI): restore it, since
    # results that must match bit for bit across processes depend on it.
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


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
