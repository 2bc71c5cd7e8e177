"""Assertions on CLI results shared by test modules."""

from __future__ import annotations


def one_error_line(res) -> str:  # noqa: ANN001 (click Result)
    """The run failed as a user error: exit 2 and exactly one `error:` line, no traceback."""
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.output
    return lines[0]
