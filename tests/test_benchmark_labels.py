"""benchmarks/labels_and_conditions.py at its smoke sizes: a rerun fits only the missing cells,
and --fresh forgets only the tables asked for."""

import importlib.util
from pathlib import Path

import pandas as pd

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "labels_and_conditions.py"


def _script():
    spec = importlib.util.spec_from_file_location("labels_and_conditions", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reruns_fill_in_missing_cells_and_fresh_keeps_the_other_table(tmp_path):
    bench = _script()
    smoke = ["--smoke", "--datasets", "digits", "--out", str(tmp_path)]
    m2 = ["--tables", "m2", "--labels", "10", "--draws", "1", *smoke]
    assert bench.main(["--tables", "cvae", *smoke]) == 0
    cvae_csv = tmp_path / "cvae_labels_and_conditions_smoke.csv"
    cvae = pd.read_csv(cvae_csv)
    assert sorted(cvae.quadrants) == [1, 2, 3] and set(cvae.status) == {"ok"}
    assert bench.main(m2) == 0
    m2_csv = tmp_path / "m2_labels_and_conditions_smoke.csv"
    first = pd.read_csv(m2_csv)
    assert len(first) == 1 and first.status.item() == "ok"
    assert bench.main([*m2[:-4], "--draws", "2", *smoke]) == 0  # one more draw: one more row
    rows = pd.read_csv(m2_csv)
    assert rows.draw.tolist() == [0, 1]
    pd.testing.assert_frame_equal(rows.iloc[:1], first)  # the first cell was not refitted
    assert bench.main([*m2, "--fresh"]) == 0
    assert len(pd.read_csv(m2_csv)) == 1  # forgotten and refitted
    pd.testing.assert_frame_equal(pd.read_csv(cvae_csv), cvae)  # the CVAE rows are kept
    assert "M2 - labels-only" in (tmp_path / "m2_labels_and_conditions_smoke.md").read_text()
