"""The queue snapshot scan (files on a share -> metrics) and the Windows script that writes them."""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pygments.lexers import PowerShellLexer  # type: ignore[import-untyped]
from pygments.token import Comment, Error, String  # type: ignore[import-untyped]

from exporter.background import ScanRunner, ScanState, scan_metrics
from exporter.checks import SCANS, queue_snapshots
from exporter.checks.queue_snapshots import (
    MAX_FILE_BYTES,
    MAX_QUEUE_SERIES,
    OTHER_QUEUES,
    QUEUE_SNAPSHOT_SCAN,
    REASONS,
    QueueSnapshots,
    scan_queue_snapshots,
)
from exporter.config import Settings, load_text
from exporter.inventory import Inventory
from exporter.queues import (
    DELIVERY_TYPES,
    ERROR_CLASSES,
    QUEUE_STATUSES,
    SCHEMA_VERSION,
    parse_snapshot,
)
from tests.metrics_text import expose, samples, series, value

DATA = Path(__file__).parent.parent / "testdata" / "queues"
SCRIPT = Path(__file__).parent.parent.parent / "deploy" / "windows" / "Export-QueueSnapshot.ps1"
NOBODY = Inventory(())
EXCH01 = "exch01.corp.example.com"


def settings(files: dict[str, Path], poll: str = "15s") -> Settings:
    lines = [f"    - {{server: {server}, path: '{path}'}}" for server, path in files.items()]
    text = "realm: CORP.EXAMPLE.COM\nchecks:\n  queues:\n"
    text += f"    poll_interval: {poll}\n"
    if lines:
        text += "    snapshots:\n" + "\n".join("  " + line for line in lines) + "\n"
    return load_text(text)


def metrics(result: QueueSnapshots | None, config: Settings) -> str:
    return expose(QUEUE_SNAPSHOT_SCAN.emit(ScanState(result=result), config, NOBODY))


def errors_of(text: str, server: str, reason: str) -> float | None:
    return value(text, "exchange_auth_queue_snapshot_errors_total", server=server, reason=reason)


def queue_errors(
    text: str, server: str, cls: str, code: str = "", enhanced: str = ""
) -> float | None:
    return value(
        text,
        "exchange_auth_queue_errors",
        server=server,
        **{"class": cls, "smtp_code": code, "enhanced_code": enhanced},
    )


def messages(text: str, server: str) -> dict[tuple[str, str, str], float]:
    return {
        (dict(labels)["queue"], dict(labels)["delivery_type"], dict(labels)["status"]): v
        for (name, labels), v in samples(text).items()
        if name == "exchange_auth_queue_messages" and dict(labels)["server"] == server
    }


def script_snapshot(generated_at: float, **first_queue: Any) -> bytes:
    document = json.loads((DATA / "script.json").read_text())
    document["generated_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(generated_at))
    document["queues"][0].update(first_queue)
    return json.dumps(document).encode()


async def test_three_shapes_side_by_side(tmp_path: Path) -> None:
    ps51 = tmp_path / "exch02.json"
    shutil.copy(DATA / "getqueue-ps51.json", ps51)
    written = time.time() - 300
    os.utime(ps51, (written, written))  # this shape has no generated_at: the mtime dates it
    config = settings(
        {
            EXCH01: DATA / "script.json",
            "exch02.corp.example.com": ps51,
            "exch03.corp.example.com": DATA / "getqueue-ps7.json",
            "exch04.corp.example.com": DATA / "getqueue-ps51-single.json",
        }
    )
    before = time.time()
    result = await scan_queue_snapshots(config, NOBODY, None)
    text = metrics(result, config)

    assert messages(text, EXCH01)[("7", "SmtpRelayToDag", "Retry")] == 42
    assert messages(text, EXCH01)[("Shadow\\4", "ShadowRedundancy", "Ready")] == 17
    assert messages(text, EXCH01)[("Poison", "Undefined", "Ready")] == 1
    assert messages(text, EXCH01)[("Unreachable", "Unreachable", "Ready")] == 2
    assert messages(text, EXCH01)[("Submission", "Undefined", "Ready")] == 0
    assert messages(text, "exch02.corp.example.com")[("6", "SmtpRelayToServers", "Retry")] == 12
    assert messages(text, "exch03.corp.example.com")[("21", "SmtpRelayToDag", "Retry")] == 9
    assert messages(text, "exch04.corp.example.com") == {("5", "SmtpRelayToDag", "Retry"): 3}
    totals = {
        server.split(".")[0]: sum(messages(text, server).values())
        for server in (
            EXCH01,
            "exch02.corp.example.com",
            "exch03.corp.example.com",
            "exch04.corp.example.com",
        )
    }
    assert totals == {"exch01": 74, "exch02": 37, "exch03": 16, "exch04": 3}

    assert queue_errors(text, EXCH01, "auth_temporary", "454", "4.7.0") == 1
    assert queue_errors(text, EXCH01, "auth_permanent", "451", "5.7.3") == 1
    assert queue_errors(text, EXCH01, "tls", "454", "4.7.5") == 1
    assert queue_errors(text, EXCH01, "connection", "421", "4.4.2") == 1
    assert queue_errors(text, EXCH01, "dns", "451", "4.4.0") == 1
    assert queue_errors(text, "exch02.corp.example.com", "connection", "441", "4.4.1") == 1
    assert queue_errors(text, "exch02.corp.example.com", "connection", "421", "4.4.2") == 1
    assert queue_errors(text, "exch03.corp.example.com", "tls", "421", "4.4.2") == 1
    # Every class has a series on every server with a snapshot, so alerts never wait for one.
    for server in (
        EXCH01,
        "exch02.corp.example.com",
        "exch03.corp.example.com",
        "exch04.corp.example.com",
    ):
        for cls in ERROR_CLASSES:
            assert queue_errors(text, server, cls) == 0
        for reason in REASONS:
            assert errors_of(text, server, reason) == 0
        last = value(
            text, "exchange_auth_queue_snapshot_last_success_timestamp_seconds", server=server
        )
        assert last is not None and last >= before

    assert (
        value(
            text,
            "exchange_auth_queue_info",
            server=EXCH01,
            queue="7",
            next_hop_domain="dag02",
            error_class="auth_temporary",
        )
        == 1
    )
    assert (
        value(
            text,
            "exchange_auth_queue_info",
            server=EXCH01,
            queue="Submission",
            next_hop_domain="Submission",
            error_class="",
        )
        == 1
    )
    assert value(text, "exchange_auth_queue_snapshot_queues", server=EXCH01) == 11
    age = value(text, "exchange_auth_queue_snapshot_age_seconds", server=EXCH01)
    assert age == pytest.approx(time.time() - 1795945453.512, abs=5)
    assert value(
        text, "exchange_auth_queue_snapshot_age_seconds", server="exch02.corp.example.com"
    ) == pytest.approx(300, abs=5)
    assert QUEUE_SNAPSHOT_SCAN.count(result) == 11 + 9 + 8 + 1


async def test_a_missing_file_counts_each_poll_and_reports_no_snapshot(tmp_path: Path) -> None:
    config = settings({EXCH01: tmp_path / "not-there.json"})
    result = await scan_queue_snapshots(config, NOBODY, None)
    result = await scan_queue_snapshots(config, NOBODY, result)
    text = metrics(result, config)
    assert errors_of(text, EXCH01, "missing") == 2
    assert (
        value(text, "exchange_auth_queue_snapshot_last_success_timestamp_seconds", server=EXCH01)
        == 0
    )
    assert series(text, "exchange_auth_queue_messages") == []
    assert series(text, "exchange_auth_queue_snapshot_age_seconds") == []


async def test_a_half_written_file_keeps_the_last_snapshot_which_ages(tmp_path: Path) -> None:
    path = tmp_path / "exch01.json"
    taken = time.time() - 100
    path.write_bytes(script_snapshot(taken))
    config = settings({EXCH01: path})
    good = await scan_queue_snapshots(config, NOBODY, None)
    good_at = good.servers[EXCH01].last_success

    path.write_bytes(script_snapshot(time.time(), MessageCount=7)[:1500])  # a writer cut short
    result = await scan_queue_snapshots(config, NOBODY, good)
    text = metrics(result, config)
    assert errors_of(text, EXCH01, "invalid_json") == 1
    assert messages(text, EXCH01)[("7", "SmtpRelayToDag", "Retry")] == 42  # the old snapshot
    assert (
        value(text, "exchange_auth_queue_snapshot_last_success_timestamp_seconds", server=EXCH01)
        == good_at
    )
    age = value(text, "exchange_auth_queue_snapshot_age_seconds", server=EXCH01)
    assert age is not None and age >= 99  # still the old snapshot's age, not reset by the attempt


async def test_recovery_after_an_invalid_file(tmp_path: Path) -> None:
    path = tmp_path / "exch01.json"
    path.write_bytes(script_snapshot(time.time()))
    config = settings({EXCH01: path})
    result = await scan_queue_snapshots(config, NOBODY, None)

    path.write_text(
        '{"schema_version": 1, "server": "exch01", "generated_at": "2026-11-29T09:44:13Z", "queues": "none"}'
    )
    result = await scan_queue_snapshots(config, NOBODY, result)
    assert result.servers[EXCH01].reason == "invalid_shape"
    failed_at = result.servers[EXCH01].last_success

    path.write_bytes(script_snapshot(time.time(), MessageCount=7))
    result = await scan_queue_snapshots(config, NOBODY, result)
    text = metrics(result, config)
    assert messages(text, EXCH01)[("7", "SmtpRelayToDag", "Retry")] == 7  # the new snapshot
    assert result.servers[EXCH01].reason == ""
    assert result.servers[EXCH01].last_success >= failed_at
    assert errors_of(text, EXCH01, "invalid_shape") == 1  # a counter: it never goes back


async def test_an_oversized_file_is_refused_and_the_snapshot_kept(tmp_path: Path) -> None:
    path = tmp_path / "exch01.json"
    path.write_bytes(script_snapshot(time.time()))
    config = settings({EXCH01: path})
    result = await scan_queue_snapshots(config, NOBODY, None)

    os.truncate(path, MAX_FILE_BYTES + 1)  # sparse: no 16 MB written to disk
    result = await scan_queue_snapshots(config, NOBODY, result)
    text = metrics(result, config)
    assert errors_of(text, EXCH01, "too_large") == 1
    assert messages(text, EXCH01)[("7", "SmtpRelayToDag", "Retry")] == 42


async def test_unreadable_and_wrong_server_files(tmp_path: Path) -> None:
    config = settings(
        {
            EXCH01: DATA / "getqueue-ps7.json",  # EXCH03's queues
            "exch02.corp.example.com": DATA / "script.json",  # says exch01
            "exch05.corp.example.com": tmp_path,  # a folder
        }
    )
    result = await scan_queue_snapshots(config, NOBODY, None)
    text = metrics(result, config)
    assert errors_of(text, EXCH01, "wrong_server") == 1
    assert errors_of(text, "exch02.corp.example.com", "wrong_server") == 1
    assert errors_of(text, "exch05.corp.example.com", "unreadable") == 1
    assert series(text, "exchange_auth_queue_messages") == []


async def test_an_unchanged_file_is_not_parsed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "exch01.json"
    path.write_bytes(script_snapshot(time.time()))
    parsed = []

    def counting(data: bytes) -> Any:
        parsed.append(len(data))
        return parse_snapshot(data)

    monkeypatch.setattr(queue_snapshots, "parse_snapshot", counting)
    config = settings({EXCH01: path})
    result = await scan_queue_snapshots(config, NOBODY, None)
    first = result.servers[EXCH01].last_success
    result = await scan_queue_snapshots(config, NOBODY, result)
    assert len(parsed) == 1
    assert result.servers[EXCH01].last_success >= first  # an unchanged file is still a good read
    path.write_bytes(script_snapshot(time.time(), MessageCount=8))
    result = await scan_queue_snapshots(config, NOBODY, result)
    assert len(parsed) == 2
    snapshot = result.servers[EXCH01].snapshot
    assert snapshot is not None and snapshot.queues[0].message_count == 8


async def test_a_hung_read_times_out_and_is_not_stacked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "exch01.json"
    path.write_bytes(script_snapshot(time.time()))
    release = threading.Event()
    calls = []
    real = queue_snapshots.read_snapshot_file

    def hanging(*args: Any) -> Any:
        calls.append(args)
        release.wait(10)  # a CIFS mount that stopped answering
        return real(*args)

    monkeypatch.setattr(queue_snapshots, "read_snapshot_file", hanging)
    monkeypatch.setattr(queue_snapshots, "READ_TIMEOUT", 0.05)
    config = settings({EXCH01: path})
    try:
        result = await scan_queue_snapshots(config, NOBODY, None)
        result = await scan_queue_snapshots(config, NOBODY, result)
        assert len(calls) == 1  # the second poll did not start another blocked read
        assert errors_of(metrics(result, config), EXCH01, "timeout") == 2
    finally:
        release.set()
    stuck = result.stuck[EXCH01]
    stuck.result(timeout=5)
    result = await scan_queue_snapshots(config, NOBODY, result)
    assert len(calls) == 2
    assert result.servers[EXCH01].reason == ""
    assert result.stuck == {}


def test_queue_series_are_capped_and_the_rest_summed(tmp_path: Path) -> None:
    queues = [
        {
            "Identity": f"EXCH01\\{row}",
            "DeliveryType": {"name": "DnsConnectorDelivery", "value": 1},
            "Status": {"name": "Ready" if row % 2 else "Retry", "value": 2 if row % 2 else 3},
            "MessageCount": row,
            "NextHopDomain": f"domain{row}.example",
        }
        for row in range(1, 301)
    ]
    document = {
        "schema_version": 1,
        "server": "exch01",
        "generated_at": "2026-11-29T09:44:13Z",
        "queues": queues,
    }
    snapshot = parse_snapshot(json.dumps(document).encode())
    result = QueueSnapshots(
        {EXCH01: queue_snapshots.ServerSnapshot(snapshot=snapshot, last_success=1.0)}
    )
    config = settings({EXCH01: tmp_path / "x.json"})
    text = metrics(result, config)
    got = messages(text, EXCH01)
    own = {k: v for k, v in got.items() if k[0] != OTHER_QUEUES}
    assert len(own) == MAX_QUEUE_SERIES
    assert ("300", "DnsConnectorDelivery", "Retry") in own  # the fullest keep their own series
    assert ("1", "DnsConnectorDelivery", "Ready") not in own
    assert got[(OTHER_QUEUES, "DnsConnectorDelivery", "Ready")] + got[
        (OTHER_QUEUES, "DnsConnectorDelivery", "Retry")
    ] == sum(range(1, 101))
    assert sum(got.values()) == sum(range(1, 301))
    assert len(series(text, "exchange_auth_queue_info")) == MAX_QUEUE_SERIES
    assert value(text, "exchange_auth_queue_snapshot_queues", server=EXCH01) == 300


def test_a_queue_listed_twice_is_one_series(tmp_path: Path) -> None:
    twice = [
        {"Identity": "EXCH01\\7", "DeliveryType": 14, "Status": 3, "MessageCount": n}
        for n in (2, 5)
    ]
    snapshot = parse_snapshot(json.dumps(twice).encode())
    result = QueueSnapshots(
        {EXCH01: queue_snapshots.ServerSnapshot(snapshot=snapshot, mtime=1.0, last_success=1.0)}
    )
    text = metrics(result, settings({EXCH01: tmp_path / "x.json"}))
    assert messages(text, EXCH01) == {("7", "SmtpRelayToDag", "Retry"): 7}


def test_servers_before_the_first_read_still_have_series(tmp_path: Path) -> None:
    text = metrics(None, settings({EXCH01: tmp_path / "x.json"}))
    assert (
        value(text, "exchange_auth_queue_snapshot_last_success_timestamp_seconds", server=EXCH01)
        == 0
    )
    assert errors_of(text, EXCH01, "missing") == 0


async def test_through_the_scan_runner(tmp_path: Path) -> None:
    config = settings(
        {EXCH01: DATA / "script.json", "exch02.corp.example.com": tmp_path / "gone.json"}
    )
    runner = ScanRunner([QUEUE_SNAPSHOT_SCAN], lambda: config, lambda: NOBODY)
    await runner.run_once(QUEUE_SNAPSHOT_SCAN)
    text = expose(scan_metrics(runner, config, NOBODY))
    # One server's missing file is that server's reason, not a failed scan.
    assert value(text, "exchange_auth_scan_success", scan="queue_snapshots") == 1
    assert value(text, "exchange_auth_scan_objects", scan="queue_snapshots") == 11
    assert messages(text, EXCH01)[("7", "SmtpRelayToDag", "Retry")] == 42
    assert errors_of(text, "exch02.corp.example.com", "missing") == 1


def test_the_scan_is_registered_and_polls_only_when_configured(tmp_path: Path) -> None:
    assert QUEUE_SNAPSHOT_SCAN in SCANS
    assert QUEUE_SNAPSHOT_SCAN.name == "queue_snapshots"
    assert QUEUE_SNAPSHOT_SCAN.interval(settings({})) is None
    assert QUEUE_SNAPSHOT_SCAN.interval(settings({EXCH01: tmp_path / "x.json"}, poll="1m")) == 60.0


# ---------------------------------------------------------------------------------------------
# deploy/windows/Export-QueueSnapshot.ps1. PowerShell itself cannot run here: its structure is
# checked through Pygments' PowerShell lexer (which knows its strings, here-strings and comments),
# and through tree-sitter's PowerShell grammar when that is installed.


def tokens(source: str) -> list[tuple[Any, str]]:
    return list(PowerShellLexer().get_tokens(source))


def code_of(source: str) -> str:
    """The script without its comments and string literals."""
    return "".join(v if t not in Comment and t not in String else " " for t, v in tokens(source))


def structure_problems(source: str) -> list[str]:
    problems = [f"lexer error at {v!r}" for t, v in tokens(source) if t in Error]
    closing = {")": "(", "}": "{", "]": "["}
    stack: list[str] = []
    for char in code_of(source):
        if char in "({[":
            stack.append(char)
        elif char in closing and (not stack or stack.pop() != closing[char]):
            problems.append(f"unbalanced {char}")
            break
    problems += [f"unclosed {c}" for c in stack]
    code = code_of(source)
    # Windows PowerShell 5.1 has none of these (PowerShell 7 syntax and parameters).
    for newer in ("?.", "??", "&&", "||", "-AsHashtable", "-EnumsAsStrings", "-Depth 100"):
        if newer in code:
            problems.append(f"not Windows PowerShell 5.1: {newer}")
    return problems


@pytest.fixture(scope="module")
def script() -> str:
    return SCRIPT.read_text(encoding="utf-8")


def test_the_structure_check_can_fail(script: str) -> None:
    assert structure_problems(script.replace("return $record\n}", "return $record\n", 1))
    assert structure_problems(
        script.replace("$Value.PSObject.BaseObject", "$Value?.PSObject.BaseObject", 1)
    )
    assert structure_problems(script + "\n$x = @{ a = (1\n")


def test_the_script_is_balanced_windows_powershell_51(script: str) -> None:
    assert structure_problems(script) == []
    # Windows PowerShell 5.1 reads a script without a BOM in the ANSI code page: stay ASCII.
    assert script.isascii()


def test_the_script_parses_as_powershell(script: str) -> None:
    # A real PowerShell grammar (tree-sitter), since no PowerShell runs here.
    import tree_sitter
    import tree_sitter_powershell

    parser = tree_sitter.Parser(tree_sitter.Language(tree_sitter_powershell.language()))
    assert not parser.parse(script.encode()).root_node.has_error
    assert parser.parse(b"function f { if ($x) { 1 }").root_node.has_error


def param_block(script: str) -> str:
    match = re.search(r"\[CmdletBinding\(\)\]\s*param\((.*?)\n\)", script, re.DOTALL)
    assert match, "no [CmdletBinding()] param(...) block"
    return match.group(1)


def test_the_script_declares_validated_parameters(script: str) -> None:
    params = param_block(script)
    assert re.search(
        r"\[Parameter\(Mandatory = \$true\)\]\s*\[ValidateNotNullOrEmpty\(\)\]\s*\[ValidatePattern\('\\\.json\$'\)\]\s*\[string\] \$Path",
        params,
    )
    assert re.search(
        r"\[ValidatePattern\([^)]*\)\]\s*\[string\] \$Server = \$env:COMPUTERNAME", params
    )
    assert re.search(r"\[ValidateRange\(1, \d+\)\]\s*\[int\] \$ResultSize", params)
    code = code_of(script)
    assert "Set-StrictMode -Version Latest" in code
    assert re.search(r"\$ErrorActionPreference = 'Stop'", script)


def test_the_script_has_help_with_a_scheduled_task_every_minute(script: str) -> None:
    help_text = script[: script.index("#>")]
    assert help_text.startswith("<#")
    for keyword in (
        ".SYNOPSIS",
        ".DESCRIPTION",
        ".PARAMETER Path",
        ".PARAMETER Server",
        ".EXAMPLE",
        ".NOTES",
    ):
        assert f"\n{keyword}" in help_text
    assert re.search(r"schtasks(\.exe)? /Create .*/SC MINUTE /MO 1 ", help_text)
    assert "Register-ScheduledTask" in help_text
    assert "-RepetitionInterval (New-TimeSpan -Minutes 1)" in help_text


def test_the_script_writes_a_temporary_file_then_renames_it(script: str) -> None:
    code = code_of(script)
    assert "ConvertTo-Json -InputObject $snapshot -Depth 4" in code
    folder = code.index("$folder = [System.IO.Path]::GetDirectoryName($target)")
    temporary = code.index("$temporary = [System.IO.Path]::Combine($folder,")
    write = code.index("[System.IO.File]::WriteAllText($temporary, $json, $utf8)")
    replace = code.index("[System.IO.File]::Replace($temporary, $target, $null)")
    moves = [
        m.start()
        for m in re.finditer(
            r"Move-Item -LiteralPath \$temporary -Destination \$target -Force", code
        )
    ]
    assert folder < temporary < write < replace
    assert moves and all(write < m for m in moves)
    # Nothing else writes the destination: it only ever receives a complete file.
    assert not re.search(r"(Out-File|Set-Content|WriteAllText|WriteAllBytes)[^\n]*\$target", code)


def test_the_script_exits_non_zero_on_failure(script: str) -> None:
    code = code_of(script)
    assert re.search(r"function Stop-WithCode \{.*?exit \$Code", code, re.DOTALL)
    for number in (2, 3, 4):
        assert re.search(rf"Stop-WithCode {number} ", code)
    assert code.rstrip().endswith("exit 0")


def test_the_script_holds_no_secrets(script: str) -> None:
    code = code_of(script).lower()
    for secret in (
        "convertto-securestring",
        "-asplaintext",
        "-password",
        "get-credential",
        "$password",
    ):
        assert secret not in code


def powershell_array(script: str, name: str) -> list[str]:
    match = re.search(rf"\${name} = @\((.*?)\)", script, re.DOTALL)
    assert match, name
    return re.findall(r"'([^']*)'", match.group(1))


def test_the_script_and_the_reader_agree_on_enums_and_fields(script: str) -> None:
    assert powershell_array(script, "StatusNames") == list(QUEUE_STATUSES)
    assert powershell_array(script, "DeliveryTypeNames") == list(DELIVERY_TYPES)
    assert re.search(rf"\$SchemaVersion = {SCHEMA_VERSION}\n", script)
    record = re.search(r"\$record = \[ordered\]@\{(.*?)\n    \}", script, re.DOTALL)
    assert record
    fields = re.findall(r"^\s+(\w+)\s+=", record.group(1), re.MULTILINE)
    optional = re.search(r"foreach \(\$name in @\(([^)]*)\)\)", script)
    assert optional
    fields += re.findall(r"'(\w+)'", optional.group(1))
    document = re.search(r"\$snapshot = \[ordered\]@\{(.*?)\n\}", script, re.DOTALL)
    assert document
    top = re.findall(r"^\s+(\w+)\s+=", document.group(1), re.MULTILINE)
    # The committed sample is what the script writes: same keys, same order.
    sample = json.loads((DATA / "script.json").read_text())
    assert list(sample) == top
    assert list(sample["queues"][0]) == fields
    assert list(sample["queues"][0]["Status"]) == ["name", "value"]
