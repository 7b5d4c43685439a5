"""The distillation recipes end to end, in process, on tiny Fashion-MNIST subsets."""

import json
import math

import pytest

import kdkeras
from kdkeras import training
from tests.helpers import TINY, needs_fashion_mnist, run_recipe

pytestmark = [pytest.mark.e2e, needs_fashion_mnist]


def _top1_of(path, dataset):
    return training.evaluate_top1(training.load_model(str(path)), dataset)


def test_train_teacher_reports_the_top1_of_the_model_it_saved(tiny_teacher):
    from kdkeras.experiment import RunConfig, setup_data

    data = setup_data(RunConfig(dataset="fashion_mnist", test_limit=64, batch_size=64))
    assert tiny_teacher.metrics["top1"] == pytest.approx(_top1_of(tiny_teacher.path, data.test))
    assert tiny_teacher.metrics["input_shape"] == [28, 28, 1]
    assert len(tiny_teacher.metrics["history"]["loss"]) == 1


def test_distill_with_baseline_reports_what_it_saved(tiny_teacher, tmp_path):
    run = run_recipe(
        "distill", f"--teacher={tiny_teacher.path}", "--method=kd", "--method_args=kd.temperature=2",
        "--baseline", "--seed=3", f"--output_dir={tmp_path}", *TINY)
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["student_top1"] == pytest.approx(_top1_of(tmp_path / "student.keras", run.data.test))
    assert m["baseline_top1"] == pytest.approx(_top1_of(tmp_path / "baseline.keras", run.data.test))
    assert m["teacher_top1"] == pytest.approx(tiny_teacher.top1)
    # KD's own CE weight (the CIFAR recipe), and the method argument reached the method
    assert m["student_loss_weight"] == 0.1 and run.methods[0].temperature == 2
    assert {"kd", "agreement", "student_loss"} <= set(m["history"]) and len(m["history"]["loss"]) == 1
    h = m["history"]
    # the logged total is 0.1 * CE + 0.9 * KD (epoch means of per-batch values)
    assert h["val_loss"][0] == pytest.approx(0.1 * h["val_student_loss"][0] + 0.9 * h["val_kd"][0],
                                             rel=1e-4)


def test_lsr_replaces_the_cross_entropy(tmp_path):
    # Was a bug: distill.py kept the CE at weight 1.0 next to LSR.
    m = run_recipe("distill", "--teacher=none", "--method=lsr", f"--output_dir={tmp_path}",
                   *TINY).metrics
    assert m["student_loss_weight"] == 0.0 and m["teacher_top1"] is None
    assert m["history"]["val_loss"][0] == pytest.approx(m["history"]["val_lsr"][0], rel=1e-5)
    # not the CE itself: they differ by eps * (CE to uniform - CE), small for a student of one
    # tiny epoch (near-uniform outputs: 1e-3 relative on the stratified 128 images), not 0
    assert m["history"]["val_loss"][0] != pytest.approx(m["history"]["val_student_loss"][0], rel=1e-4)


def test_run_eagerly_reaches_the_distiller(tiny_teacher, tmp_path, monkeypatch):
    # Was a bug: distill.py defined --run_eagerly but never used it.
    seen = []

    class Compiled(Exception):
        """Stops the run once the Distiller is compiled: what reached it is all this reads."""

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("run_eagerly"))
        raise Compiled

    monkeypatch.setattr(kdkeras.Distiller, "compile", spy)
    with pytest.raises(Compiled):
        run_recipe("distill", f"--teacher={tiny_teacher.path}", f"--output_dir={tmp_path / 'on'}", *TINY)
    flags_off = [f for f in TINY if f != "--run_eagerly"] + ["--train_limit=64", "--test_limit=32"]
    with pytest.raises(Compiled):
        run_recipe("distill", f"--teacher={tiny_teacher.path}", f"--output_dir={tmp_path / 'off'}", *flags_off)
    assert seen == [True, False]


def test_distill_trains_a_zoo_teacher_and_rejects_a_bad_method(tmp_path):
    m = run_recipe("distill", "--teacher=resnet8", "--teacher_epochs=1", "--train_limit=64",
                   f"--output_dir={tmp_path / 'a'}", *TINY).metrics
    assert (tmp_path / "a" / "teacher.keras").exists() and m["teacher_epochs"] == 1
    assert m["teacher"] == str(tmp_path / "a" / "teacher.keras")
    with pytest.raises(ValueError, match=r"'kdd'.*Accepted"):
        run_recipe("distill", "--teacher=none", "--method=kdd", f"--output_dir={tmp_path / 'b'}", *TINY)


@pytest.mark.parametrize("method", ["ft+kd", "crd"])
def test_distill_runs_staged_and_index_methods(tiny_teacher, tmp_path, method):
    m = run_recipe("distill", f"--teacher={tiny_teacher.path}", f"--method={method}", "--init_epochs=1",
                   f"--output_dir={tmp_path}", *TINY).metrics
    assert m["method"] == method
    if method.startswith("ft"):
        assert list(m["history"]["stages"]) == ["ft_paraphraser"] and m["init_epochs"] == 1
        # the paraphraser learns its reconstruction unweighted: finite, no blow-up
        assert all(math.isfinite(v) for v in m["history"]["stages"]["ft_paraphraser"]["ft"])
        assert all(math.isfinite(v) for v in m["history"]["loss"])
        assert (tmp_path / "stages" / "00_ft_paraphraser" / "done.json").exists()
        # a rerun skips the finished paraphraser stage instead of training it again
        again = run_recipe("distill", f"--teacher={tiny_teacher.path}", f"--method={method}",
                           "--init_epochs=1", f"--output_dir={tmp_path}", *TINY).metrics
        assert again["history"]["stages"] == m["history"]["stages"]
    else:
        assert "crd" in m["history"] and m["student_loss_weight"] == 1.0


def test_distill_from_a_teacher_cache_equals_the_online_run_and_refuses_a_stale_one(tiny_teacher, tmp_path):
    flags = [f"--teacher={tiny_teacher.path}", "--method=kd+at", "--augment=on",
             *[f for f in TINY if f != "--epochs=1"], "--epochs=2", "--train_limit=64", "--test_limit=32"]
    online = run_recipe("distill", *flags, f"--output_dir={tmp_path / 'online'}").metrics
    cache = tmp_path / "cache"
    built = run_recipe("distill", *flags, f"--teacher_cache={cache}", f"--output_dir={tmp_path / 'a'}").metrics
    assert (cache / "train" / "manifest.json").exists() and (cache / "test" / "manifest.json").exists()
    assert built["teacher_cache_views"] == 2  # one view per epoch of augmented data
    stamp = (cache / "train" / "manifest.json").stat().st_mtime
    reused = run_recipe("distill", *flags, f"--teacher_cache={cache}", f"--output_dir={tmp_path / 'b'}").metrics
    assert (cache / "train" / "manifest.json").stat().st_mtime == stamp
    for m in (built, reused):
        assert m["student_top1"] == pytest.approx(online["student_top1"], abs=1e-9)
        assert m["teacher_top1"] == pytest.approx(online["teacher_top1"], abs=1e-9)  # read from the cache
        for key in ("loss", "kd", "at", "val_loss", "val_agreement"):
            assert m["history"][key] == pytest.approx(online["history"][key], rel=1e-4), key
    # a sweep's cache (--teacher_cache_methods): KD builds it with AT's taps too, AT reuses it
    sweep = tmp_path / "sweep"
    kd = run_recipe("distill", *flags, "--method=kd", f"--teacher_cache={sweep}", "--teacher_cache_methods=kd,at",
                    f"--output_dir={tmp_path / 'kd'}").metrics
    stamp = (sweep / "train" / "manifest.json").stat().st_mtime
    at = run_recipe("distill", *flags, "--method=at", f"--teacher_cache={sweep}", "--teacher_cache_methods=kd,at",
                    f"--output_dir={tmp_path / 'at'}").metrics
    assert (sweep / "train" / "manifest.json").stat().st_mtime == stamp
    manifest = json.loads((sweep / "train" / "manifest.json").read_text())
    assert set(manifest["method_taps"]) == {"kd", "at"} and kd["teacher_top1"] == at["teacher_top1"]
    from kdkeras.cache import CacheMismatchError

    with pytest.raises(CacheMismatchError, match="teacher_weights"):  # another teacher
        run_recipe("distill", *[f for f in flags if not f.startswith("--teacher=")], "--teacher=resnet8",
                   "--teacher_epochs=1", f"--teacher_cache={cache}", f"--output_dir={tmp_path / 'c'}")
