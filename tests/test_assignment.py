"""The autograded assignment (notebooks/assignments/), built and graded by otter-grader.

``otter assign`` builds the student notebook and the autograder zip, as ``make assignment``
does; ``otter run`` (the autograder without Docker) grades three submissions: the solutions
score full marks; the student notebook as handed out scores zero and the grader still
finishes; the solutions with one planted mistake lose exactly that question's points, and the
grader's output shows ppvae's verdict.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "notebooks" / "assignments" / "vae_em_assignment.ipynb"
NAME = SOURCE.stem
SMOKE = {**os.environ, "PPVAE_SMOKE": "1"}

pytestmark = pytest.mark.slow  # three notebook runs, two of them training a small VAE


def otter(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "otter", *args], capture_output=True, text=True, env=SMOKE
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("assignment") / "dist"
    otter("assign", str(SOURCE), str(dist))
    return dist


def grade(dist: Path, notebook: Path) -> dict[str, dict]:
    """Each question's result (score, max_score, output) from the autograder's results.json."""
    (autograder,) = (dist / "autograder").glob("*.zip")
    out = notebook.parent / f"{notebook.stem}-results"
    out.mkdir()
    print(otter("run", "--no-logo", "-a", str(autograder), "-o", str(out), str(notebook)))
    tests = json.loads((out / "results.json").read_text())["tests"]
    return {t["name"]: t for t in tests if "score" in t}


def submission(tmp_path: Path, notebook: dict) -> Path:
    path = tmp_path / f"{NAME}.ipynb"
    path.write_text(json.dumps(notebook))
    return path


def test_solutions_score_full_marks(dist, tmp_path):
    solutions = json.loads((dist / "autograder" / f"{NAME}.ipynb").read_text())
    results = grade(dist, submission(tmp_path, solutions))
    assert set(results) == {"em_step", "kl", "elbo", "gradients", "vae"}
    assert all(r["score"] == r["max_score"] > 0 for r in results.values()), results


def test_student_version_scores_zero_without_crashing(dist, tmp_path):
    student = (dist / "student" / f"{NAME}.ipynb").read_text()
    assert "seed=11" not in student  # the hidden tests are gone
    assert "fit(model" not in student and "sigma.square().log()" not in student  # solutions
    results = grade(dist, submission(tmp_path, json.loads(student)))
    assert len(results) == 5
    assert all(r["score"] == 0 for r in results.values()), results


def test_planted_mistake_loses_exactly_its_question(dist, tmp_path):
    solutions = json.loads((dist / "autograder" / f"{NAME}.ipynb").read_text())
    planted = 0
    for cell in solutions["cells"]:
        source = "".join(cell["source"])
        if "return W_new, fit / (N * d)" in source:  # sigma2's M-step divided by N, not N d
            cell["source"] = source.replace("fit / (N * d)", "fit / N")
            planted += 1
    assert planted == 1
    results = grade(dist, submission(tmp_path, solutions))
    assert results["em_step"]["score"] == 0
    assert "your sigma2 is d = 5 times too large" in results["em_step"]["output"]
    others = [r for name, r in results.items() if name != "em_step"]
    assert all(r["score"] == r["max_score"] for r in others), results
