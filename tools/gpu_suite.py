"""The GPU suite's groups, its runner, its record in docs/gpu-tests.md, and whether that record is current.

    python3 tools/gpu_suite.py run [--out DIR] [--groups a,b] [-- PYTEST-ARGS]   # what scripts/gpu_suite.sh calls
    python3 tools/gpu_suite.py record SUMMARY.json          # the run's row (and each group's last run) into the doc
    python3 tools/gpu_suite.py record --not-run "no GPU lent, device paused"    # why HEAD was not run, as a row
    python3 tools/gpu_suite.py stale                        # GPU-path files changed since the last recorded run

``run`` starts one pytest process per group, side by side on the GPUs ``CUDA_VISIBLE_DEVICES`` names (start-up is
CPU-bound and the card is far from full), prints one line per group and the wall time, writes ``summary.json`` and
``logs.tar.gz`` into ``--out`` and exits 1 if any group failed. ``record`` turns that summary into one row of
docs/gpu-tests.md. ``stale`` is what tests/test_gpu_freshness.py asserts in CI: no file of ``GPU_PATH`` differs
between HEAD and the commit of the last passing full single-GPU run, or of a later "not run" row.

Standard library only: it runs on the GPU machine before anything is installed there.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DOC = REPO_ROOT / "docs" / "gpu-tests.md"
TESTS = "tests/gpu"
SINGLE_GPU = "gpu and not two_gpus"

# The production path that a CPU cannot check (Unsloth's compiled trainer, its kernels, 4-bit weights, the CUDA-graph
# rollout, several processes), and the suite that checks it. A change to any of these after the last recorded run
# leaves the GPU path unverified. Left out on purpose: code that runs the same on a CPU (rewards, data, tables,
# runs, preflight, evaluation's scoring, the GGUF conversion), the demo, the benchmark, docs and notebooks.
GPU_PATH = (
    "src/sarashina_grpo/rollout.py",      # the CUDA-graph engine and its Triton kernel
    "src/sarashina_grpo/modeling.py",     # Unsloth's load, LoRA, the packing check
    "src/sarashina_grpo/compat.py",       # the library internals the trainer is patched through
    "src/sarashina_grpo/pipeline.py",     # prepare, the trainer's construction, the run
    "src/sarashina_grpo/config.py",       # the settings: TRL's GRPOConfig, the machine's choices
    "src/sarashina_grpo/project.py",      # precision, the device, how recipes are read
    "src/sarashina_grpo/callbacks.py",    # checkpoint markers, interrupts, the held-out evaluation in training
    "src/sarashina_grpo/checkpoints.py",  # resume after a kill
    "src/sarashina_grpo/noise.py",        # how and when Unsloth is imported
    "src/sarashina_grpo/cli.py",          # the import order (transformers' parser before Unsloth)
    "src/sarashina_grpo/commands.py",
    "src/sarashina_grpo/options.py",
    "src/sarashina_grpo/inference.py",    # Unsloth's inference mode (infer, eval)
    "src/sarashina_grpo/export.py",       # merging a GPU checkpoint
    "src/sarashina_grpo/warmstart.py",    # the supervised pass runs on CUDA in bf16
    "src/sarashina_grpo/tiny.py",         # the small model and the 3B shape the suite trains
    "uv.lock",                            # Unsloth, TRL, transformers, PEFT, torch versions
    "configs/accelerate/multi_gpu.yaml",
    "tests/gpu/",
    "tests/multigpu_worker.py",
    "scripts/gpu_suite.sh",
    "tools/gpu_suite.py",
)


@dataclasses.dataclass(frozen=True)
class Group:
    """One pytest process of the suite: its test files, its marker, GPUs, and the seconds it is expected to take."""

    name: str
    files: tuple[str, ...]
    expected_s: int  # from the per-test times of the ab07715 run (docs/gpu-tests.md); gemma's measured alone
    marker: str = SINGLE_GPU
    gpus: int = 1


# Balanced by the measured per-test times: each group is about one 3B trainer fixture long or less.
GROUPS = (
    Group("3b", ("test_gpu_trainer.py",), 225),
    Group("runs", ("test_gpu_runs.py",), 210),
    Group("commands", ("test_gpu_import_order.py", "test_gpu_packing.py"), 210),
    Group("real", ("test_gpu_real.py",), 200),
    Group("learning", ("test_gpu_learning.py",), 210),
    Group("small", ("test_gpu_rollout.py", "test_gpu_reference.py"), 150),
    # Gemma 3 270M from its GGUF (the gemma3 package, or $SARASHINA_GRPO_GEMMA_GGUF): one GRPO step, most of it
    # compiling Gemma 3's blocks cold (348 s alone at 4cde3e1, the only group whose kernels no other group shares)
    Group("gemma", ("test_gpu_gemma.py",), 350),
)
TWO_GPUS = Group("two-gpus", ("test_gpu_runs.py",), 300, marker="gpu and two_gpus", gpus=2)
OTHER = "other"  # test files no group names (a new one): they run too, in a group of their own


def test_files(root: Path = REPO_ROOT) -> list[str]:
    return sorted(p.name for p in (root / TESTS).glob("test_*.py"))


def groups_for(gpus: int, root: Path = REPO_ROOT) -> list[Group]:
    """The groups to run on ``gpus`` GPUs: every group, one for unnamed test files, the two-GPU tests on two+."""
    named = {f for g in GROUPS for f in g.files}
    groups = [g for g in GROUPS if all((root / TESTS / f).exists() for f in g.files)]
    unnamed = tuple(f for f in test_files(root) if f not in named)
    if unnamed:
        groups.append(Group(OTHER, unnamed, 0))
    if gpus >= 2:
        groups.append(TWO_GPUS)
    return groups


# --- run


def git(*args: str, cwd: Path = REPO_ROOT, check: bool = True) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def current_commit() -> str:
    """``$GIT_COMMIT`` (a tree copied without .git), else HEAD, short."""
    given = os.environ.get("GIT_COMMIT")
    if given:
        return given[:7]
    try:
        return git("rev-parse", "--short=7", "HEAD")
    except (RuntimeError, FileNotFoundError):
        return "unknown"


def visible_gpus() -> list[str]:
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given:
        return [g for g in given.split(",") if g.strip()]
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.splitlines()
    except FileNotFoundError:
        return []
    return [str(i) for i, line in enumerate(listed) if line.startswith("GPU")]


def device_name(ids: list[str]) -> str:
    """``1 × NVIDIA H100 80GB HBM3``: the cards the suite ran on, counted by name."""
    if not ids:
        return "no GPU"
    try:
        names = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", ",".join(ids)],
                               capture_output=True, text=True).stdout.split("\n")
    except FileNotFoundError:
        return "no GPU"
    counts: dict[str, int] = {}
    for name in (n.strip() for n in names if n.strip()):
        counts[name] = counts.get(name, 0) + 1
    return ", ".join(f"{n} × {name}" for name, n in counts.items()) or "no GPU"


def junit_counts(path: Path) -> dict:
    """passed/failed/errors/skipped of one junit XML (zeros when pytest wrote none)."""
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    if not path.exists():
        return counts
    root = ET.parse(path).getroot()
    for suite in root.iter("testsuite"):
        tests, failed, errors, skipped = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
        counts["failed"] += failed
        counts["errors"] += errors
        counts["skipped"] += skipped
        counts["passed"] += tests - failed - errors - skipped
    return counts


def group_env(group: Group, gpus: list[str], work: Path) -> dict:
    env = dict(os.environ)
    env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    # Unsloth writes the source it generates (the compiled trainer, the patched model) into this folder and imports
    # it from there. It is regenerated and compared in every process anyway (cheap); a process with another
    # environment (fp16, Gemma's float32) writes other source into the same file names, so each group has its own.
    env["UNSLOTH_COMPILE_LOCATION"] = str(work / group.name / "unsloth_compiled_cache")
    # The costly part, torch.compile's kernels (Dynamo, Inductor, Triton autotuning), is keyed by content and safe
    # for concurrent processes: one cache for the whole run, so a kernel compiled by one group is loaded by the rest.
    env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(work / "inductor"))
    # Inductor starts one compile worker per CPU core in every process: with several groups side by side that is
    # dozens of idle interpreters competing for the start-up CPU.
    env.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "4")
    return env


# pytest, with every thread's stack printed into the log on SIGUSR1: sent just before a group is killed at its
# timeout, so that a killed group says where it was (the SIGKILL itself leaves nothing)
PYTEST_DUMPING_ON_USR1 = ("import faulthandler, signal, sys; faulthandler.register(signal.SIGUSR1, all_threads=True); "
                          "import pytest; sys.exit(pytest.main(sys.argv[1:]))")


def start_group(group: Group, gpus: list[str], work: Path, extra: list[str]) -> subprocess.Popen:
    folder = work / group.name
    shutil.rmtree(folder, ignore_errors=True)  # an earlier run's junit.xml must not stand in for this one's
    folder.mkdir(parents=True)
    log = folder / "pytest.log"
    command = [sys.executable, "-c", PYTEST_DUMPING_ON_USR1, "-v", "-p", "no:cacheprovider", "-o", "addopts=", "-rA",
               "--durations=0", "--basetemp", str(folder / "tmp"), "--junitxml", str(folder / "junit.xml"),
               "-m", group.marker, *[f"{TESTS}/{f}" for f in group.files], *extra]
    with open(log, "w") as out:
        return subprocess.Popen(command, cwd=REPO_ROOT, env=group_env(group, gpus, work), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def run_groups(groups: list[Group], gpus: list[str], work: Path, extra: list[str], timeout: float) -> list[dict]:
    """Every group side by side (a two-GPU group on the first two GPUs, the rest on the first); their results, each
    with the seconds from the run's start to the group's end. A group still running after ``timeout`` seconds is
    killed with everything it started (and fails): a hung test cannot keep the summary from being written."""
    started = time.monotonic()
    running = {g.name: (g, start_group(g, gpus[:g.gpus], work, extra)) for g in groups}
    ended: dict[str, float] = {}
    while len(ended) < len(running):
        for name, (_, process) in running.items():
            if name in ended:
                continue
            if process.poll() is None and time.monotonic() - started > timeout:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGUSR1)  # the stacks into the log (PYTEST_DUMPING_ON_USR1)
                    time.sleep(2)
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                with open(work / name / "pytest.log", "a") as log:
                    log.write(f"\n[gpu_suite: killed after {timeout:.0f} s]\n")
            if process.poll() is not None:
                ended[name] = time.monotonic() - started
                print(f"suite: group {name} ended after {ended[name]:.0f} s (pytest exit code {process.returncode})",
                      flush=True)
        time.sleep(0.5)
    results = []
    for name, (group, process) in running.items():
        counts = junit_counts(work / name / "junit.xml")
        # pytest exits 5 when it collected nothing: a group that tests nothing has not passed
        ok = process.returncode == 0 and counts["failed"] == counts["errors"] == 0
        results.append({"name": name, "files": list(group.files), "marker": group.marker,
                        "returncode": process.returncode, "status": "passed" if ok else "failed", **counts,
                        "seconds": round(ended[name], 1), "expected_s": group.expected_s})
    return results


def group_line(result: dict) -> str:
    counts = ", ".join(f"{result[k]} {k}" for k in ("passed", "failed", "errors", "skipped") if result[k])
    return f"group {result['name']:<9} {result['status']:<6} {counts or 'no tests'} in {result['seconds']:.0f} s " \
           f"(expected {result['expected_s']} s)"


def summarize(results: list[dict], *, seconds: float, device: str, gpus: int, extra: list[str],
              chosen: list[str] | None) -> dict:
    full = not extra and not chosen and all(g.name in {r["name"] for r in results} for g in GROUPS)
    total = {k: sum(r[k] for r in results) for k in ("passed", "failed", "errors", "skipped")}
    return {"date": datetime.date.today().isoformat(), "device": device, "gpus": gpus, "commit": current_commit(),
            "seconds": round(seconds), "full": full, "extra_args": extra, "groups": results, **total,
            "passed_all": all(r["status"] == "passed" for r in results)}


def pack_logs(work: Path, out: Path, groups: list[str]) -> Path:
    """The run's group logs and junit XMLs in one file: the device hands back at most 8 files from $OUT."""
    path = out / "logs.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for group in groups:
            for name in ("pytest.log", "junit.xml"):
                if (work / group / name).exists():
                    tar.add(work / group / name, arcname=f"{group}/{name}")
    return path


def command_run(args) -> int:
    started = time.monotonic()
    ids = visible_gpus()
    if not ids:
        print("error: no CUDA GPU is visible (nvidia-smi -L lists none, CUDA_VISIBLE_DEVICES is empty).",
              file=sys.stderr)
        return 2
    groups = groups_for(len(ids))
    chosen = [g for g in args.groups.split(",") if g] if args.groups else None
    if chosen:
        unknown = sorted(set(chosen) - {g.name for g in groups})
        if unknown:
            print(f"error: no group {', '.join(unknown)}; the groups here: {', '.join(g.name for g in groups)}.",
                  file=sys.stderr)
            return 2
        groups = [g for g in groups if g.name in chosen]
    work, out = Path(args.work), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"suite: {len(groups)} groups side by side on GPU(s) {','.join(ids)}: {', '.join(g.name for g in groups)}",
          flush=True)
    results = run_groups(groups, ids, work, args.pytest_args, args.timeout)
    for result in results:
        print(group_line(result))
    summary = summarize(results, seconds=time.monotonic() - started, device=device_name(ids),
                        gpus=len(ids), extra=args.pytest_args, chosen=chosen)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    pack_logs(work, out, [r["name"] for r in results])
    print(f"suite: {summary['seconds']} s in all; {'all passed' if summary['passed_all'] else 'FAILED'}; "
          f"{out / 'summary.json'} (record it: python3 tools/gpu_suite.py record {out / 'summary.json'})")
    return 0 if summary["passed_all"] else 1


# --- the record in docs/gpu-tests.md

RUNS_MARK = "<!-- gpu-suite-runs -->"
GROUPS_MARK = "<!-- gpu-suite-groups -->"
FULL = "all single-GPU groups"
NOT_RUN = "not run"


@dataclasses.dataclass
class Row:
    date: str
    device: str
    commit: str
    suite: str
    result: str
    seconds: str

    def line(self) -> str:
        return "| " + " | ".join(dataclasses.astuple(self)) + " |"

    @property
    def not_run(self) -> bool:
        return self.result.startswith(NOT_RUN)

    @property
    def full_pass(self) -> bool:
        # every single-GPU group ran, and nothing failed or was skipped (a skipped real-weights check proves nothing)
        return self.suite.startswith(FULL) and bool(re.fullmatch(r"\d+ passed", self.result))


def table_span(lines: list[str], mark: str) -> tuple[int, int]:
    """(first, end) line indexes of the Markdown table after ``mark``: header, separator and rows."""
    try:
        at = lines.index(mark)
    except ValueError:
        raise ValueError(f"{DOC.name} has no {mark} line before its table") from None
    first = at + 1
    while first < len(lines) and not lines[first].startswith("|"):
        first += 1
    end = first
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return first, end


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def read_rows(text: str) -> list[Row]:
    lines = text.splitlines()
    first, end = table_span(lines, RUNS_MARK)
    return [Row(*cells(line)) for line in lines[first + 2:end]]


def result_text(summary: dict) -> str:
    counts = ", ".join(f"{summary[k]} {k}" for k in ("failed", "errors", "passed", "skipped") if summary.get(k))
    # a group killed at its timeout, or whose pytest could not start, has failed without a failed test
    broken = [f"{g['name']} (exit {g['returncode']})" for g in summary["groups"]
              if g["status"] != "passed" and not (g["failed"] or g["errors"])]
    return (counts or "no tests") + (f"; failed without a test result: {', '.join(broken)}" if broken else "")


def suite_text(summary: dict) -> str:
    """What ran: every single-GPU group (``FULL``, then a full pass can vouch for the GPU path), or which groups."""
    names = [g["name"] for g in summary["groups"]]
    if summary["full"]:
        return FULL + (f" + {TWO_GPUS.name}" if TWO_GPUS.name in names else "")
    extra = f" ({' '.join(summary['extra_args'])})" if summary["extra_args"] else ""
    return f"groups {', '.join(names)}{extra}"


def run_row(summary: dict) -> Row:
    return Row(summary["date"], summary["device"], summary["commit"], suite_text(summary), result_text(summary),
               str(summary["seconds"]))


def not_run_row(reason: str, commit: str) -> Row:
    reason = reason.replace("|", "/")  # a "|" would end the table's cell, and the table would no longer read back
    return Row(datetime.date.today().isoformat(), "–", commit, "–", f"{NOT_RUN}: {reason}", "–")


def with_row(text: str, row: Row) -> str:
    lines = text.splitlines()
    _, end = table_span(lines, RUNS_MARK)
    lines.insert(end, row.line())
    return "\n".join(lines) + "\n"


def with_group_runs(text: str, summary: dict) -> str:
    """Each group of the summary gets its last run (commit, date, result, seconds) in the groups table."""
    lines = text.splitlines()
    first, end = table_span(lines, GROUPS_MARK)
    ran = {g["name"]: g for g in summary["groups"]}

    def last_run(group: dict) -> list[str]:
        counts = ", ".join(f"{group[k]} {k}" for k in ("failed", "errors", "passed", "skipped") if group[k])
        return [summary["commit"], summary["date"], counts or "no tests", f"{group['seconds']:.0f}"]

    for i in range(first + 2, end):
        row = cells(lines[i])
        group = ran.pop(row[0].strip("`"), None)
        if group:
            row[-4:] = last_run(group)
            lines[i] = "| " + " | ".join(row) + " |"
    for n, group in enumerate(ran.values()):  # a group the table does not list yet gets a row of its own
        row = [f"`{group['name']}`", ", ".join(group["files"]), str(group.get("expected_s") or "–"), *last_run(group)]
        lines.insert(end + n, "| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def command_record(args) -> int:
    text = DOC.read_text(encoding="utf-8")
    if args.not_run:
        commit = args.commit or git("rev-parse", "--short=7", "HEAD")
        dirty = [f for f in git("status", "--porcelain").splitlines() if on_gpu_path(f[3:])]
        if dirty:
            print(f"note: uncommitted changes on the GPU path are not covered by {commit}: "
                  f"{', '.join(f[3:] for f in dirty)}", file=sys.stderr)
        row = not_run_row(args.not_run, commit)
        text = with_row(text, row)
    else:
        summary = json.loads(Path(args.summary).read_text())
        summary["commit"] = args.commit or summary["commit"]
        if summary["commit"] == "unknown":
            print("error: the summary names no commit (the tree ran without .git and GIT_COMMIT); give --commit.",
                  file=sys.stderr)
            return 2
        row = run_row(summary)
        text = with_group_runs(with_row(text, row), summary)
    if args.dry_run:
        print(row.line())
        return 0
    DOC.write_text(text, encoding="utf-8")
    print(f"{DOC.relative_to(REPO_ROOT)}: {row.line()}")
    return 0


# --- is the record current?


def on_gpu_path(path: str) -> bool:
    return any(path == p or (p.endswith("/") and path.startswith(p)) for p in GPU_PATH)


def covered_commit(rows: list[Row]) -> tuple[str, Row] | None:
    """The commit the record vouches for: the last passing full single-GPU run's, or a later "not run" row's."""
    last = max((i for i, r in enumerate(rows) if r.full_pass), default=-1)
    later = [r for r in rows[last + 1:] if r.not_run]
    if later:
        return later[-1].commit, later[-1]
    return (rows[last].commit, rows[last]) if last >= 0 else None


def stale_files(root: Path = REPO_ROOT, doc: Path | None = None) -> tuple[str, list[str]]:
    """(the covered commit, the GPU-path files that differ between it and HEAD). Raises ``ValueError`` when the
    record names no run or a commit this repository does not have."""
    doc = doc or root / "docs" / DOC.name
    covered = covered_commit(read_rows(doc.read_text(encoding="utf-8")))
    if covered is None:
        raise ValueError(f"{doc.name} records no passing full single-GPU run and no 'not run' row")
    commit, _ = covered
    if subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=root, capture_output=True).returncode:
        raise ValueError(f"{doc.name} names commit {commit}, which is not in this repository's history")
    changed = git("diff", "--name-only", commit, "HEAD", cwd=root).splitlines()
    return commit, sorted(f for f in changed if on_gpu_path(f))


def command_stale(args) -> int:
    commit, files = stale_files()
    if files:
        print(f"changed on the GPU path since {commit}, not run on a GPU since: {', '.join(files)}")
        return 1
    print(f"the GPU path is as it was at {commit}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the groups side by side; write summary.json")
    run.add_argument("--out", default=os.environ.get("OUT") or "/tmp/gpu-suite")
    run.add_argument("--work", default="/tmp/gpu-suite-work", help="logs, junit, pytest's tmp folders, caches")
    run.add_argument("--groups", help="comma-separated group names (a partial run)")
    run.add_argument("--timeout", type=float, default=float(os.environ.get("SUITE_GROUP_TIMEOUT", 900)),
                     help="seconds after which a group still running is killed and fails (default 900, "
                          "$SUITE_GROUP_TIMEOUT)")
    run.add_argument("pytest_args", nargs="*", help="after --: more pytest arguments (a partial run)")
    record = sub.add_parser("record", help="add a run's row (or a 'not run' row) to docs/gpu-tests.md")
    record.add_argument("summary", nargs="?", help="summary.json of a run")
    record.add_argument("--not-run", metavar="REASON", help="record why the GPU suite was not run at --commit")
    record.add_argument("--commit", help="the commit the row covers (default: the summary's; with --not-run, HEAD)")
    record.add_argument("--dry-run", action="store_true", help="print the row, change nothing")
    sub.add_parser("stale", help="GPU-path files changed since the last recorded run")
    args = parser.parse_args(argv)
    if args.command == "record" and bool(args.summary) == bool(args.not_run):
        parser.error("record takes a SUMMARY.json or --not-run REASON")
    return {"run": command_run, "record": command_record, "stale": command_stale}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
