"""Issue 30, in both styles: predict never writes over its input, export never leaves a
broken program, a run resumes on its own data only, and nonsense settings are refused by
name. Each case is one line on stderr, exit code 2, and nothing of the user's changed."""

from __future__ import annotations

import os
import shutil

import pytest
from test_robust import (
    CPU,
    FEW_STEPS,
    assert_one_line,
    checkpoint_step,
    cpu_project,
    group,
    run_patched,
    table,
)

pytestmark = [group("tabular-regression"), pytest.mark.timeout(600)]
FRAMEWORKS = ["raw", "lightning"]


@pytest.fixture
def trained(installed_project, tmp_path):
    """trained(framework) -> (the installed tabular project, its run folder: a 4-step run)."""

    def get(framework: str):
        installed = cpu_project(installed_project, "tabular-regression", framework)
        runs = tmp_path / "runs"
        data = table(tmp_path / "train.csv")
        train = ["train", *CPU, *FEW_STEPS, "--data", str(data), "--output-dir", str(runs)]
        train += ["--name", "done"]
        installed.drive(train)[0].check()
        return installed, runs / "done"

    return get


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_predict_never_writes_over_its_input(framework, trained, tmp_path):
    """30.1: --output that is an input, directly, through a symbolic or a hard link, is
    refused; a prediction that fails leaves an existing output as it was; one that succeeds
    replaces it whole, with no temporary file left."""
    installed, run_dir = trained(framework)
    rows = tmp_path / "rows.csv"
    rows.write_text("a,b\n0.1,0.2\n0.5,0.3\n")
    (tmp_path / "soft.csv").symlink_to(rows)
    os.link(rows, tmp_path / "hard.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\nred,0.2\n")
    out = tmp_path / "out.csv"
    out.write_text("earlier predictions\n")
    best = ["--checkpoint", str(run_dir / "checkpoints" / "best.ckpt")]
    cases = [
        ("is the input", [str(rows), "--output", str(rows)]),
        ("is the input", [str(rows), "--output", str(tmp_path / "soft.csv")]),
        ("is the input", [str(tmp_path / "soft.csv"), "--output", str(rows)]),
        ("is the input", [str(rows), "--output", str(tmp_path / "hard.csv")]),
        ("'red' is not a number", [str(rows), str(bad), "--output", str(out)]),
        ("which is missing", [str(rows), "--output", str(tmp_path / "no" / "p.csv")]),
        ("is a folder", [str(rows), "--output", str(tmp_path)]),
    ]
    *outcomes, written = installed.drive(
        *(["predict", *argv, *best] for _, argv in cases),
        ["predict", str(rows), "--output", str(out), *best],
    )
    for (says, _), outcome in zip(cases, outcomes, strict=True):
        assert_one_line(outcome, says)
    assert rows.read_text() == "a,b\n0.1,0.2\n0.5,0.3\n"
    assert (tmp_path / "soft.csv").is_symlink()
    written.check()
    assert out.read_text().splitlines()[0] != "earlier predictions"
    assert len(out.read_text().splitlines()) == 3, out.read_text()  # a header and two rows
    assert not [p.name for p in tmp_path.iterdir() if ".tmp" in p.name]


# The disk fills up as export writes the program (or, with JSON, its metadata).
FULL_DISK = """
import errno, os, pathlib, torch

def full(path):
    with open(path, "wb") as file:
        file.write(b"half a program")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

if {json}:
    write_text = pathlib.Path.write_text
    def fake(self, text, *args, **kwargs):
        if self.suffix == ".json" and ".tmp" in self.name:
            full(self)
        return write_text(self, text, *args, **kwargs)
    pathlib.Path.write_text = fake
else:
    torch.export.save = lambda program, path, *args, **kwargs: full(path)
"""


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_an_export_that_fails_leaves_the_previous_one_whole(framework, trained, tmp_path):
    """30.2: a full disk while export writes the .pt2 or the .json is one line, and the
    previous export (both files) is left as it was, with no temporary file beside it."""
    installed, run_dir = trained(framework)
    best = run_dir / "checkpoints" / "best.ckpt"
    installed.drive(["export", "--checkpoint", str(best)])[0].check()
    program, metadata = best.with_suffix(".pt2"), best.with_suffix(".json")
    before = program.read_bytes(), metadata.read_bytes()
    for json in (False, True):
        setup = FULL_DISK.format(json=json)
        failed = run_patched(installed, setup, "export", "--checkpoint", str(best), cwd=tmp_path)
        assert_one_line(failed, "No space left on device")
        assert (program.read_bytes(), metadata.read_bytes()) == before, f"json={json}"
        assert sorted(p.name for p in best.parent.iterdir()) == [
            "best.ckpt",
            "best.json",
            "best.pt2",
            "last.ckpt",
        ]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_run_resumes_on_its_own_data_only(framework, installed_project, tmp_path):
    """30.3: --resume on other data, or on its own file changed since (rows appended, or a
    cell edited in place, same size), is one line naming what changed; the same data moved
    elsewhere resumes; --data-changed goes on with other data on purpose."""
    installed = cpu_project(installed_project, "tabular-regression", framework)
    data, runs = tmp_path / "data.csv", tmp_path / "runs"
    table(data, n=60)
    moved = shutil.copy(data, tmp_path / "moved.csv")
    other = table(tmp_path / "other.csv", n=50)
    train = ["train", *CPU, "--output-dir", str(runs), "train.eval_every=2"]
    installed.drive([*train, "--data", str(data), "--max-steps", "4", "--name", "rs"])[0].check()
    resume = [*train, "--resume", "last", "--name", "rs"]
    last = runs / "rs" / "checkpoints" / "last.ckpt"

    original = data.read_bytes()
    data.write_bytes(original.replace(b"0.5,", b"0.6,", 1))  # one cell edited in place
    assert len(data.read_bytes()) == len(original)
    (edited,) = installed.drive([*resume, "--max-steps", "6"])
    assert_one_line(edited, f"{runs / 'rs'} trained on other data (its content)")
    data.write_bytes(original + b"0.9,0.9,2.0\n")  # a row appended
    appended, replaced, from_moved, on_purpose = installed.drive(
        [*resume, "--max-steps", "6"],
        [*resume, "--max-steps", "6", "--data", str(other)],
        [*resume, "--max-steps", "6", "--data", str(moved)],
        [*resume, "--max-steps", "8", "--data", str(other), "--data-changed"],
    )
    line = assert_one_line(appended, "trained on other data (size ")
    assert "--data-changed" in line, line
    line = assert_one_line(replaced, f"path {data.resolve()} -> {other.resolve()}")
    assert "size " in line, line
    from_moved.check()
    on_purpose.check()
    assert checkpoint_step(last) == 8


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_nonsense_settings_are_refused_naming_the_key_and_what_is_valid(
    framework, installed_project, tmp_path
):
    """30.8: each is one line naming the key and its valid range (or both lines of a YAML
    key given twice), and no run folder is made."""
    installed = cpu_project(installed_project, "tabular-regression", framework)
    runs = tmp_path / "runs"
    twice = tmp_path / "twice.yaml"
    twice.write_text("train:\n  lr: 0.1\n  weight_decay: 0.1\n  lr: 0.2\n")
    cases = [
        ("model.hidden must be at least 1, not 0", ["model.hidden=0"]),
        ("model.hidden must be at least 1, not -1", ["model.hidden=-1"]),
        ("model.hidden= has no value; give one, e.g. model.hidden=128", ["model.hidden="]),
        ("train.lr= has no value", ["train.lr="]),
        ("train.weight_decay must be 0 or more, not -1", ["train.weight_decay=-1"]),
        ("model.dropout must be in [0, 1), not 1.5", ["model.dropout=1.5"]),
        ("model.dropout must be in [0, 1), not -0.1", ["model.dropout=-0.1"]),
        ("model.dropout must be in [0, 1), not nan", ["model.dropout=nan"]),
        ("duplicate key lr", ["--config", str(twice)]),
    ]
    train = ["train", *CPU, *FEW_STEPS, "--output-dir", str(runs)]
    outcomes = installed.drive(*([*train, *argv] for _, argv in cases))
    for (says, _), outcome in zip(cases, outcomes, strict=True):
        assert_one_line(outcome, says)
    line = outcomes[-1].stderr.strip()
    assert "line 2" in line and "line 4" in line, line  # both places of the key
    assert not runs.exists()


@pytest.mark.parametrize("framework", ["raw"])  # plumbing's, the same in both styles
@group("image-classification")
def test_an_image_folder_with_images_added_does_not_resume(framework, installed_project, tmp_path):
    """30.3 for folders: images added since the run (which would move the validation split
    onto former training images) are refused; hidden files (.DS_Store) do not count."""
    from test_robust import images

    installed = cpu_project(installed_project, "image-classification", framework)
    data, runs = images(tmp_path / "shapes", per_class=8), tmp_path / "runs"
    train = ["train", *CPU, "--output-dir", str(runs), "train.eval_every=2", "--name", "f"]
    installed.drive([*train, "--data", str(data), "--max-steps", "2"])[0].check()
    (data / "cat" / ".DS_Store").write_bytes(b"\0")
    images(data, classes=("dog",), per_class=10)  # two more dogs
    (added,) = installed.drive([*train, "--resume", "last", "--max-steps", "4"])
    assert_one_line(added, "trained on other data (size 16 files -> 18 files)")
