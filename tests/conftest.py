"""Fixtures: small synthetic FER-style image folders and throw-away copies of the project."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from ferpipe import CLASS_NAMES

# pytest-xdist runs each worker in a process of its own, and TensorFlow gives each process a thread per
# core for its ops: with two workers on two cores the threads would outnumber the cores. Each worker (and
# the stages and dvc it starts, which inherit the environment) gets its share of the cores instead.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    for _variable in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        os.environ.setdefault(_variable, str(max(1, (os.cpu_count() or 1) // _WORKERS)))

REPO = Path(__file__).resolve().parents[1]
PROJECT_FILES = ("ferpipe", "stages", "teachers", "dvc.yaml", "params.yaml", "pyproject.toml")


def pytest_collection_modifyitems(items):
    """Tests marked `slow` first: pytest-xdist hands tests out in this order, so the long ones start
    early and the workers finish together instead of one running a long test alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: otherwise in file order


@pytest.fixture(autouse=True)
def float32_policy_after_each_test():
    """Training in this process sets Keras' global dtype policy (bfloat16 on BF16 CPUs): put float32 back,
    so that no later test in the same worker builds its models under a policy it did not choose."""
    yield
    if "keras" in sys.modules:
        sys.modules["keras"].mixed_precision.set_global_policy("float32")


def write_fer_tree(root: Path, train_per_class=6, test_per_class=2, seed=0) -> Path:
    """A Kaggle-layout tree of 48x48 grayscale JPEGs; each class has its own mean brightness."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for c, name in enumerate(CLASS_NAMES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(count):
                image = np.clip(rng.normal(25 + 30 * c, 15, (48, 48)), 0, 255).astype(np.uint8)
                prefix = "Training" if split == "train" else ("PublicTest" if k % 2 == 0 else "PrivateTest")
                cv2.imwrite(str(folder / f"{prefix}_{c}{k:03d}.jpg"), image)
    return root


@pytest.fixture
def fer_tree(tmp_path):
    return write_fer_tree(tmp_path / "fer2013")


def stage_env(project: Path) -> dict:
    """Environment for running stage scripts / dvc in `project` with this interpreter."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(project)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def set_params(project: Path, **overrides):
    """Set params.yaml values: set_params(p, **{'train.epochs': 1})."""
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for dotted, value in overrides.items():
        node = params
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def make_project(dest: Path, fer_root: Path) -> Path:
    """A copy of the project (code, dvc.yaml, params.yaml) at `dest` whose data root is `fer_root`."""
    dest.mkdir()
    for name in PROJECT_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.keras"))
        else:
            shutil.copy(src, dest / name)
    # width 8: the stages, not the network's size, are under test (sizes: test_model_and_training);
    # no budget, so nothing may follow one (anneal_within_budget needs a budget, whatever the default)
    set_params(dest, **{"prepare.data_root": str(fer_root), "train.epochs": 1, "train.members": 1,
                         "train.time_budget_minutes": 0, "train.anneal_within_budget": False, "train.width": 8})
    return dest


@pytest.fixture
def project(tmp_path, fer_tree):
    """A copy of the project whose data root is a tiny synthetic tree."""
    return make_project(tmp_path / "project", fer_tree)


def prepared_project(root: Path) -> Path:
    """A copy of the project under `root` with its own synthetic tree, after the prepare stage."""
    project = make_project(root / "project", write_fer_tree(root / "fer2013"))
    run_stage(project, "prepare")
    return project


def working_copy(template: Path, tmp_path: Path, monkeypatch) -> Path:
    """A copy of a module's template project for one test to change, made the working directory."""
    project = shutil.copytree(template, tmp_path / "project")
    monkeypatch.chdir(project)
    return project


@pytest.fixture(scope="module")
def trained_project(tmp_path_factory):
    """A project after prepare and train, made once per test module: copy it before changing it."""
    project = prepared_project(tmp_path_factory.mktemp("trained"))
    run_stage(project, "train")
    return project


def load_stage(project: Path, stage: str):
    """stages/<stage>.py of `project` imported as a module (its main() not run), to call its functions."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"stage_{stage}", project / "stages" / f"{stage}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_stage(project: Path, stage: str, check=True, **env) -> subprocess.CompletedProcess:
    """Run stages/<stage>.py in `project`; keyword arguments are extra environment variables."""
    result = subprocess.run([sys.executable, f"stages/{stage}.py"], cwd=project, env=stage_env(project) | env,
                            capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{stage} failed:\n{result.stdout}\n{result.stderr}")
    return result
