"""The registered model's Python environment: exact pins of everything inference imports, taken from the lock.

Inference (`tasks/pyfunc.py` over `ensemble.predictor`) imports TensorFlow/Keras, NumPy, pandas, pyarrow and
scikit-learn (`ensemble.data` imports it at module level), and MLflow's pyfunc loader and scoring server, which
`mlflow-skinny` carries (no tracking server, no Prefect). The model's `requirements.txt` pins these and everything
they need (their dependency closure, without extras, markers evaluated for this interpreter) to the versions of
`requirements.lock`, the project's lock for CPython 3.11 on x86_64 Linux (a CPU environment: for a GPU add
TensorFlow's `and-cuda` extra where the model is deployed).

Without the lock (an installed wheel, not a checkout) the pins are the running environment's versions, and a
warning says so; a package the lock does not pin is an error (the lock is stale: `make lock`).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

INFERENCE_PACKAGES = ("tensorflow", "keras", "numpy", "pandas", "pyarrow", "scikit-learn", "mlflow-skinny")
LOCK_FILE = Path(__file__).resolve().parents[1] / "requirements.lock"


def inference_requirements(lock: str | Path | None = LOCK_FILE) -> list[str]:
    """`name==version` for every package inference needs (`INFERENCE_PACKAGES` and their closure), sorted.

    Args:
        lock: a `uv pip compile` / `pip-compile` output (`name==version` lines); None or a missing file pins the
            running environment's versions instead (with a warning).
    """
    names = dependency_closure(INFERENCE_PACKAGES)
    if lock is not None and Path(lock).is_file():
        pins = read_lock(lock)
        if missing := sorted(set(names) - set(pins)):
            raise ValueError(
                f"The lock {lock} pins no version of {missing}, which inference needs. "
                "Re-resolve it with `make lock`."
            )
    else:
        warnings.warn(
            f"No lock file at {lock}: the model's requirements pin the running environment's versions.",
            stacklevel=2,
        )
        pins = {name: metadata.version(name) for name in names}
    return [f"{name}=={pins[name]}" for name in names]


def read_lock(path: str | Path) -> dict[str, str]:
    """`{canonical name: version}` of the `name==version` lines of a lock file (comments and options skipped)."""
    pins = {}
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].split(";", 1)[0].strip()
        if "==" in line and not line.startswith("-"):
            name, version = line.split("==", 1)
            pins[canonicalize_name(name.split("[", 1)[0])] = version.strip()
    return pins


def dependency_closure(roots: Iterable[str]) -> list[str]:
    """Canonical names of `roots` and of everything they require in the running environment, sorted.

    Requirements follow the installed distributions' metadata: markers are evaluated for this interpreter and
    platform, and an extra's requirements count only where a requirement asks for that extra.
    """
    seen: dict[str, set[str]] = {}
    queue = [Requirement(root) for root in roots]
    while queue:
        requirement = queue.pop()
        name = canonicalize_name(requirement.name)
        extras = set(requirement.extras)
        if name in seen and extras <= seen[name]:
            continue
        seen.setdefault(name, set()).update(extras)
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError as error:
            raise ValueError(
                f"{requirement.name} is not installed here, so the model's requirements cannot be derived. "
                "Install the project with `make install`."
            ) from error
        for text in requires:
            dependency = Requirement(text)
            environments = [{"extra": extra} for extra in ("", *seen[name])]
            if dependency.marker is None or any(dependency.marker.evaluate(env) for env in environments):
                queue.append(dependency)
    return sorted(seen)


def prepare_requirement_checks() -> None:
    """Build MLflow's map of the installed distributions and their modules now, instead of in the first model
    logging of this process, which checks every requirement of the model against this environment with it (about
    0.7 s here: the metadata of every installed distribution is read). MLflow-internal: a no-op if it moves."""
    from mlflow.utils import requirements_utils

    with contextlib.suppress(Exception):
        requirements_utils._init_packages_to_modules_map()
