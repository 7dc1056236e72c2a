"""Zero-shot labels on the command line: one reading only, or a one-line refusal."""

from __future__ import annotations

import json

import pytest
from conftest import make_settings
from sqlalchemy import func, select
from test_cli import TICKETS, docqueue, no_traceback

from docqueue.config import settings_env
from docqueue.db.schema import Job
from docqueue.errors import ExitCode
from docqueue.producer.client import Client

DESCRIBED = {
    "billing": "invoices, refunds and payments",
    "outage": "the service is down, slow or failing",
    "praise": "thanks and compliments",
}


def one_error_line(result) -> str:
    no_traceback(result)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == ExitCode.USAGE and len(lines) == 1, result.stderr
    return lines[0]


def enqueued_labels(tmp_path, redis_url, sqlite_url, *options: str):
    """The labels of the job a real ``docqueue enqueue`` with ``options`` wrote to SQL
    (validated: a list of names reads back as {name: name})."""
    settings = make_settings(redis_url, sqlite_url)
    result = docqueue(
        "enqueue",
        str(TICKETS),
        "--model",
        "minilm",
        *options,
        cwd=tmp_path,
        env=settings_env(settings),
    )
    no_traceback(result)
    assert result.returncode == 0, result.stderr
    with Client(settings) as client:
        return client.job(result.stdout.split()[-1]).info().params["labels"]


def test_descriptions_with_commas_stay_in_their_label(tmp_path, redis_url, sqlite_url):
    """The issue's case: each description holds commas, and there are three labels."""
    options = [arg for name, text in DESCRIBED.items() for arg in ("--label", f"{name}={text}")]
    assert enqueued_labels(tmp_path, redis_url, sqlite_url, *options) == DESCRIBED
    mixed = enqueued_labels(
        tmp_path, redis_url, sqlite_url, "--label", "billing=invoices, refunds", "--label", "praise"
    )
    assert mixed == {"billing": "invoices, refunds", "praise": "praise"}


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (
            ["--labels", "billing=invoices, refunds and payments,outage=the service is down"],
            "takes plain names separated by commas",
        ),
        (["--label", "billing,outage", "--label", "praise"], "cannot contain a comma"),
        (["--label", "billing", "--label", "billing=invoices"], "'billing' is given twice"),
        (["--label", "=invoices", "--label", "outage"], "expected NAME or NAME=DESCRIPTION"),
        (["--labels", "billing,outage", "--label", "praise"], "use one of --labels, --label"),
        (["--labels-file", "missing.txt"], "no such file"),
    ],
)
def test_ambiguous_labels_are_refused_in_one_line(
    tmp_path, redis_url, sqlite_url, options, expected
):
    settings = make_settings(redis_url, sqlite_url)
    result = docqueue("annotate", str(TICKETS), *options, cwd=tmp_path)
    assert expected in one_error_line(result)
    assert not (tmp_path / "results.jsonl").exists()
    result = docqueue(
        "enqueue",
        str(TICKETS),
        "--model",
        "minilm",
        *options,
        cwd=tmp_path,
        env=settings_env(settings),
    )
    assert expected in one_error_line(result)
    with Client(settings) as client, client.db.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Job)).scalar() == 0


def test_plain_names_still_read_from_labels(tmp_path):
    """The README's first command's --labels "billing,outage,praise" is unchanged; with
    only one label it is refused before anything starts."""
    result = docqueue("annotate", str(TICKETS), "--labels", "billing", cwd=tmp_path)
    assert "between 2 and 256 labels" in one_error_line(result)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            "# support topics\nbilling = invoices, refunds and payments\n\noutage\npraise=thanks\n",
            {"billing": "invoices, refunds and payments", "outage": "outage", "praise": "thanks"},
        ),
        (
            "billing\noutage\npraise\n",
            {"billing": "billing", "outage": "outage", "praise": "praise"},
        ),
        (json.dumps(DESCRIBED), DESCRIBED),
        (json.dumps(["billing", "outage"]), {"billing": "billing", "outage": "outage"}),
    ],
)
def test_labels_file_lines_or_json(tmp_path, redis_url, sqlite_url, content, expected):
    """--labels-file read by a real enqueue: the job in SQL holds exactly these labels."""
    labels = tmp_path / "labels.txt"
    labels.write_text(content)
    assert enqueued_labels(tmp_path, redis_url, sqlite_url, "--labels-file", str(labels)) == (
        expected
    )


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"billing": 1, "outage": 2}', "JSON labels must be"),
        ("[billing, outage]", "not valid JSON"),
        ("# nothing but a comment\n\n", "no labels in it"),
        ("billing\nbilling=invoices\n", "line 2: label 'billing' is given twice"),
    ],
)
def test_bad_labels_files_are_refused_in_one_line(tmp_path, content, expected):
    labels = tmp_path / "labels.txt"
    labels.write_text(content)
    result = docqueue("annotate", str(TICKETS), "--labels-file", str(labels), cwd=tmp_path)
    assert expected in one_error_line(result)
