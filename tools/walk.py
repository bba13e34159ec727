"""The walk of ``settings`` from ``pipeline.train``, measured: which of the package's modules the settings enter.

    uv run python tools/walk.py            # a 1-step CPU run of the small model, traced

The design review (2026-12-05, §1.2) followed the parameter ``settings`` from ``pipeline.train`` through every call
that passes it on and counted the modules ("rooms") it enters and the moves back to a room already left. This
traces the same thing on a real run instead of reading it: every call from a function of the package to a function
of the package that receives the settings (the ``Settings`` object, or a ``Run`` that carries it) as an argument,
in call order. Calls from TRL or transformers into the package (a callback receiving ``args``) are not the
package passing its settings on, and are left out. Consecutive calls in one module are one stay.

It prints the route, the rooms entered, the moves, and the returns (a move into a room already left).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

PACKAGE = str(Path(__file__).resolve().parents[1] / "src" / "sarashina_grpo")


def _module(code) -> str | None:
    return Path(code.co_filename).stem if code.co_filename.startswith(PACKAGE) else None


def walk(run) -> list[tuple[str, str]]:
    """``(module, function)`` of each package-to-package call that receives the settings, while ``run()`` runs."""
    from sarashina_grpo.config import Settings

    def carries(value) -> bool:
        return isinstance(value, Settings) or isinstance(getattr(value, "settings", None), Settings)

    calls: list[tuple[str, str]] = []

    def profile(frame, event, arg):
        if event != "call":
            return
        code = frame.f_code
        module = _module(code)
        if module is None or frame.f_back is None or _module(frame.f_back.f_code) is None:
            return
        names = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
        if any(carries(frame.f_locals.get(name)) for name in names if name != "self"):
            calls.append((module, code.co_name))

    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
    return calls


def route(calls: list[tuple[str, str]]) -> list[tuple[str, list[str]]]:
    """The calls as stays: one entry per run of consecutive calls in one module."""
    stays: list[tuple[str, list[str]]] = []
    for module, name in calls:
        if stays and stays[-1][0] == module:
            if name not in stays[-1][1]:
                stays[-1][1].append(name)
        else:
            stays.append((module, [name]))
    return stays


def climbs(stays: list[tuple[str, list[str]]]) -> int:
    """Moves back into a room already left. ``pipeline.train`` is the entry point: coming back to it between its
    phases (prepare, load, build and run) is the walk returning to where it started, not a climb into a room above."""
    seen, count = ["pipeline"], 0
    for module, _ in stays:
        if module != seen[-1] and module in seen and module != "pipeline":
            count += 1
        seen.append(module)
    return count


def rooms(stays: list[tuple[str, list[str]]]) -> list[str]:
    return sorted({m for m, _ in stays} | {"pipeline"})


def measure(artifacts: str | Path, model: str = "tiny") -> dict[str, list[tuple[str, list[str]]]]:
    """The route of a new 1-step run of the small model on the CPU, and of its resume to step 2."""
    from sarashina_grpo import pipeline
    from sarashina_grpo.config import article_settings

    settings = article_settings(model_name=model, max_steps=1, save_steps=1, report_to="none")
    new = route(walk(lambda: pipeline.train(settings, artifact_dir=artifacts, run_name="walk")))
    more = settings.replace(max_steps=2)
    resumed = route(walk(lambda: pipeline.train(more, artifact_dir=artifacts, resume="walk", given={"max_steps"})))
    return {"a new run": new, "a resumed run": resumed}


def main() -> int:
    with tempfile.TemporaryDirectory() as artifacts:
        walks = measure(artifacts)
    for title, stays in walks.items():
        print(f"{title}: pipeline(train) → " + " → ".join(f"{m}({', '.join(n)})" for m, n in stays))
        print(f"  rooms entered: {len(rooms(stays))} ({', '.join(rooms(stays))}); moves: {len(stays)}; "
              f"climbs back into a room left (other than train's own): {climbs(stays)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
