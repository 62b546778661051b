"""The admin log: every privileged action kept on disk, bounded, readable in pages after a restart."""

from tidebank.node.api.admin_log import AdminLog


def _record(log: AdminLog, n: int, **kw) -> None:
    for i in range(n):
        log.record(principal="alice", roles="admin", method="Admin/SetLinkFaults", permission="cluster.faults",
                   result="OK", detail=f"#{i}", **kw)


def test_records_survive_a_restart_in_order(tmp_path):
    log = AdminLog(tmp_path, "n1")
    _record(log, 3)
    log.close()
    again = AdminLog(tmp_path, "n1")
    records, next_seq = again.page(0, 10)
    assert [r.detail for r in records] == ["#0", "#1", "#2"] and next_seq == 0
    _record(again, 1)
    assert again.page(3, 10)[0][0].seq == 4  # numbering goes on after the restart


def test_pages_follow_each_other(tmp_path):
    log = AdminLog(tmp_path, "n1")
    _record(log, 5)
    first, after = log.page(0, 2)
    second, after2 = log.page(after, 2)
    third, after3 = log.page(after2, 2)
    assert [r.seq for r in first + second + third] == [1, 2, 3, 4, 5] and after3 == 0


def test_the_files_stay_bounded(tmp_path):
    log = AdminLog(tmp_path, "n1", file_bytes_max=2_000)
    _record(log, 200)
    log.close()
    assert sum(p.stat().st_size for p in tmp_path.glob("admin-log*.jsonl")) < 2 * 2_000 + 500
    records, _ = AdminLog(tmp_path, "n1").page(0, 1024)
    assert records[-1].detail == "#199"


def test_a_torn_last_line_is_skipped_not_fatal(tmp_path):
    log = AdminLog(tmp_path, "n1")
    _record(log, 2)
    log.close()
    with open(tmp_path / "admin-log.jsonl", "a") as f:
        f.write('{"seq": 3, "time_')
    again = AdminLog(tmp_path, "n1")
    assert [r.seq for r in again.page(0, 10)[0]] == [1, 2]
    _record(again, 1)
    again.close()
    assert [r.seq for r in AdminLog(tmp_path, "n1").page(0, 10)[0]] == [1, 2, 3]


def test_long_details_are_cut(tmp_path):
    log = AdminLog(tmp_path, "n1")
    log.record(principal="p", roles="", method="m", permission="x", result="OK", detail="y" * 10_000)
    assert len(log.page(0, 1)[0][0].detail) == 512
