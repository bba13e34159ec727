"""The settings' walk from ``pipeline.train`` stays short: few modules, none entered twice (tools/walk.py traces it).

The design review of 2026-12-05 followed ``settings`` through 12 modules with 17 climbs back up; the one-schema
issue asks for ≤ 5 modules and no climb back. This traces a real 1-step CPU run and its resume, so a new module that
starts taking the settings, or a check that rebuilds them after another module has seen them, fails here.
"""

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

spec = importlib.util.spec_from_file_location("walk", Path(__file__).resolve().parents[1] / "tools" / "walk.py")
walk = importlib.util.module_from_spec(spec)
spec.loader.exec_module(walk)


@pytest.fixture(scope="module")
def walks(tmp_path_factory, tiny_model_dir):
    return walk.measure(tmp_path_factory.mktemp("walk"), model=str(tiny_model_dir))


@pytest.mark.parametrize("which", ["a new run", "a resumed run"])
def test_the_settings_enter_at_most_five_modules_and_never_climb_back(walks, which):
    stays = walks[which]
    assert len(walk.rooms(stays)) <= 5, stays
    assert walk.climbs(stays) == 0, stays


def test_the_walk_sees_the_checks_and_the_model_load(walks):
    # why: a tracer that saw nothing would pass the test above; the walk must find the pre-flight and the load
    entered = {m for m, _ in walks["a resumed run"]}
    assert {"preflight", "config", "modeling"} <= entered
    assert any("check_resume_settings" in names for _, names in walks["a resumed run"])
