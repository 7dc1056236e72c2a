"""Bad input through the command line: each bad document gets an error row naming it
and the problem, the rest of the job goes on, the exit code says some failed, and
nothing prints a traceback."""

from __future__ import annotations

import json

from test_cli import docqueue, no_traceback, read_jsonl


def test_annotate_reports_every_bad_document_and_finishes_the_rest(tmp_path, tiny_classifier):
    big = "All work and no play makes Jack a dull boy. " * 240_000  # 10.5 MB
    lines = [
        json.dumps({"id": "a", "text": "A perfectly fine document about sockets."}).encode(),
        json.dumps({"id": "b", "text": ""}).encode(),
        json.dumps({"id": "c", "text": "   \n\t "}).encode(),
        b'{"id": "d", "text": "unterminated',
        b'{"id": "e", "text": "caf\xe9 au lait"}',
        json.dumps({"id": "big", "text": big}).encode(),
        json.dumps({"id": "a", "text": "Same id as the first document."}).encode(),
        json.dumps({"id": "f", "body": "the text is under another name"}).encode(),
        json.dumps({"id": "g", "text": 42}).encode(),
        json.dumps({"id": "h", "text": None}).encode(),
    ]
    path = tmp_path / "docs.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = docqueue(
        "annotate", str(path), "--model", tiny_classifier, "--out", "out.jsonl", cwd=tmp_path
    )
    no_traceback(result)
    assert result.returncode == 1, result.stderr  # some documents failed
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert [r["seq"] for r in rows] == list(range(10))
    by_seq = {r["seq"]: r for r in rows}
    assert by_seq[0]["status"] == "done" and by_seq[0]["duplicate_id"] is True
    assert by_seq[6]["status"] == "done" and by_seq[6]["duplicate_id"] is True
    assert by_seq[1]["error"] == "empty document"
    assert by_seq[2]["error"] == "document is whitespace only"
    assert by_seq[3]["error"].startswith("line 4: malformed JSON")
    assert by_seq[4]["error"] == "line 5: invalid UTF-8 at byte 25"
    assert by_seq[5]["status"] == "done" and by_seq[5]["truncated"] is True  # cut, not refused
    assert by_seq[7] == {
        "body": "the text is under another name",  # the input's own fields come along
        "id": "f",
        "seq": 7,
        "status": "failed",
        "error": "line 8: no 'text' field",
    }
    assert by_seq[8]["error"] == "line 9: 'text' is a number, not a string"
    assert by_seq[9]["error"] == "line 10: no 'text' value (null)"  # as the README says
    assert "3 done, 7 failed of 10 documents" in result.stderr
    assert "id b: empty document" in result.stderr


def test_csv_row_without_the_text_column(tmp_path, tiny_classifier):
    path = tmp_path / "docs.csv"
    path.write_text("id,text\n1,first document\n2\n3,third document\n")
    result = docqueue(
        "annotate", str(path), "--model", tiny_classifier, "--out", "out.jsonl", cwd=tmp_path
    )
    no_traceback(result)
    assert result.returncode == 1
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert [r["status"] for r in rows] == ["done", "failed", "done"]
    assert rows[1] == {"id": "2", "seq": 1, "status": "failed", "error": "row 3: no 'text' value"}
