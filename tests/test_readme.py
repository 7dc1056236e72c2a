"""The README's first two command lines are a promise to a newcomer: the first
installs docqueue and runs the main job on embedded defaults (test_cli runs that
job as the README spells it), the second runs the tests.  CI must run the same
commands, the second exactly as typed, with no DOCQUEUE_TEST_* variables set."""

from __future__ import annotations

import re
import shlex

from conftest import ROOT

README = ROOT / "README.md"
CI = ROOT / ".ci" / "run"


def readme_first_lines() -> tuple[str, str]:
    """The two lines of the README's first code block."""
    block = re.search(r"```bash\n(.*?)```", README.read_text(), re.S)
    assert block, "the README opens with a ```bash block"
    lines = [line for line in block.group(1).splitlines() if line.strip()]
    assert len(lines) == 2, lines
    return lines[0], lines[1]


def readme_main_command() -> list[str]:
    """The main job of the README's first line (after its install), as argv."""
    _install, command = readme_first_lines()[0].split(" && ", 1)
    return shlex.split(command)


def ci_lines() -> list[str]:
    return [line.strip() for line in CI.read_text().splitlines()]


def test_ci_runs_the_readme_test_command_as_typed_with_no_test_variables():
    tests = readme_first_lines()[1]
    lines = ci_lines()
    assert tests in lines, f"{CI} must run the README's test line as typed: {tests}"
    before = lines[: lines.index(tests)]
    unset = [i for i, line in enumerate(before) if line.startswith("unset ")]
    assert unset and all(
        name in before[unset[-1]].split()
        for name in ("DOCQUEUE_TEST_REDIS_URL", "DOCQUEUE_TEST_DATABASE_URL")
    ), "the README's pass runs with no DOCQUEUE_TEST_* variables: unset them first"
    after_unset = before[unset[-1] + 1 :]
    assert not any("DOCQUEUE_TEST_" in line for line in after_unset if not line.startswith("#"))
    # and the tests run again on the machine's services, then the slow ones
    rest = lines[lines.index(tests) + 1 :]
    assert any(line.startswith("export DOCQUEUE_TEST_DATABASE_URL=") for line in rest)
    assert any(line.startswith("export DOCQUEUE_TEST_REDIS_URL=") for line in rest)
    assert "pytest" in rest
    assert any(line.endswith("pytest -m slow") for line in rest)


def test_ci_installs_what_the_readme_main_line_installs():
    install = shlex.split(readme_first_lines()[0].split(" && ", 1)[0])
    assert install[:2] == ["pip", "install"], install
    pins = [a for a in install[2:] if a.startswith("torch")]
    extras = re.search(r"\[(.*)\]", next(a for a in install if a.startswith(".[")))
    assert pins and extras
    ci = CI.read_text()
    for pin in pins:  # the same torch build the newcomer gets
        assert f"pip install -q {pin}" in ci
    installed = re.search(r'pip install -q -e "\.\[(.*?)\]"', ci)
    assert installed, "CI installs the package with its extras"
    assert set(extras.group(1).split(",")) <= set(installed.group(1).split(","))
    assert readme_main_command()[:2] == ["docqueue", "annotate"]


def readme_commands(program: str) -> list[str]:
    """Every command line of the README's bash blocks that runs ``program``, with its
    continuation lines joined."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            for part in re.split(r"&&|\|", line.split("#", 1)[0]):
                if part.strip().startswith(program):
                    commands.append(" ".join(part.split()))
    return commands


def test_every_readme_annotate_names_its_output_file():
    """Without --out, annotate writes results.jsonl and refuses to replace one: an
    example that leaves it out works once, then stops a reader who runs the next."""
    commands = readme_commands("docqueue annotate")
    assert len(commands) >= 10
    assert [c for c in commands if "--out " not in c] == []


#: The documents a newcomer installs from.
INSTALL_DOCS = ("README.md", "CONTRIBUTING.md", "DEPLOYMENT.md")


def docqueue_installs(text: str) -> list[str]:
    """The requirements naming docqueue in every ``pip install`` of ``text`` (code
    blocks and inline code alike)."""
    found = []
    for command in re.findall(r"pip install ([^`\n]*)", text):
        for argument in shlex.split(command.split("&&")[0].split("#")[0]):
            if re.match(r"docqueue\b", argument):
                found.append(argument)
    return found


def test_docqueue_is_installed_from_a_clone_or_a_git_url_never_by_name():
    """docqueue is on no package index: an install by name finds nothing (or another
    project's package).  Every install the docs show is a path or a git URL, except
    an extra added where docqueue is already installed, which the text says."""
    for name in INSTALL_DOCS:
        text = (ROOT / name).read_text()
        for requirement in docqueue_installs(text):
            if " @ git+" in requirement:
                continue
            # only an extra, added to a docqueue installed from a clone, as the text says
            assert re.fullmatch(r"docqueue\[\w+\]", requirement), f"{name}: {requirement}"
            assert "docqueue is installed" in text, name
    readme = (ROOT / "README.md").read_text()
    assert 'pip install "docqueue[worker] @ git+https://' in readme
