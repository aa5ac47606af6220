"""`dogs-vs-cats predict` on a real (tiny, untrained) saved model, and submission checks."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from dogs_vs_cats.common import UserError
from dogs_vs_cats.submission_file import check
from harness import image_bytes, run_cli


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    import keras

    from dogs_vs_cats.model import squeezenet, with_tta

    keras.utils.set_random_seed(0)
    path = tmp_path_factory.mktemp("model") / "model.keras"
    net = squeezenet("squeezenet1_1", 48)
    # Give the untrained head a preference so outputs differ from image to image.
    k, b = net.get_layer("conv10").get_weights()
    net.get_layer("conv10").set_weights([k * 30, b])
    with_tta(net).save(path)
    return path


def test_predict_writes_file_and_p_dog_for_files_and_folders(tmp_path, model_path):
    imgs = tmp_path / "imgs"
    (imgs / "sub").mkdir(parents=True)
    (imgs / "a.jpg").write_bytes(image_bytes("cat", (300, 200)))
    (imgs / "sub/b.png").write_bytes(image_bytes("dog", (31, 77), fmt="PNG", mode="LA"))
    (imgs / "c.JPEG").write_bytes(image_bytes("dog", (64, 64), mode="CMYK"))
    single = tmp_path / "single.jpg"
    single.write_bytes(image_bytes("cat", (50, 50), mode="L"))
    out = tmp_path / "pred.csv"
    result = run_cli(["predict", "--model", str(model_path), str(imgs), str(single), "--out", str(out)], tmp_path)
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(open(out)))
    assert [r["file"] for r in rows] == [
        str(imgs / "a.jpg"),
        str(imgs / "c.JPEG"),
        str(imgs / "sub/b.png"),
        str(single),
    ]
    p = np.array([float(r["p_dog"]) for r in rows])
    assert ((0 <= p) & (p <= 1)).all() and p.std() > 0


def test_predict_skips_bad_files_in_a_folder_but_refuses_a_bad_file_given_directly(tmp_path, model_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (imgs / "good.jpg").write_bytes(image_bytes())
    (imgs / "empty.jpg").write_bytes(b"")
    (imgs / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    out = tmp_path / "pred.csv"
    result = run_cli(["predict", "--model", str(model_path), str(imgs), "--out", str(out)], tmp_path)
    assert result.returncode == 0, result.stderr
    assert [r["file"] for r in csv.DictReader(open(out))] == [str(imgs / "good.jpg")]
    assert result.stderr.count("warning: skipping") == 2

    out2 = tmp_path / "pred2.csv"
    for bad in ("empty.jpg", "broken.jpg"):
        result = run_cli(["predict", "--model", str(model_path), str(imgs / bad), "--out", str(out2)], tmp_path)
        assert result.returncode == 1
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert f"{imgs / bad}: not a decodable image" in result.stderr
    assert not out2.exists()


def test_predict_with_a_missing_or_empty_model_names_it(tmp_path):
    (tmp_path / "a.jpg").write_bytes(image_bytes())
    result = run_cli(
        ["predict", "--model", str(tmp_path / "nope.keras"), str(tmp_path / "a.jpg"), "--out", "o.csv"], tmp_path
    )
    assert result.returncode == 1 and f"{tmp_path / 'nope.keras'}: model file not found" in result.stderr
    (tmp_path / "empty.keras").write_bytes(b"")
    result = run_cli(
        ["predict", "--model", str(tmp_path / "empty.keras"), str(tmp_path / "a.jpg"), "--out", "o.csv"], tmp_path
    )
    assert result.returncode == 1 and "model file is empty" in result.stderr
    (tmp_path / "junk.keras").write_bytes(b"junk")
    result = run_cli(
        ["predict", "--model", str(tmp_path / "junk.keras"), str(tmp_path / "a.jpg"), "--out", "o.csv"], tmp_path
    )
    assert result.returncode == 1 and "junk.keras: cannot load model" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def sample(tmp_path):
    path = tmp_path / "sample_submission.csv"
    path.write_text("id,label\n1,0.5\n2,0.5\n3,0.5\n")
    return path


@pytest.mark.parametrize(
    "text, message",
    [
        ("id,label\n1,0.1\n2,0.2\n3,0.3\n", None),
        ("id,p\n1,0.1\n2,0.2\n3,0.3\n", "header must be exactly 'id,label'"),
        ("id,label\n1,0.1\n2,0.2\n", "has 2 rows, sample_submission.csv has 3; ids missing [3]"),
        ("id,label\n1,0.1\n2,0.2\n4,0.3\n", "ids missing [3], unexpected [4]"),
        ("id,label\n1,0.1\n2,1.5\n3,0.3\n", "line 3: label 1.5 must be a probability in [0, 1]"),
        ("id,label\n1,0.1\n2,nan\n3,0.3\n", "line 3: label nan must be a probability"),
        ("id,label\n1,0.1\n2,abc\n3,0.3\n", "line 3: id must be an integer and label a number"),
        ("id,label\n1,0.1\n1,0.2\n3,0.3\n", "ids missing [2]"),
    ],
)
def test_submission_check_refuses_what_kaggle_would(tmp_path, sample, text, message):
    sub = tmp_path / "submission.csv"
    sub.write_text(text)
    if message is None:
        assert check(sub, sample) == 3
    else:
        with pytest.raises(UserError) as err:
            check(sub, sample)
        assert message in str(err.value) and "\n" not in str(err.value)


def test_submission_check_errors_name_the_file_the_user_knows(tmp_path, sample):
    tmp = tmp_path / ".submission.csv.123.tmp"
    tmp.write_text("id,label\n1,0.1\n")
    with pytest.raises(UserError) as err:
        check(tmp, sample, shown=tmp_path / "submission.csv")
    assert str(err.value).startswith(f"{tmp_path / 'submission.csv'}: has 1 rows")


def test_scores_count_one_half_as_dog_and_match_the_log_loss_formula():
    from dogs_vs_cats.common import scores

    p, y = np.array([0.5, 0.2, 0.9, 0.6]), np.array([1, 0, 1, 0])
    s = scores(p, y)
    assert s["images"] == 4 and s["accuracy"] == 0.75  # 0.5 counts as dog; 0.6 for a cat is the one miss
    expected = -np.mean(np.log([0.5, 0.8, 0.9, 0.4]))
    assert s["log_loss"] == round(float(expected), 4)
    assert s["roc_auc"] == 0.75  # of the four dog-cat pairs, only (0.5, 0.6) ranks the cat higher
    assert scores(np.array([0.3, 0.7]), np.array([1, 1]))["roc_auc"] is None  # one class: AUC undefined
