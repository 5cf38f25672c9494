"""The command line: --config.check exit codes and messages, listen addresses."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from exporter.cli import main, parse_listen_address

DATA = Path(__file__).parent.parent / "testdata" / "config"


def test_config_check_accepts_a_valid_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config.check", f"--config.file={DATA / 'valid-full.yml'}"]) == 0
    assert "valid (2 static servers)" in capsys.readouterr().out


def test_config_check_lists_every_problem_and_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config.check", f"--config.file={DATA / 'invalid-many-problems.yml'}"]) == 1
    err = capsys.readouterr().err
    assert "4 problems" in err
    assert "checks.clock.colour (line 8): unknown key" in err


def test_config_check_on_a_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["--config.check", f"--config.file={tmp_path / 'absent.yml'}"]) == 1
    assert "cannot read the file: No such file or directory" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        (":9817", (None, 9817)),
        ("127.0.0.1:9817", ("127.0.0.1", 9817)),
        ("[::1]:9100", ("::1", 9100)),
    ],
)
def test_listen_addresses(text: str, parsed: tuple[str | None, int]) -> None:
    assert parse_listen_address(text) == parsed


@pytest.mark.parametrize("text", ["9817", "host:", "host:99999", "host:port"])
def test_bad_listen_addresses(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="invalid listen address"):
        parse_listen_address(text)
