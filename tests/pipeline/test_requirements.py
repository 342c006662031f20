"""`tasks.requirements`: the registered model's pins are the lock's, cover what inference imports, and a stale or
absent lock is handled as documented."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tasks.requirements import (
    INFERENCE_PACKAGES,
    LOCK_FILE,
    dependency_closure,
    inference_requirements,
    read_lock,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_read_lock_takes_name_and_version_of_pinned_lines_only(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text(
        "# header\nabsl-py==2.5.1\n    # via\n    #   keras\nTyping_Extensions==4.16.0 ; python_version < '4'\n"
        "-e file:///somewhere\nPyYAML[extra]==6.0.4  # via mlflow\n"
    )
    assert read_lock(lock) == {"absl-py": "2.5.1", "typing-extensions": "4.16.0", "pyyaml": "6.0.4"}


def test_requirements_pin_every_inference_package_and_its_dependencies_to_the_lock():
    requirements = inference_requirements(LOCK_FILE)
    pins = dict(line.split("==") for line in requirements)
    assert set(INFERENCE_PACKAGES) <= set(pins)
    lock = read_lock(LOCK_FILE)
    assert all(lock[name] == version for name, version in pins.items())
    # Closed under the installed metadata: every unconditional dependency of a pinned package is pinned too.
    for name in pins:
        for text in metadata.distribution(name).requires or []:
            dependency = Requirement(text)
            if dependency.marker is None:
                assert canonicalize_name(dependency.name) in pins, f"{name} needs {dependency.name}"
    assert not {"prefect", "mlflow", "matplotlib", "pydantic-settings"} & set(pins)


def test_closure_leaves_out_extras_nobody_asked_for():
    # tensorflow[and-cuda] pulls the CUDA wheels; the model's CPU environment must not.
    assert not [name for name in dependency_closure(["tensorflow"]) if name.startswith("nvidia-")]
    assert [r for r in metadata.requires("tensorflow") if r.startswith("nvidia-") and "and-cuda" in r]


def test_a_lock_without_a_needed_pin_is_an_error_naming_it_and_the_fix(tmp_path):
    stale = tmp_path / "requirements.lock"
    stale.write_text("\n".join(line for line in LOCK_FILE.read_text().splitlines() if "keras==" not in line))
    with pytest.raises(ValueError, match=r"pins no version of \['keras'\].*make lock"):
        inference_requirements(stale)


def test_without_a_lock_the_running_environment_versions_are_pinned_with_a_warning(tmp_path):
    with pytest.warns(UserWarning, match="No lock file"):
        requirements = inference_requirements(tmp_path / "absent.lock")
    assert f"tensorflow=={metadata.version('tensorflow')}" in requirements


def test_the_pyfunc_loads_without_importing_prefect_or_tracking_code():
    """The model file (and the library it imports) in a clean interpreter imports no Prefect, no `flows` and no
    `tasks` module. (That the pins suffice is proven by loading the model in an environment built from them:
    `test_deploy_anywhere.py`; here optional imports of packages the project happens to have would blur it.)"""
    probe = "import json, runpy, sys; runpy.run_path(sys.argv[1]); print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-I", "-c", probe, str(REPO_ROOT / "tasks" / "pyfunc.py")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    imported = {name.split(".")[0] for name in json.loads(done.stdout.strip().splitlines()[-1])}
    assert "ensemble" in imported
    assert not {"prefect", "flows", "tasks"} & imported
