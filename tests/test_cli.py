"""The ``arcface`` command, called in-process through ``main(argv)`` and once as a real process."""

from __future__ import annotations

import subprocess
import sys

import pytest

import arcface
from arcface.cli import main
from arcface.heads import list_heads


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"arcface {arcface.__version__}"


def test_help_lists_verbs(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "heads" in capsys.readouterr().out


def test_heads_verb_lists_every_registered_head(capsys):
    assert main(["heads"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list_heads()
    assert any(line.startswith("arcface") and "m2=0.5" in line for line in lines)


def test_unknown_verb_exits_nonzero(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["no-such-verb"])
    assert exit_info.value.code != 0
    assert "invalid choice" in capsys.readouterr().err


def test_console_script_runs_as_a_process():
    result = subprocess.run(
        [sys.executable, "-m", "arcface.cli", "--version"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and arcface.__version__ in result.stdout
