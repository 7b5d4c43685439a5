"""The seed summary: means, spreads and paired gains from metrics.json files."""

import json

from recipes import summarize_runs


def test_table_aggregates_runs(tmp_path):
    for seed, (b, s) in enumerate([(0.80, 0.83), (0.82, 0.83), (0.78, 0.84)]):
        d = tmp_path / f"kd_s{seed}"
        d.mkdir()
        (d / "metrics.json").write_text(json.dumps(
            {"method": "kd", "seed": seed, "teacher_top1": 0.9, "baseline_top1": b, "student_top1": s}))
    runs = summarize_runs.load_runs(str(tmp_path / "kd_s*"))
    text = summarize_runs.table(runs)
    row = [l for l in text.splitlines() if l.startswith("| kd |")][0]
    assert "3 (0,1,2)" in row
    assert "80.00 ± 2.00 (78.00-82.00)" in row  # baseline
    assert "83.33 ± 0.58 (83.00-84.00)" in row  # student
    assert "3.33 ± 2.52 (1.00-6.00)" in row  # paired gains: 3, 1, 6
