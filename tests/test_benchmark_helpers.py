"""The pure parts of the result scripts in benchmarks/: sweep runner, ablation table, angle figures."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))  # the scripts import their sibling `parallel`
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_run_all_runs_each_jobs_commands_in_order_and_stops_a_job_at_its_first_failure(tmp_path):
    run_all = load("parallel").run_all
    out = tmp_path / "out.txt"
    append = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')"
    jobs = {
        "good": [[sys.executable, "-c", append, str(out), "a1"], [sys.executable, "-c", append, str(out), "a2"]],
        "bad": [python("import sys; print('boom'); sys.exit(3)"), [sys.executable, "-c", append, str(out), "never"]],
    }
    failed = run_all(jobs, parallel=2, logs=tmp_path / "logs", keep_going=True)
    assert failed == ["bad"]
    assert out.read_text().split() == ["a1", "a2"]
    assert "boom" in (tmp_path / "logs" / "bad.log").read_text()
    with pytest.raises(SystemExit, match="bad failed"):
        run_all({"bad": [python("raise SystemExit(1)")]}, parallel=1, logs=tmp_path / "logs2")


def test_ablation_table_is_mean_and_population_std_over_seeds(tmp_path):
    ablation = load("ablation")
    results = tmp_path / "results"
    results.mkdir()
    for seed, (accuracy, tar) in enumerate([(0.70, 0.10), (0.74, None), (0.72, 0.20)]):
        entry = {"method": "ArcFace", "seed": seed, "accuracy": accuracy, "tar_at_far": {"1e-2": tar}}
        (results / f"arcface_seed{seed}.json").write_text(json.dumps(entry))
    figures, table = ablation.summarize(results, ["ArcFace", "CosFace"])
    values = dict(line.split("=") for line in figures)
    assert float(values["arcface_accuracy_mean"]) == pytest.approx(72.0)
    assert float(values["arcface_accuracy_std"]) == pytest.approx(math.sqrt(((70 - 72) ** 2 + (74 - 72) ** 2) / 3), abs=0.01)
    assert float(values["arcface_tar_far1e-2_mean"]) == pytest.approx(15.0)  # the unresolvable TAR is left out
    assert values["arcface_runs"] == "3"
    rows = table.splitlines()
    assert rows[2].startswith("| ArcFace | 72.00 ± 1.63 |") and rows[3].startswith("| CosFace | not run")


def test_every_ablation_method_is_a_head_the_trainer_accepts():
    ablation = load("ablation")
    from arcface.train.config import load_config
    from arcface.configs import recipe_path

    assert list(ablation.METHODS) == ["Softmax", "NormFace", "SphereFace", "CosFace", "ArcFace", "Combined",
                                      "ArcFace+Intra", "ArcFace+Inter", "ArcFace+Triplet"]
    for settings in ablation.METHODS.values():
        config = load_config(recipe_path("lfw_cpu"), settings)
        assert config.head.name in {"softmax", "normface", "sphereface", "cosface", "arcface", "combined"}


def test_toy_angle_figures_on_known_geometry():
    toy = load("toy_2d")
    centers = np.array([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])  # 90 degrees apart, norms ignored
    angles = np.radians([10.0, 100.0, 200.0, 30.0])  # features of classes 0, 1, 2, 0
    points = 5 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    labels = np.array([0, 1, 2, 0])
    figures = toy.angle_figures(points, labels, centers)
    assert figures["mean_target_angle_deg"] == pytest.approx((10 + 10 + 20 + 30) / 4)
    assert figures["min_center_gap_deg"] == pytest.approx(90.0)
    assert figures["nearest_center_pct"] == pytest.approx(100.0)


def test_pair_angle_overlap_is_the_best_single_threshold_error():
    angles = load("angles")
    same = np.array([True, True, True, False, False, False])
    assert angles.overlap_pct(np.array([10.0, 20, 30, 40, 50, 60]), same) == 0.0
    scores = np.array([10.0, 50, 30, 40, 20, 60])  # one same pair far, one different pair near
    brute = min(np.mean((scores <= t) != same) for t in [-1.0, *scores])
    assert angles.overlap_pct(scores, same) == pytest.approx(100 * brute)
    assert angles.overlap_pct(scores, same) == pytest.approx(100 / 3)


def test_inversion_variants_parse_typed_values_and_reject_bad_ones():
    parse = load("inversion").parse_variant
    assert parse("lambda0") == ("lambda0", {"lambda_bn": 0.0})
    assert parse("mine:lambda_bn=0.005,flip=false,lr=1") == ("mine", {"lambda_bn": 0.005, "flip": False, "lr": 1.0})
    for bad, message in [("x:flip=maybe", "expects a bool"), ("x:steps=abc", "expects a int"), ("x:jitter=99", "jitter must be"),
                         ("x:nope=1", "unknown setting"), ("unheard", "unknown variant")]:
        with pytest.raises(SystemExit, match=message):
            parse(bad)


def test_heldout_pairs_are_new_distinct_valid_and_read_back_as_view1(tmp_path):
    from arcface.data.protocols import read_pairs

    heldout = load("heldout_pairs")
    people = {"Ann": 5, "Bob": 2, "Cid": 1, "Dee": 3}
    exclude = {heldout._pair_key(("Ann", 1, 2)), heldout._pair_key(("Bob", 2, "Ann", 4))}
    matched, mismatched = heldout.sample_pairs(people, 8, exclude, seed=3)
    assert len(matched) == len(mismatched) == 8
    keys = [heldout._pair_key(pair) for pair in matched + mismatched]
    assert len(set(keys)) == 16 and not set(keys) & exclude
    for name, first, second in matched:
        assert people[name] >= 2 and 1 <= first < second <= people[name]
    for first, i, second, j in mismatched:
        assert first != second and 1 <= i <= people[first] and 1 <= j <= people[second]
    assert heldout.sample_pairs(people, 8, exclude, seed=3) == (matched, mismatched)
    # Ann 10 + Bob 1 + Dee 3 = 14 matched pairs exist, one of them excluded
    heldout.sample_pairs(people, 13, exclude, seed=0)
    with pytest.raises(ValueError, match="cannot give 14"):
        heldout.sample_pairs(people, 14, exclude, seed=0)
    path = tmp_path / "pairs.txt"
    heldout.write_view1_pairs(path, matched, mismatched)
    pairs = read_pairs(path)
    assert [pair.same for pair in pairs] == [True] * 8 + [False] * 8
    assert heldout.read_lfw_pair_keys(path) == set(keys)


def test_paired_gap_of_the_cleaning_sweep_against_fold_arithmetic():
    paired_gap = load("cleaning").paired_gap
    rng = np.random.default_rng(0)
    a = 88 + rng.normal(0, 2, 10)
    b = a - 5 + rng.normal(0, 1, 10)
    d = b + 0.6 * (a - b)  # every fold wins back exactly 60% of its gap
    exact = paired_gap(a, b, d)
    assert exact["gap_recovered_pct"] == pytest.approx(60.0)
    assert exact["gap_recovered_se_pct"] == pytest.approx(0.0, abs=1e-6)
    d = d + rng.normal(0, 1, 10)
    result = paired_gap(a, b, d)
    gap, win = (a - b), (d - b)
    ratio = win.mean() / gap.mean()
    assert result["gap_recovered_pct"] == pytest.approx(100 * ratio)
    assert result["a_minus_b_se"] == pytest.approx(gap.std(ddof=1) / math.sqrt(10))
    assert result["d_minus_b_se"] == pytest.approx(win.std(ddof=1) / math.sqrt(10))
    # the delta method's error is that of the mean residual win - ratio * gap, over the mean gap
    residual = win - ratio * gap
    assert result["gap_recovered_se_pct"] == pytest.approx(100 * residual.std(ddof=1) / math.sqrt(10) / gap.mean())


def test_oracle_list_keeps_exactly_the_clean_samples_with_contiguous_labels(tmp_path):
    write_oracle_list = load("cleaning").write_oracle_list
    rows = [("a/1.jpg", 0, 0), ("a/2.jpg", 2, 1), ("b/1.jpg", 1, 1), ("b/2.jpg", 1, 1), ("c/1.jpg", 2, 0), ("c/2.jpg", 0, 1)]
    truth = tmp_path / "truth.tsv"
    truth.write_text("path\tlabel\tnoisy\ttrue_label\n" + "".join(f"{p}\t{label}\t{noisy}\t-\n" for p, label, noisy in rows))
    lines = write_oracle_list(truth, tmp_path / "oracle.txt").read_text().splitlines()
    # class 1 lost all its samples: labels 0 and 2 become 0 and 1, the order of the samples kept
    assert lines == ["a/1.jpg 0", "c/1.jpg 1"]


def test_cleaning_sweep_reuses_finished_trainings_only_at_the_asked_step_count(tmp_path):
    cleaning = load("cleaning")
    args = type("Args", (), dict(workers=0, pairs=None, lfw=tmp_path, aligned=tmp_path, steps=1000))()
    jobs = {name: cleaning.train_command(name, tmp_path / "list.txt", cleaning.HEAD, args, tmp_path, steps=steps)
            for name, steps in (("finished", 1000), ("new", None), ("longer", 2000))}
    for name in ("finished", "longer"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps({"steps": 1000}))
    with pytest.raises(SystemExit, match="longer was trained for 1000 steps, this run asks for 2000"):
        cleaning.pending(jobs, tmp_path)
    del jobs["longer"]
    assert cleaning.pending(jobs, tmp_path) == {"new": [jobs["new"]]}


def test_inversion_judge_rows_agree_with_cosines_computed_by_hand(tmp_path):
    inversion = load("inversion")
    judge = type("MeanColour", (torch.nn.Module,), {"forward": lambda self, x: x.mean((2, 3))})()
    colours = torch.tensor([[[0.9, 0.1, 0.0], [0.1, 0.9, 0.0]],     # identity 0: start 0 near its template, start 1 near identity 1's
                            [[0.0, 1.0, 0.1], [0.0, 0.8, 0.3]],
                            [[0.2, 0.0, 1.0], [0.6, 0.5, 0.4]]])    # (N=3, S=2, 3); grey would tie all three
    images = colours[..., None, None].expand(3, 2, 3, 8, 8).contiguous()
    gallery = torch.nn.functional.normalize(torch.eye(3) + 0.05, dim=1)
    summary, hits = inversion.judge_images(judge, images, gallery, tmp_path / "rows.tsv")
    cos = torch.nn.functional.normalize(colours.reshape(6, 3), dim=1) @ gallery.T
    own = torch.tensor([0, 0, 1, 1, 2, 2])
    rows = [line.split("\t") for line in (tmp_path / "rows.tsv").read_text().splitlines()[1:]]
    assert [(int(r[0]), int(r[1])) for r in rows] == [(i, k) for i in range(3) for k in range(2)]
    assert [int(r[2]) for r in rows] == (cos.argmax(1) == own).int().tolist() == hits.int().tolist() == [1, 0, 1, 1, 1, 0]
    for row, c, i in zip(rows, cos, own.tolist()):
        assert float(row[3]) == pytest.approx(c[i].item(), abs=1e-4)
        assert float(row[4]) == pytest.approx(max(c[j].item() for j in range(3) if j != i), abs=1e-4)
    assert summary["rank1_pct"] == pytest.approx(100 * 4 / 6)
    assert summary["cos_own"] == pytest.approx(cos[torch.arange(6), own].mean().item(), abs=1e-5)


@pytest.mark.parametrize("hits, total", [(0, 50), (19, 50), (41, 100), (50, 50)])
def test_wilson_interval_is_the_set_of_proportions_the_score_test_keeps(hits, total):
    """From the definition: p0 is inside when |hits/total - p0| <= z * sqrt(p0 (1 - p0) / total)."""
    low, high = load("inversion").wilson_interval(hits, total)
    grid = np.linspace(1e-9, 1 - 1e-9, 200001)
    kept = grid[np.abs(hits / total - grid) <= 1.959964 * np.sqrt(grid * (1 - grid) / total)]
    assert low == pytest.approx(kept.min(), abs=1e-4) and high == pytest.approx(kept.max(), abs=1e-4)
    assert low - 1e-12 <= hits / total <= high + 1e-12


def test_cleaning_sweep_refuses_a_work_folder_cleaned_at_another_threshold(tmp_path):
    check = load("cleaning").check_same_threshold
    check(tmp_path / "cleaned_closed", 75.0)  # nothing cleaned yet
    (tmp_path / "cleaned_closed").mkdir()
    (tmp_path / "cleaned_closed" / "report.json").write_text(json.dumps({"threshold_deg": 75.0}))
    check(tmp_path / "cleaned_closed", 75.0)
    with pytest.raises(SystemExit, match="cleaned at 75.0 degrees, this run asks for 70.0"):
        check(tmp_path / "cleaned_closed", 70.0)


def test_inversion_ablation_figure_reads_back_the_grids_and_the_judged_rows(tmp_path):
    from arcface.invert import save_grid
    from arcface.invert.job import to_uint8

    figure = load("inversion_ablation_figure")
    images = torch.rand(3, 1, 3, 112, 112) * 2 - 1  # three targets, one start: the benchmark's column grid
    save_grid(images, tmp_path / "inversion_closeset_v.png")
    row = figure.grid_row(tmp_path, "closeset", "v")
    assert row.shape == (112, 3 * 114, 3)
    expected = to_uint8(images)[:, 0]  # (3, 112, 112, 3) RGB
    for k in range(3):
        assert np.array_equal(row[:, k * 114 : k * 114 + 112], expected[k])
    (tmp_path / "judged_closeset_v.tsv").write_text(
        "identity\tstart\trank1_hit\tcos_own\tcos_best_other\n0\t0\t1\t0.30\t0.1\n1\t0\t0\t0.10\t0.2\n2\t0\t1\t0.20\t0.1\n3\t0\t1\t0.40\t0.3\n")
    rank1, cos_own, count = figure.judged(tmp_path, "closeset", "v")
    assert (rank1, count) == (75.0, 4) and cos_own == pytest.approx(0.25)
    with pytest.raises(SystemExit, match="not found"):
        figure.judged(tmp_path, "openset", "v")


def _anisotropic_pull(center: torch.Tensor, weights: torch.Tensor):
    """A per-image loss whose gradient turns as the image moves: minus a weighted distance to ``center``."""
    return lambda images: (-((images - center) ** 2 * weights)).flatten(1).sum(dim=1)


def test_l2_attack_one_step_is_the_full_length_along_the_normalized_gradient():
    l2_attack = load("robust_finetune").l2_attack
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(3, 3, 4, 4, generator=generator)
    center = torch.randn(3, 3, 4, 4, generator=generator)
    weights = torch.rand(3, 3, 4, 4, generator=generator) + 0.1
    lengths = torch.tensor([0.0, 0.5, 2.0]).view(-1, 1, 1, 1)
    pull = _anisotropic_pull(center, weights)
    moved = l2_attack(lambda images: pull(images).sum(), images, lengths, steps=1)
    gradient = -2 * (images - center) * weights  # the loss's gradient at the clean images, by hand
    expected = images + lengths * gradient / gradient.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    torch.testing.assert_close(moved, expected)


def test_l2_attack_of_several_steps_stays_in_the_ball_and_climbs_higher_than_one_step():
    l2_attack = load("robust_finetune").l2_attack
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(4, 3, 4, 4, generator=generator)
    center = images + 3 * torch.randn(4, 3, 4, 4, generator=generator)  # outside every ball
    weights = torch.rand(4, 3, 4, 4, generator=generator) * 10 + 0.1  # strongly anisotropic
    lengths = torch.tensor([0.5, 1.0, 1.5, 2.0]).view(-1, 1, 1, 1)
    pull = _anisotropic_pull(center, weights)
    before = images.clone()
    one = l2_attack(lambda moved: pull(moved).sum(), images, lengths, steps=1)
    several = l2_attack(lambda moved: pull(moved).sum(), images, lengths, steps=10)
    distance = (several - images).flatten(1).norm(dim=1)
    assert torch.all(distance <= lengths.flatten() * (1 + 1e-5))
    assert torch.all(pull(several) > pull(one))
    assert torch.equal(images, before)  # the clean batch is left as it was
