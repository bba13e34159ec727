"""The GPU path is verified where it is changed: docs/gpu-tests.md records a passing run of the whole single-GPU suite
at the code HEAD has, or says why it could not run (tools/gpu_suite.py; docs/gpu-tests.md, "Kept current").

The first test is the check itself, on this repository's history. The others run the same functions on small git
repositories made here, where it must fail (a GPU file changed after the run, a failed or partial run, a "not run"
row for an older commit, a commit the history lacks) and where it must pass (a docs-only commit recording a "not
run" row, changes off the GPU path), and on the runner and recorder of the suite and its helper for commands started
early.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


suite = load("gpu_suite", REPO_ROOT / "tools" / "gpu_suite.py")


def git(root, *args) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=root,
                          capture_output=True, text=True, check=True).stdout.strip()


def test_the_gpu_path_at_head_was_run_on_a_gpu_or_the_record_says_why_not():
    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True).returncode != 0:
        pytest.skip("no git history here (a copied tree): the record's commits cannot be compared with HEAD")
    covered = suite.covered_commit(suite.read_rows(suite.DOC.read_text(encoding="utf-8")))
    assert covered is not None, "docs/gpu-tests.md records no passing full single-GPU run and no 'not run' row"
    shallow = git(REPO_ROOT, "rev-parse", "--is-shallow-repository") == "true"
    known = subprocess.run(["git", "cat-file", "-e", f"{covered[0]}^{{commit}}"], cwd=REPO_ROOT).returncode == 0
    if shallow and not known:
        pytest.skip(f"a shallow clone without commit {covered[0]}: fetch the whole history (CI clones it whole)")
    commit, changed = suite.stale_files()
    # why: a change to the production path that no GPU has run must show in the record, not pass unseen
    assert not changed, (
        f"changed on the GPU path since {commit} (the last recorded GPU suite run, or 'not run' row): "
        f"{', '.join(changed)}. Run `bash scripts/gpu_suite.sh` on a GPU and `python3 tools/gpu_suite.py record "
        f"SUMMARY`, or record why it could not run: `python3 tools/gpu_suite.py record --not-run REASON` "
        f"(docs/gpu-tests.md, 'Kept current').")


def test_every_group_names_test_files_that_exist():
    files = set(suite.test_files())
    named = [f for g in (*suite.GROUPS, suite.TWO_GPUS) for f in g.files]
    assert set(named) <= files, set(named) - files
    # why: a new test file no group names still runs (in "other"); none is left out of the single-GPU run
    assert {f for g in suite.groups_for(1) for f in g.files} == files


# --- the check on repositories made here

HEADER = "\n".join([
    "# GPU tests", "", suite.GROUPS_MARK, "| group | files | expected | commit | date | result | seconds |",
    "|---|---|---|---|---|---|---|", "| `3b` | test_gpu_trainer.py | 225 | – | – | – | – |", "", "## Runs", "",
    suite.RUNS_MARK, "| date | device | commit | suite | result | seconds |", "|---|---|---|---|---|---|", ""])


def run_line(commit, result="24 passed", suite_text=suite.FULL) -> str:
    return f"| 2026-12-06 | 1 × NVIDIA H100 80GB HBM3 | {commit} | {suite_text} | {result} | 400 |\n"


@pytest.fixture
def repo(tmp_path):
    """A repository with a GPU-path file, a file off the path, and an empty runs table; its first commit."""
    (tmp_path / "src" / "sarashina_grpo").mkdir(parents=True)
    (tmp_path / "docs").mkdir()
    (tmp_path / "src" / "sarashina_grpo" / "rollout.py").write_text("graphs = 1\n")
    (tmp_path / "src" / "sarashina_grpo" / "rewards.py").write_text("reward = 1\n")
    (tmp_path / "docs" / "gpu-tests.md").write_text(HEADER)
    git(tmp_path, "init", "-q")
    commit_all(tmp_path, "code")
    return tmp_path


def commit_all(root, message) -> str:
    git(root, "add", "-A")
    git(root, "commit", "-qm", message)
    return git(root, "rev-parse", "--short=7", "HEAD")


def change(root, path, text, message) -> str:
    (root / path).parent.mkdir(parents=True, exist_ok=True)
    (root / path).write_text(text)
    return commit_all(root, message)


def record(root, line) -> str:
    """A docs-only commit that adds ``line`` to the runs table."""
    doc = root / "docs" / "gpu-tests.md"
    doc.write_text(doc.read_text() + line)
    return commit_all(root, "gpu-tests.md")


def stale(root):
    return suite.stale_files(root)[1]


def test_a_gpu_file_changed_after_the_last_run_is_stale(repo):
    record(repo, run_line(git(repo, "rev-parse", "--short=7", "HEAD")))
    change(repo, "src/sarashina_grpo/rollout.py", "graphs = 2\n", "faster graphs")
    assert stale(repo) == ["src/sarashina_grpo/rollout.py"]


def test_a_docs_only_commit_saying_why_head_was_not_run_makes_it_pass(repo):
    record(repo, run_line(git(repo, "rev-parse", "--short=7", "HEAD")))
    code = change(repo, "src/sarashina_grpo/rollout.py", "graphs = 2\n", "faster graphs")
    record(repo, suite.not_run_row("no GPU lent, device paused", code).line() + "\n")
    assert stale(repo) == []
    change(repo, "src/sarashina_grpo/rewards.py", "reward = 2\n", "off the GPU path")
    assert stale(repo) == []  # why: a change the CPU tests see fully needs no GPU run
    change(repo, "tests/gpu/test_gpu_new.py", "x = 1\n", "a new GPU test")
    assert stale(repo) == ["tests/gpu/test_gpu_new.py"]  # why: the suite itself is on the path


def test_a_not_run_row_for_an_older_commit_does_not_cover_a_later_change(repo):
    first = git(repo, "rev-parse", "--short=7", "HEAD")
    record(repo, run_line(first))
    change(repo, "src/sarashina_grpo/rollout.py", "graphs = 2\n", "faster graphs")
    record(repo, suite.not_run_row("no GPU lent", first).line() + "\n")
    assert stale(repo) == ["src/sarashina_grpo/rollout.py"]


def test_a_failed_or_partial_run_vouches_for_nothing(repo):
    first = git(repo, "rev-parse", "--short=7", "HEAD")
    record(repo, run_line(first))
    code = change(repo, "src/sarashina_grpo/rollout.py", "graphs = 2\n", "faster graphs")
    record(repo, run_line(code, result="1 failed, 23 passed"))
    record(repo, run_line(code, result="22 passed, 2 skipped"))
    record(repo, run_line(code, suite_text="groups real, learning"))
    assert stale(repo) == ["src/sarashina_grpo/rollout.py"]
    record(repo, run_line(code))
    assert stale(repo) == []


def test_a_record_without_runs_or_with_an_unknown_commit_is_an_error(repo):
    with pytest.raises(ValueError, match="no passing full single-GPU run"):
        suite.stale_files(repo)
    record(repo, run_line("1234567"))
    with pytest.raises(ValueError, match="not in this repository's history"):
        suite.stale_files(repo)


# --- the runner's summary and the recorder


def fake_summary(**changes) -> dict:
    groups = [{"name": g.name, "files": list(g.files), "marker": g.marker, "returncode": 0, "status": "passed",
               "passed": 4, "failed": 0, "errors": 0, "skipped": 0, "seconds": 300.4, "expected_s": g.expected_s}
              for g in suite.GROUPS]
    summary = suite.summarize(groups, seconds=412.3, device="1 × NVIDIA H100 80GB HBM3", gpus=1, extra=[],
                              chosen=None)
    return {**summary, "commit": "abc1234", "date": "2026-12-06", **changes}


def test_a_full_passing_summary_becomes_a_row_that_vouches_for_its_commit(tmp_path):
    summary = fake_summary()
    row = suite.run_row(summary)
    assert row.line() == ("| 2026-12-06 | 1 × NVIDIA H100 80GB HBM3 | abc1234 | all single-GPU groups | "
                          f"{4 * len(suite.GROUPS)} passed | 412 |")
    assert row.full_pass
    text = suite.with_group_runs(suite.with_row(HEADER, row), summary)
    assert suite.read_rows(text) == [row]
    assert "| `3b` | test_gpu_trainer.py | 225 | abc1234 | 2026-12-06 | 4 passed | 300 |" in text
    # why: a group the table did not list yet (HEADER lists only 3b) gets a row, so no group's run goes unrecorded
    assert "| `gemma` | test_gpu_gemma.py | 350 | abc1234 | 2026-12-06 | 4 passed | 300 |" in text
    assert sum(line.startswith("| `") for line in text.splitlines()) == len(suite.GROUPS)


def test_a_summary_with_a_failure_a_skip_or_fewer_groups_does_not_vouch():
    failed = fake_summary(failed=1, passed=23, passed_all=False)
    skipped = fake_summary(skipped=2, passed=22)
    groups = suite.summarize(fake_summary()["groups"][:2], seconds=100, device="d", gpus=1, extra=[],
                             chosen=["3b", "runs"])
    assert suite.run_row(failed).result == "1 failed, 23 passed"
    assert suite.run_row(skipped).result == "22 passed, 2 skipped"
    assert suite.run_row(groups).suite == "groups 3b, runs"
    killed = fake_summary()
    killed["groups"][0].update(status="failed", returncode=-9, passed=0)
    killed.update(passed=20, passed_all=False)
    assert suite.run_row(killed).result == "20 passed; failed without a test result: 3b (exit -9)"
    assert not any(suite.run_row(s).full_pass for s in (failed, skipped, groups, killed))


def test_record_dry_run_prints_the_row_and_changes_nothing(tmp_path, capsys):
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(fake_summary()))
    before = suite.DOC.read_text(encoding="utf-8")
    assert suite.main(["record", str(path), "--dry-run"]) == 0
    assert suite.main(["record", "--not-run", "no GPU lent, device paused", "--commit", "abc1234", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| 2026-12-06 | 1 × NVIDIA H100 80GB HBM3 | abc1234 | all single-GPU groups |")
    assert lines[1].endswith("| abc1234 | – | not run: no GPU lent, device paused | – |")
    assert suite.DOC.read_text(encoding="utf-8") == before


def test_a_not_run_reason_with_a_pipe_keeps_the_table_readable(capsys):
    assert suite.main(["record", "--not-run", "cli: bool|None switches", "--commit", "abc1234", "--dry-run"]) == 0
    # why: the "|" split the row into one cell too many, and every later read of the table failed with a traceback
    (row,) = suite.read_rows("\n".join([suite.RUNS_MARK, "| a | b | c | d | e | f |", "|---|---|---|---|---|---|",
                                         capsys.readouterr().out.strip()]))
    assert row.commit == "abc1234" and "bool/None" in row.result


def test_junit_counts_read_passed_failed_errors_and_skips(tmp_path):
    xml = tmp_path / "junit.xml"
    xml.write_text('<testsuites><testsuite name="pytest" errors="1" failures="2" skipped="3" tests="10">'
                   "</testsuite></testsuites>")
    assert suite.junit_counts(xml) == {"passed": 4, "failed": 2, "errors": 1, "skipped": 3}
    assert suite.junit_counts(tmp_path / "none.xml") == {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}


@pytest.mark.slow
def test_the_runner_runs_a_group_and_writes_its_summary_without_a_gpu(tmp_path, monkeypatch, capsys):
    # On a CPU every GPU test skips: the group passes with skips, and the run is not one that vouches for anything.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    code = suite.main(["run", "--groups", "small", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert [g["name"] for g in summary["groups"]] == ["small"] and summary["groups"][0]["skipped"] == 4
    assert "group small" in printed and "s in all" in printed
    assert not suite.run_row(summary).full_pass
    with tarfile.open(tmp_path / "out" / "logs.tar.gz") as tar:
        assert set(tar.getnames()) == {"small/pytest.log", "small/junit.xml"}


def test_a_command_started_early_is_not_stopped_by_its_own_output():
    # why: a pipe nobody reads while the test works fills at 64 KiB and stops the command (a training log does)
    started = load("gpu_conftest", REPO_ROOT / "tests" / "gpu" / "conftest.py").Started
    loud = started([sys.executable, "-c", "import sys; sys.stdout.write('x' * 300_000); sys.stderr.write('done')"],
                   env=dict(os.environ), timeout=60)
    slow = started([sys.executable, "-c", "import time; time.sleep(60)"], env=dict(os.environ), timeout=1)
    done = loud.ok()
    assert (len(done.stdout), done.stderr) == (300_000, "done")
    assert slow.result().returncode != 0  # killed at its timeout, counted from its start
    assert started.unfinished == []
