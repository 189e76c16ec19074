"""The command line answers at once: no Spark, torch or MLflow before a stage actually runs."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nextplay.cli import main

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("pyspark", "torch", "mlflow", "pandas", "numpy")


def _loaded_after(code: str) -> list[str]:
    """The heavy packages a fresh interpreter holds after running `code`."""
    probe = f"import sys\n{code}\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(ROOT / "lib"), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    return eval(out.stdout.strip().splitlines()[-1])


def test_importing_the_cli_loads_no_heavy_package():
    assert _loaded_after("import nextplay.cli") == []


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["train", "--bogus"], ["--version"],
                                  ["score", "--set", "score.top_k=-1"], ["train", "--conf", "/no/such/file.yml"]])
def test_help_usage_and_config_errors_answer_without_spark_torch_or_mlflow(argv):
    code = f"from nextplay.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass"
    assert _loaded_after(code) == []


def test_a_bad_flag_prints_the_usage_and_one_error_with_one_prefix(capsys):
    assert main(["train", "--bogus"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("usage: nextplay")
    assert err[-1] == "nextplay: error: unrecognized arguments: --bogus"


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("nextplay ")
