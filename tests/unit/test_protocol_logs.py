"""The protocol-log follower against real files: appends, partial lines, rotation, truncation,
restarts with the state file, and the scan's metrics."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import shutil
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.background import ScanState
from exporter.checks import protocol_logs
from exporter.checks.protocol_logs import (
    PROTOCOL_LOG_SCAN,
    FolderKey,
    Follower,
    PollTimeout,
    ProtocolLogs,
    scan_protocol_logs,
)
from exporter.config import Settings, load_text
from exporter.inventory import Inventory
from exporter.protocols.smtp_log import BOM, DEFAULT_LAYOUT, Tally, count_lines
from tests.metrics_text import expose, value

TESTDATA = Path(__file__).parent.parent / "testdata" / "protocol_logs"
SERVER = "exch01.corp.example.test"
LIMIT = 16384
HEADER = (
    b"#Software: Microsoft Exchange Server\r\n"
    b"#Version: 15.0.0.0\r\n"
    b"#Log-type: SMTP Send Protocol Log\r\n"
    b"#Date: 2026-11-29T09:44:12.017Z\r\n"
    b"#Fields: date-time,connector-id,session-id,sequence-number,local-endpoint,remote-endpoint,event,data,context\r\n"
)


def response(data: str, seq: int = 12) -> bytes:
    return (
        f"2026-11-29T09:44:12.041Z,Intra-Organization SMTP Send Connector,08DE2F6A1B3C4D01,{seq},"
        f"10.0.1.21:50213,10.0.1.22:25,<,{data},\r\n"
    ).encode()


AUTH = response("454 4.7.0 Temporary authentication failure")
OK = response("250 2.0.0 OK")
COMMAND = (
    b"2026-11-29T09:44:12.041Z,Intra-Organization SMTP Send Connector,08DE2F6A1B3C4D01,13,"
    b"10.0.1.21:50213,10.0.1.22:25,>,QUIT,\r\n"
)


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as file:
        file.write(data)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "ProtocolLog" / "SmtpSend"
    path.mkdir(parents=True)
    return path


def poll(follower: Follower, folder: Path, limit: int = LIMIT) -> None:
    follower.poll([FolderKey(SERVER, folder)], limit)


def send(follower: Follower) -> Tally:
    return follower.totals.get((SERVER, "send"), Tally())


def receive(follower: Follower) -> Tally:
    return follower.totals.get((SERVER, "receive"), Tally())


def test_first_sight_starts_at_the_end_then_counts_exactly_what_is_appended(folder: Path) -> None:
    log = folder / "SEND20261129-1.LOG"
    log.write_bytes(BOM + HEADER + AUTH * 10 + OK * 5)
    follower = Follower()
    poll(follower, folder)
    assert send(follower) == Tally()  # no replay of history
    assert follower.bytes_read[(SERVER, "send")] == 0
    append(log, AUTH * 3 + COMMAND + OK)
    poll(follower, folder)
    assert send(follower) == Tally({("454", "4.7.0"): 3, ("250", "2.0.0"): 1}, lines=5)
    assert follower.bytes_read[(SERVER, "send")] == len(AUTH * 3 + COMMAND + OK)
    poll(follower, folder)  # nothing new: nothing counted twice
    assert send(follower).lines == 5


def test_a_partial_line_waits_for_its_newline(folder: Path) -> None:
    log = folder / "SEND20261129-1.LOG"
    log.write_bytes(HEADER)
    follower = Follower()
    poll(follower, folder)
    append(log, OK + AUTH[:40])
    poll(follower, folder)
    assert send(follower) == Tally({("250", "2.0.0"): 1}, lines=1)
    assert follower.unread[(SERVER, "send")] == 40
    append(log, AUTH[40:-2])
    poll(follower, folder)
    assert send(follower).lines == 1  # CR written, LF not yet
    append(log, AUTH[-2:])
    poll(follower, folder)
    assert send(follower) == Tally({("250", "2.0.0"): 1, ("454", "4.7.0"): 1}, lines=2)
    assert follower.bytes_read[(SERVER, "send")] == len(OK + AUTH)
    assert follower.unread[(SERVER, "send")] == 0


def test_first_sight_of_a_file_ending_mid_line_takes_that_line_whole(folder: Path) -> None:
    log = folder / "SEND20261129-1.LOG"
    log.write_bytes(HEADER + OK * 3 + AUTH[:30])
    follower = Follower()
    poll(follower, folder)
    append(log, AUTH[30:])
    poll(follower, folder)
    assert send(follower) == Tally({("454", "4.7.0"): 1}, lines=1)


def test_rotation_finishes_the_old_file_and_reads_the_new_one_from_its_start(folder: Path) -> None:
    old = folder / "SEND20261129-9.LOG"
    old.write_bytes(HEADER + OK)
    follower = Follower()
    poll(follower, folder)
    append(old, AUTH)  # the last lines of the old file
    new = folder / "SEND20261129-10.LOG"
    new.write_bytes(BOM + HEADER + OK * 2 + AUTH)
    poll(follower, folder)
    assert send(follower) == Tally({("454", "4.7.0"): 2, ("250", "2.0.0"): 2}, lines=4)
    assert follower.followed[(SERVER, "send")] == 2
    old.unlink()  # Exchange's log retention
    append(new, OK)
    poll(follower, folder)
    assert send(follower).responses[("250", "2.0.0")] == 3
    assert list(follower.files[FolderKey(SERVER, folder)]) == ["SEND20261129-10.LOG"]


def test_send_and_receive_files_count_their_own_side(folder: Path) -> None:
    follower = Follower()
    poll(follower, folder)
    shutil.copy(TESTDATA / "SEND20261129-1.LOG", folder / "SEND20261129-1.LOG")
    shutil.copy(TESTDATA / "RECV20261129-1.LOG", folder / "recv20261129-1.log")
    (folder / "MSGTRK20261129-1.LOG").write_bytes(HEADER + AUTH)  # not a protocol log
    poll(follower, folder)
    assert send(follower).responses[("454", "4.7.0")] == 1
    assert sum(send(follower).responses.values()) == 11
    assert receive(follower).responses == {
        ("220", ""): 1,
        ("250", ""): 2,
        ("220", "2.0.0"): 1,
        ("454", "4.7.0"): 1,
        ("221", "2.0.0"): 1,
    }
    assert (
        follower.bytes_read[(SERVER, "receive")] == (TESTDATA / "RECV20261129-1.LOG").stat().st_size
    )


def test_truncation_reads_again_from_the_start(folder: Path) -> None:
    log = folder / "SEND20261129-1.LOG"
    log.write_bytes(HEADER)
    follower = Follower()
    poll(follower, folder)
    append(log, OK * 20)
    poll(follower, folder)
    log.write_bytes(HEADER + AUTH)  # shorter than what was read
    poll(follower, folder)
    assert send(follower) == Tally({("250", "2.0.0"): 20, ("454", "4.7.0"): 1}, lines=21)
    assert follower.resets[(SERVER, "send", "truncated")] == 1


def test_a_replaced_file_is_read_from_the_start(folder: Path) -> None:
    log = folder / "SEND20261129-1.LOG"
    log.write_bytes(HEADER)
    follower = Follower()
    poll(follower, folder)
    append(log, OK)
    poll(follower, folder)
    # A new file under the same name, longer than the old one: only its head tells.
    replacement = folder / "incoming.tmp"
    replacement.write_bytes(HEADER.replace(b"09:44:12.017Z", b"10:00:00.000Z") + AUTH * 4)
    os.replace(replacement, log)
    poll(follower, folder)
    assert send(follower) == Tally({("250", "2.0.0"): 1, ("454", "4.7.0"): 4}, lines=5)
    assert follower.resets[(SERVER, "send", "replaced")] == 1


def test_a_file_rewritten_in_place_is_told_by_its_head(folder: Path) -> None:
    log = folder / "SEND20261129-1.LOG"
    log.write_bytes(HEADER)
    follower = Follower()
    poll(follower, folder)
    append(log, OK * 9)
    poll(follower, folder)
    inode = log.stat().st_ino
    # Same inode, at least as long as what was read: only the head differs.
    log.write_bytes(HEADER.replace(b"09:44:12.017Z", b"10:00:00.000Z") + AUTH * 12)
    assert log.stat().st_ino == inode
    poll(follower, folder)
    assert send(follower) == Tally({("250", "2.0.0"): 9, ("454", "4.7.0"): 12}, lines=21)
    assert follower.resets[(SERVER, "send", "replaced")] == 1


def test_a_new_inode_under_the_same_full_head_is_the_same_file(folder: Path) -> None:
    # A share remounted without stable inode numbers: the same bytes, the same file.
    log = folder / "SEND20261129-1.LOG"
    log.write_bytes(HEADER + OK * 20)
    follower = Follower()
    poll(follower, folder)
    append(log, AUTH)
    poll(follower, folder)
    copy = folder / "copy.tmp"
    shutil.copyfile(log, copy)
    append(copy, AUTH)
    os.replace(copy, log)
    poll(follower, folder)
    assert send(follower) == Tally({("454", "4.7.0"): 2}, lines=2)
    assert not follower.resets


def test_restart_with_the_state_file_neither_loses_nor_repeats_a_line(
    folder: Path, tmp_path: Path
) -> None:
    state_file = tmp_path / "state" / "protocol-logs.json"
    log = folder / "SEND20261129-1.LOG"
    log.write_bytes(BOM + HEADER + OK * 100)
    first = Follower.from_state_file(state_file)
    poll(first, folder)
    append(log, AUTH * 2 + OK[:25])
    poll(first, folder)
    first.save(state_file)
    assert send(first) == Tally({("454", "4.7.0"): 2}, lines=2)
    # Down for a while: the line is completed, more are written, the log rotates.
    append(log, OK[25:] + AUTH)
    (folder / "SEND20261129-2.LOG").write_bytes(HEADER + AUTH + OK)
    second = Follower.from_state_file(state_file)
    poll(second, folder)
    assert send(second) == Tally({("250", "2.0.0"): 2, ("454", "4.7.0"): 2}, lines=4)
    saved = json.loads(state_file.read_text())
    assert saved["version"] == 1
    assert [f["server"] for f in saved["folders"]] == [SERVER]
    assert not [p for p in state_file.parent.iterdir() if p.name != state_file.name]


def test_a_state_file_that_cannot_be_used_starts_at_the_end(folder: Path, tmp_path: Path) -> None:
    state_file = tmp_path / "protocol-logs.json"
    state_file.write_text(
        '{"version": 1, "folders": [{"server": "x", "path": "/y", "files": {"a": {"offset": -5}}}]}'
    )
    log = folder / "SEND20261129-1.LOG"
    log.write_bytes(HEADER + AUTH * 7)
    follower = Follower.from_state_file(state_file)
    assert follower.state_errors["load"] == 1
    poll(follower, folder)
    assert send(follower) == Tally()


def test_without_a_state_file_nothing_is_written(folder: Path, tmp_path: Path) -> None:
    before = sorted(tmp_path.rglob("*"))
    follower = Follower.from_state_file(None)
    poll(follower, folder)
    assert sorted(tmp_path.rglob("*")) == before


def test_a_missing_folder_is_a_reason_not_an_exception(tmp_path: Path, folder: Path) -> None:
    missing = tmp_path / "not-mounted"
    follower = Follower()
    (folder / "SEND20261129-1.LOG").write_bytes(HEADER)
    follower.poll([FolderKey(SERVER, missing), FolderKey(SERVER, folder)], LIMIT)
    append(folder / "SEND20261129-1.LOG", AUTH)
    follower.poll([FolderKey(SERVER, missing), FolderKey(SERVER, folder)], LIMIT)
    assert follower.folders[FolderKey(SERVER, missing)] == "not_found"
    assert follower.folders[FolderKey(SERVER, folder)] == ""
    assert follower.read_errors[(SERVER, "not_found")] == 2
    assert send(follower).responses == {("454", "4.7.0"): 1}  # the other folder kept counting
    # Mounted later with history in it: taken from its end like any first sight.
    missing.mkdir()
    (missing / "SEND20261129-1.LOG").write_bytes(HEADER + AUTH * 50)
    follower.poll([FolderKey(SERVER, missing), FolderKey(SERVER, folder)], LIMIT)
    assert follower.folders[FolderKey(SERVER, missing)] == ""
    assert send(follower).responses == {("454", "4.7.0"): 1}


def test_an_unreadable_file_is_a_reason_and_the_rest_still_counts(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    locked = folder / "SEND20261129-1.LOG"
    locked.write_bytes(HEADER)
    fine = folder / "SEND20261129-2.LOG"
    fine.write_bytes(HEADER)
    follower = Follower()
    poll(follower, folder)
    real_open = Path.open

    def guarded(self: Path, *args: object, **kwargs: object) -> object:
        if self.name == locked.name:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)  # type: ignore[call-overload]

    append(locked, AUTH)
    append(fine, AUTH)
    monkeypatch.setattr(Path, "open", guarded)
    poll(follower, folder)
    assert follower.read_errors[(SERVER, "permission_denied")] == 1
    assert follower.folders[FolderKey(SERVER, folder)] == "permission_denied"
    assert send(follower).responses == {("454", "4.7.0"): 1}
    monkeypatch.undo()
    poll(follower, folder)  # readable again: its line is counted, once
    assert send(follower).responses == {("454", "4.7.0"): 2}
    assert follower.folders[FolderKey(SERVER, folder)] == ""


def test_a_file_unreadable_at_first_sight_is_still_taken_up_at_its_end(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = folder / "SEND20261129-1.LOG"
    log.write_bytes(HEADER + AUTH * 30)
    real_open = Path.open

    def refused(self: Path, *args: object, **kwargs: object) -> object:
        if self.name == log.name:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)  # type: ignore[call-overload]

    follower = Follower()
    with monkeypatch.context() as patch:
        patch.setattr(Path, "open", refused)
        poll(follower, folder)
    append(log, OK)
    poll(follower, folder)  # readable now: its history is not replayed
    append(log, AUTH)
    poll(follower, folder)
    assert send(follower) == Tally({("454", "4.7.0"): 1}, lines=1)


@pytest.mark.parametrize("chunk", [2, 4 << 20])
def test_a_byte_order_mark_cut_in_two(
    folder: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    monkeypatch.setattr(protocol_logs, "CHUNK", chunk)
    follower = Follower()
    poll(follower, folder)
    log = folder / "SEND20261129-1.LOG"
    log.write_bytes(BOM[:2])
    poll(follower, folder)
    append(log, BOM[2:] + HEADER + AUTH)
    poll(follower, folder)
    assert send(follower) == Tally({("454", "4.7.0"): 1}, lines=1)
    log.write_bytes(BOM + HEADER.replace(b"09:44", b"10:44") + OK)  # read with a 2-byte cut
    poll(follower, folder)
    assert send(follower) == Tally({("454", "4.7.0"): 1, ("250", "2.0.0"): 1}, lines=2)


def test_an_overlong_line_is_counted_once_and_skipped_without_being_kept(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(protocol_logs, "CHUNK", 64)
    log = folder / "SEND20261129-1.LOG"
    log.write_bytes(HEADER)
    follower = Follower()
    poll(follower, folder, limit=256)
    append(log, OK + b"x" * 1000)
    poll(follower, folder, limit=256)
    assert send(follower) == Tally({("250", "2.0.0"): 1}, lines=2, malformed=1)
    assert follower.files[FolderKey(SERVER, folder)][log.name].discarding
    append(log, b"y" * 1000)
    poll(follower, folder, limit=256)
    append(log, b"z\r\n" + AUTH)
    poll(follower, folder, limit=256)
    assert send(follower) == Tally({("250", "2.0.0"): 1, ("454", "4.7.0"): 1}, lines=3, malformed=1)
    assert follower.bytes_read[(SERVER, "send")] == log.stat().st_size - len(HEADER)


def test_a_poll_reads_at_most_its_budget_and_the_next_goes_on(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(protocol_logs, "CHUNK", 65536)
    log = folder / "SEND20261129-1.LOG"
    log.write_bytes(HEADER)
    follower = Follower()
    poll(follower, folder)
    append(log, AUTH * 20_000)
    follower.poll([FolderKey(SERVER, folder)], LIMIT, budget=1)
    first = send(follower).lines
    assert 0 < first < 20_000
    assert follower.unread[(SERVER, "send")] > 0
    while follower.poll([FolderKey(SERVER, folder)], LIMIT, budget=1).bytes_read:
        pass
    assert send(follower) == Tally({("454", "4.7.0"): 20_000}, lines=20_000)
    assert follower.unread[(SERVER, "send")] == 0


# -- the follower against the reference, whatever the writes, chunks and restarts ----------


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    pieces=st.lists(
        st.tuples(
            st.sampled_from([AUTH, OK, COMMAND, b"garbage line\r\n", b"\r\n", b"x" * 300 + b"\n"]),
            st.integers(min_value=0, max_value=400),
            st.sampled_from(["poll", "restart", "none"]),
        ),
        max_size=25,
    ),
    chunk=st.sampled_from([7, 64, 1000]),
)
def test_follower_counts_exactly_what_the_reference_counts(
    tmp_path_factory: pytest.TempPathFactory,
    pieces: list[tuple[bytes, int, str]],
    chunk: int,
) -> None:
    root = tmp_path_factory.mktemp("follow")
    folder = root / "SmtpSend"
    folder.mkdir()
    state_file = root / "state.json"
    log = folder / "SEND20261129-1.LOG"
    log.write_bytes(b"")
    original = protocol_logs.CHUNK
    protocol_logs.CHUNK = chunk
    try:
        follower = Follower.from_state_file(state_file)
        poll(follower, folder, limit=256)
        follower.save(state_file)
        total = Tally()
        written = BOM + HEADER
        for line, cut, action in pieces:
            # Lines arrive in arbitrary cuts; a poll may land anywhere.
            written += line
            data = log.read_bytes()
            append(log, written[len(data) : len(data) + cut + 1])
            if action == "poll":
                poll(follower, folder, limit=256)
            elif action == "restart":
                poll(follower, folder, limit=256)
                follower.save(state_file)
                total.merge(send(follower))
                follower = Follower.from_state_file(state_file)
        append(log, written[log.stat().st_size :])
        poll(follower, folder, limit=256)
        total.merge(send(follower))
    finally:
        protocol_logs.CHUNK = original
    expected = Tally()
    body = written.removeprefix(BOM)
    count_lines(body, 0, body.rfind(b"\n") + 1, DEFAULT_LAYOUT, b"<", expected, 256)
    assert total == expected


# -- the scan and its metrics --------------------------------------------------------------


def _settings(folder: Path, state_file: Path | None = None) -> Settings:
    state = f", state_file: {state_file}" if state_file else ""
    return load_text(
        "realm: corp.example.test\n"
        f"exchange_servers: {{static: [{{name: {SERVER}}}]}}\n"
        f"checks: {{queues: {{protocol_logs: [{{server: {SERVER}, path: {folder}}}]{state}}}}}\n"
    )


async def test_the_scan_carries_counts_over_and_exposes_them(folder: Path, tmp_path: Path) -> None:
    state_file = tmp_path / "positions.json"
    settings = _settings(folder, state_file)
    inventory = Inventory(())
    log = folder / "SEND20261129-1.LOG"
    log.write_bytes(HEADER + AUTH * 3)
    assert PROTOCOL_LOG_SCAN.interval(settings) == 15.0
    first = await scan_protocol_logs(settings, inventory, None)
    append(log, AUTH * 2 + OK + b"not, a, log, line\r\n")
    second = await scan_protocol_logs(settings, inventory, first)
    assert state_file.exists()
    text = expose(PROTOCOL_LOG_SCAN.emit(ScanState(result=second), settings, inventory))
    labels = {"server": SERVER, "direction": "send"}
    assert (
        value(
            text,
            "exchange_auth_smtp_log_responses_total",
            **labels,
            smtp_code="454",
            enhanced_code="4.7.0",
        )
        == 2
    )
    assert (
        value(
            text,
            "exchange_auth_smtp_log_responses_total",
            **labels,
            smtp_code="250",
            enhanced_code="2.0.0",
        )
        == 1
    )
    assert value(text, "exchange_auth_smtp_log_malformed_lines_total", **labels) == 1
    assert value(text, "exchange_auth_smtp_log_lines_total", **labels) == 4
    assert (
        value(text, "exchange_auth_smtp_log_bytes_read_total", **labels) == len(AUTH * 2 + OK) + 19
    )
    assert value(text, "exchange_auth_smtp_log_files", **labels) == 1
    assert value(text, "exchange_auth_smtp_log_files", server=SERVER, direction="receive") == 0
    assert value(text, "exchange_auth_smtp_log_folder_up", server=SERVER, path=str(folder)) == 1
    assert value(text, "exchange_auth_smtp_log_state_file_errors_total", operation="save") == 0
    # The snapshot scrapes saw is a copy: the next run does not change it under them.
    append(log, AUTH)
    third = await scan_protocol_logs(settings, inventory, second)
    assert second.snapshot.totals[(SERVER, "send")].responses[("454", "4.7.0")] == 2
    assert third.snapshot.totals[(SERVER, "send")].responses[("454", "4.7.0")] == 3


async def test_a_missing_folder_shows_in_the_metrics(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    settings = _settings(missing)
    inventory = Inventory(())
    result = await scan_protocol_logs(settings, inventory, None)
    text = expose(PROTOCOL_LOG_SCAN.emit(ScanState(result=result), settings, inventory))
    assert value(text, "exchange_auth_smtp_log_folder_up", server=SERVER, path=str(missing)) == 0
    assert (
        value(
            text,
            "exchange_auth_smtp_log_folder_failure",
            server=SERVER,
            path=str(missing),
            reason="not_found",
        )
        == 1
    )
    assert (
        value(text, "exchange_auth_smtp_log_read_errors_total", server=SERVER, reason="not_found")
        == 1
    )
    assert (
        value(text, "exchange_auth_smtp_log_malformed_lines_total", server=SERVER, direction="send")
        == 0
    )
    assert result.auth_failures(SERVER) is None


async def test_a_hung_read_fails_the_scan_without_a_second_reader(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(folder)
    inventory = Inventory(())
    (folder / "SEND20261129-1.LOG").write_bytes(HEADER)
    release = threading.Event()
    started: list[Follower] = []
    real_poll = protocol_logs._poll

    def stuck(follower: Follower, settings: Settings) -> object:
        started.append(follower)
        release.wait(10)
        return real_poll(follower, settings)

    monkeypatch.setattr(protocol_logs, "_poll", stuck)
    monkeypatch.setattr(protocol_logs, "POLL_TIMEOUT", 0.05)
    with pytest.raises(PollTimeout, match="goes on reading"):
        await scan_protocol_logs(settings, inventory, None)
    with pytest.raises(PollTimeout, match="still reading"):
        await scan_protocol_logs(settings, inventory, None)
    assert len(started) == 1
    release.set()
    monkeypatch.setattr(protocol_logs, "POLL_TIMEOUT", 10.0)
    assert started[0].inflight is not None
    await asyncio.wrap_future(started[0].inflight)  # the stuck poll ends, late
    result = await scan_protocol_logs(settings, inventory, None)
    assert result.follower is started[0]  # the reader that was stuck, not a second one
    assert len(started) == 2
    assert not protocol_logs._UNFINISHED_FIRST_RUNS


def test_no_protocol_logs_configured_disables_the_scan() -> None:
    settings = load_text("realm: corp.example.test\n")
    assert PROTOCOL_LOG_SCAN.interval(settings) is None


def test_recent_authentication_failures_feed_the_verdict(folder: Path) -> None:
    log = folder / "SEND20261129-1.LOG"
    log.write_bytes(HEADER)
    follower = Follower()
    poll(follower, folder)
    result = ProtocolLogs(follower, follower.snapshot())
    assert result.auth_failures(SERVER) == []
    assert result.auth_failures("exch09.corp.example.test") is None
    append(log, AUTH * 3 + OK + response("535 5.7.8 Authentication credentials invalid"))
    append(log, response("454 4.7.5 Certificate validation failed"))  # TLS, not Kerberos
    poll(follower, folder)
    result = ProtocolLogs(follower, follower.snapshot())
    found = result.auth_failures(SERVER)
    assert found is not None and len(found) == 2
    assert "454 4.7.0 3 times" in found[0] and "SmtpSend" in found[0]
    assert "535 5.7.8 once" in found[1]
    later = follower.recent_auth[0][0] + protocol_logs.RECENT_SECONDS + 1
    assert result.auth_failures(SERVER, now=later) == []
