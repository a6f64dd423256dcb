"""The checker itself: fed doctored histories and ledgers, it must find each anomaly."""

from __future__ import annotations

import json

import pytest

from tests.reliability.checker import Report, _check_real_time, _check_usage
from tests.reliability.workload import History, Op

pytestmark = pytest.mark.reliability


class Ledger:
    """Stands in for a connection: answers the usage query with given (seq, key) rows."""

    def __init__(self, rows: list[tuple[int, str]]) -> None:
        self.rows = rows

    def execute(self, _query: str) -> Ledger:
        return self

    def fetchall(self) -> list[tuple[int, str]]:
        out = []
        for seq, key in self.rows:
            customer, tx = key.split("/")
            out.append((seq, json.dumps({"customer_id": customer, "transaction_id": tx})))
        return out


def usage(
    keys: tuple[str, ...],
    outcome: str,
    at: tuple[float, float],
    results: tuple[tuple[str, str, int], ...] = (),
) -> Op:
    return Op(0, "usage", keys, at[0], at[1], outcome, results=results, token=0)


def usage_report(history: History, rows: list[tuple[int, str]]) -> Report:
    report = Report()
    _check_usage(Ledger(rows), history, report)  # type: ignore[arg-type]
    return report


def test_a_clean_history_has_no_violations() -> None:
    history = History()
    history.add(usage(("a/1",), "indeterminate", (0, 1)))
    history.add(usage(("a/1",), "ok", (2, 3), (("a/1", "DUPLICATE", 1),)))
    history.add(usage(("a/2",), "indeterminate", (4, 5)))
    report = usage_report(history, [(1, "a/1")])
    assert report.violations == []
    assert (report.acknowledged, report.duplicates, report.indeterminate) == (1, 1, 1)


def test_lost_doubled_phantom_and_refused_but_written_are_found() -> None:
    history = History()
    history.add(usage(("a/1",), "ok", (0, 1), (("a/1", "ACCEPTED", 1),)))  # lost
    history.add(usage(("a/2",), "ok", (0, 1), (("a/2", "ACCEPTED", 2),)))  # doubled
    history.add(usage(("a/3",), "failed", (0, 1)))  # refused, yet written
    history.add(usage(("a/4",), "ok", (0, 1), (("a/4", "ACCEPTED", 9),)))  # wrong seq
    report = usage_report(history, [(2, "a/2"), (3, "a/2"), (4, "a/3"), (5, "a/4"), (6, "b/9")])
    assert (report.lost, report.doubled, report.phantom) == (1, 1, 1)
    text = "\n".join(report.violations)
    assert "refused every time" in text
    assert "acknowledged at seqs [9]" in text
    assert len(report.violations) == 5


def test_seqs_that_go_back_in_real_time_are_found() -> None:
    history = History()
    history.add(usage(("a/1",), "ok", (0, 1), (("a/1", "ACCEPTED", 10),)))
    history.add(usage(("a/2",), "ok", (2, 3), (("a/2", "ACCEPTED", 5),)))  # after, yet lower
    history.add(usage(("a/3",), "ok", (0.5, 4), (("a/3", "ACCEPTED", 7),)))  # concurrent: fine
    report = Report()
    _check_real_time(history, report)
    assert len(report.violations) == 1, report.violations
    assert "reached 10, a later op has 5" in report.violations[0]


def test_tokens_follow_real_time_except_for_replayed_answers() -> None:
    def answered(keys: tuple[str, ...], at: tuple[float, float], status: str, seq: int) -> Op:
        results = tuple((key, status, seq) for key in keys)
        return Op(0, "usage", keys, at[0], at[1], "ok", results=results, token=seq)

    history = History()
    history.add(usage(("a/1",), "indeterminate", (0, 1)))  # its write committed at seq 3
    history.add(answered(("b/1",), (1, 2), "ACCEPTED", 8))
    # The retry of a/1 answers with the original seq 3, below b/1's 8: a replay, fine.
    history.add(answered(("a/1",), (3, 4), "DUPLICATE", 3))
    report = Report()
    _check_real_time(history, report)
    assert report.violations == []

    history.add(Op(1, "usage", ("c/1",), 5, 6, "ok", token=4))  # a first attempt going back
    _check_real_time(history, report)
    assert len(report.violations) == 1, report.violations
    assert "(token): an op acknowledged earlier reached 8, a later op has 4" in report.violations[0]
