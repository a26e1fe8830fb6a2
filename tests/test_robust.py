"""Hostile inputs to a generated project: bad data, bad checkpoints and run folders, a
full or read-only disk, divergence. Each ends in one line on stderr and a known exit code:
2 for what the user can fix, 1 for a run that diverged; never a traceback, and nothing
written outside the output folder.

The many one-line cases of one installed project run in ONE process (see DRIVER), which
calls the project's `cli.main()` as its console script would, so torch and Lightning are
imported once per project rather than once per case. test_robust_signals.py and
test_robust_slurm.py reuse the helpers of this module.
"""

from __future__ import annotations

import csv
import errno
import json
import math
import os
import pickle
import shutil
import struct
import subprocess
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import TASKS, install, render, run

# Runs `cli.main()` once per case, capturing fds 1 and 2 (Lightning's log handlers hold
# the real stderr), and reports what each case printed, its exit code, any exception that
# escaped, and the files it created or changed under the case's `watch` folders.
DRIVER = r"""
import importlib, json, os, sys, tempfile, traceback

package, cases_path, results_path = sys.argv[1:4]
cli = importlib.import_module(f"{package}.cli")


def snapshot(folders):
    files = {}
    for folder in folders:
        for root, dirs, names in os.walk(folder):
            for name in names + dirs:
                path = os.path.join(root, name)
                stat = os.lstat(path)
                files[path] = (stat.st_size, stat.st_mtime_ns)
    return files


results = []
for case in json.load(open(cases_path)):
    os.chdir(case["cwd"])
    before = snapshot(case["watch"])
    if case.get("setup"):
        exec(case["setup"], {"package": package})
    sys.argv = [case["prog"], *case["argv"]]
    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    sys.stdout.flush(), sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(out.fileno(), 1), os.dup2(err.fileno(), 2)
    code, exception = None, None
    try:
        cli.main()
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    except BaseException:
        code, exception = 1, traceback.format_exc()
    finally:
        sys.stdout.flush(), sys.stderr.flush()
        os.dup2(saved[0], 1), os.dup2(saved[1], 2)
        os.close(saved[0]), os.close(saved[1])
    after = snapshot(case["watch"])
    out.seek(0), err.seek(0)
    results.append({
        "code": code,
        "stdout": out.read().decode(errors="replace"),
        "stderr": err.read().decode(errors="replace"),
        "exception": exception,
        "written": sorted(p for p in after if before.get(p) != after[p]),
    })
json.dump(results, open(results_path, "w"))
"""

CPU = ["--accelerator", "cpu", "--devices", "1", "--set", "train.num_workers=0"]
FEW_STEPS = ["--max-steps", "3", "--set", "train.eval_every=1"]


# --- installed projects ----------------------------------------------------------------


@dataclass
class Project:
    """A generated project, installed in its own light venv."""

    root: Path
    python: Path
    script: Path
    package: str
    slug: str

    def drive(self, cases: list[Case], workdir: Path, timeout: float = 600) -> list[Case]:
        """Run the cases in one process; fills in each case's result."""
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "driver.py").write_text(DRIVER)
        (workdir / "cases.json").write_text(json.dumps([c.spec(self) for c in cases]))
        env = {"MPLCONFIGDIR": str(workdir / "mpl")}
        run(
            [str(self.python), str(workdir / "driver.py"), self.package]
            + [str(workdir / "cases.json"), str(workdir / "results.json")],
            cwd=workdir,
            timeout=timeout,
            env=env,
        )
        results = json.loads((workdir / "results.json").read_text())
        for case, result in zip(cases, results, strict=True):
            case.result = result
        return cases


@dataclass
class Case:
    """One command of an installed project, and what must come of it."""

    name: str
    argv: list[str]
    cwd: Path
    code: int = 2
    says: str = ""  # a part of the one line on stderr
    starts: str = "error: "  # how that line starts
    watch: list[Path] = field(default_factory=list)  # nothing may change in these...
    may_write: list[Path] = field(default_factory=list)  # ...but under these
    setup: str = ""  # Python run in the driver before the command
    result: dict = field(default_factory=dict)

    def spec(self, project: Project) -> dict:
        self.cwd.mkdir(parents=True, exist_ok=True)
        return {
            "prog": project.slug,
            "argv": self.argv,
            "cwd": str(self.cwd),
            "watch": [str(p) for p in self.watch or [self.cwd]],
            "setup": self.setup,
        }

    def problems(self) -> list[str]:
        """What went wrong with this case, as lines of a test report."""
        r = self.result
        found = []
        if r["exception"]:
            found.append(f"exception:\n{r['exception']}")
        if r["code"] != self.code:
            found.append(f"exit code {r['code']}, expected {self.code}: {r['stderr'][-2000:]}")
        if "Traceback" in r["stderr"] + r["stdout"]:
            found.append(f"a traceback was printed:\n{r['stderr'][-3000:]}")
        message = r["stderr"].strip()
        if self.code != 0:
            if not message.startswith(self.starts) or "\n" in message:
                found.append(f"not one {self.starts!r} line on stderr:\n{message[-3000:]}")
            if self.says not in message:
                found.append(f"stderr lacks {self.says!r}: {message[-500:]}")
        elif "warn" in message.lower():
            found.append(f"a warning:\n{message[-2000:]}")
        if "weights_only" in message:
            found.append("passes on torch's weights_only advice")
        allowed = [str(p) for p in self.may_write]
        outside = [p for p in r["written"] if not any(p.startswith(a) for a in allowed)]
        if outside:
            found.append(f"wrote outside {allowed or 'nothing allowed'}: {outside[:5]}")
        return found


def check_all(cases: list[Case]) -> None:
    failures = {c.name: c.problems() for c in cases}
    failures = {name: p for name, p in failures.items() if p}
    report = "\n".join(f"[{name}] " + "\n    ".join(p) for name, p in failures.items())
    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n{report}"
    print(f"{len(cases)} cases: " + ", ".join(c.name for c in cases))


# Installed projects and templates, shared by the test_robust* modules of a session (a
# fixture imported into another module would be a second fixture, with its own cache).
_TEMPLATE: list[Path] = []
_PROJECTS: dict[tuple[str, str, str], Project] = {}


@pytest.fixture(scope="session")
def installed(tmp_path_factory):
    """installed(task, framework, hardware="cpu") -> Project, each installed once a session."""
    return installer(tmp_path_factory)


def installer(tmp_path_factory):
    """What the `installed` fixture of each test_robust* module gives."""
    from generator.questions import template_root

    if not _TEMPLATE:  # the template outside git, as conftest's template_copy
        root = tmp_path_factory.mktemp("robust-template")
        shutil.copy(template_root() / "copier.yml", root)
        shutil.copytree(template_root() / "template", root / "template")
        _TEMPLATE.append(root)

    def get(task: str, framework: str, hardware: str = "cpu") -> Project:
        key = (task, framework, hardware)
        if key not in _PROJECTS:
            short = {"image": "img", "text": "txt", "tabular": "tab", "language": "lm"}
            slug = f"rb-{short[task.split('-')[0]]}-{framework}-{hardware}"
            base = tmp_path_factory.mktemp(slug)
            root = render(
                _TEMPLATE[0],
                base / "project",
                project_name=slug,
                task=task,
                framework=framework,
                hardware=hardware,
            )
            it = install(root, base / "venv")
            _PROJECTS[key] = Project(root, it.python, it.script, slug.replace("-", "_"), slug)
        return _PROJECTS[key]

    return get


# --- data files --------------------------------------------------------------------------


def write_rows(path: Path, header: list[str], rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def table(path: Path, n: int = 40, edit: dict | None = None) -> Path:
    """A learnable table a,b,target of n rows; edit maps (row, column) to a cell's text."""
    rows = [[i / n, (i * 7 % n) / n, 2 * i / n + 0.1] for i in range(n)]
    for (row, column), value in (edit or {}).items():
        rows[row][column] = value
    return write_rows(path, ["a", "b", "target"], rows)


def texts(path: Path, labels=("pos", "neg"), n: int = 40) -> Path:
    words = {"pos": "great lovely fine", "neg": "dull awful slow", "odd": "strange"}
    rows = [
        [f"{words[labels[i % len(labels)]]} film {i}", labels[i % len(labels)]] for i in range(n)
    ]
    return write_rows(path, ["text", "label"], rows)


def images(root: Path, classes=("cat", "dog"), per_class: int = 6) -> Path:
    from PIL import Image

    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", (20, 16), (200 * c, 40 * i, 90)).save(root / name / f"{i}.png")
    return root


def bomb_png(path: Path, side: int = 15000) -> Path:
    """A small PNG file that announces side x side pixels (Pillow refuses it on opening)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    data = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + data)
    return path


def truncated_jpeg(path: Path) -> Path:
    from PIL import Image

    Image.effect_noise((96, 96), 64).convert("RGB").save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def every_mode(root: Path) -> Path:
    """Two classes of images in every mode Pillow reads: grayscale, palette with
    transparency, RGBA, CMYK, 1-bit and 16-bit grayscale."""
    from PIL import Image

    for c, name in enumerate(("cat", "dog")):
        folder = root / name
        folder.mkdir(parents=True)
        shade = 60 + 120 * c
        Image.new("L", (16, 16), shade).save(folder / "gray.png")
        rgba = Image.new("RGBA", (16, 16), (shade, 0, 0, 128))
        rgba.save(folder / "rgba.png")
        rgba.quantize(colors=4).save(folder / "palette.png")
        Image.new("CMYK", (16, 16), (0, shade, 0, 0)).save(folder / "cmyk.jpg")
        Image.new("1", (16, 16), c).save(folder / "bits.png")
        Image.new("I;16", (16, 16), shade * 256).save(folder / "sixteen.png")
    return root


# Image loading that fails in DataLoader worker processes only.
FAIL_IN_A_WORKER = """
import importlib, torch
data = importlib.import_module(package + ".data")
load_pixels = data.load_pixels  # what decodes every image, cached in memory or not

def failing(path, *args):
    if torch.utils.data.get_worker_info() is not None:
        raise data.DataError("cannot read image (in a worker)")
    return load_pixels(path, *args)

data.load_pixels = failing
"""


def bad_data_cases(task: str, area: Path) -> list[Case]:
    """Each data file of the task that must be refused with one line, and a few that must
    be taken (a byte-order mark, images of every mode)."""
    data, runs = area / "data", area / "runs"
    data.mkdir(parents=True)

    def train(name: str, path: Path, says: str, code: int = 2, extra=()) -> Case:
        argv = ["train", *CPU, *FEW_STEPS, "--output-dir", str(runs), "--name", name]
        argv += ["--data", str(path), *extra]
        may_write = [runs] if code == 0 else []  # the output folder, when it trains
        return Case(name, argv, area / "cwd", code, says, watch=[area], may_write=may_write)

    folder = data / "a-folder.csv"
    folder.mkdir()
    pipe = data / "pipe.csv"
    os.mkfifo(pipe)  # exists, but is no file: never opened (it would wait for a writer)
    cases = [
        train("missing", data / "missing.csv", "does not exist"),
        train("folder", folder, "is a folder"),
        train("named-pipe", pipe, "is not a regular file (a named pipe"),
    ]
    if task == "tabular-regression":
        latin = data / "latin1.csv"
        latin.write_bytes("a,b,target\n1,2,3\ncaf\xe9,2,3\n".encode("latin-1"))
        ragged = data / "long.csv"
        ragged.write_text("a,b,target\n1,2,3\n4,5,6,7\n" * 5)
        short = data / "short.csv"
        short.write_text("a,b,target\n1,2,3\n4,5,6\n7,8\n" * 5)
        cases += [
            train(
                "nan-cell",
                table(data / "nan.csv", edit={(2, 1): "nan"}),
                "line 4, column 'b': 'nan' is not a finite number",
            ),
            train(
                "inf-cell",
                table(data / "inf.csv", edit={(3, 0): "-inf"}),
                "line 5, column 'a': '-inf' is not a finite number",
            ),
            train(
                "nan-target",
                table(data / "nant.csv", edit={(9, 2): "NaN"}),
                "line 11, column 'target': 'NaN' is not a finite",
            ),
            train(
                "float32-overflow",
                table(data / "big.csv", edit={(1, 1): "1e39"}),
                "'1e39' is beyond float32's range",
            ),
            train("one-row", table(data / "one.csv", n=1), "too few rows (1)"),
            train("two-rows", table(data / "two.csv", n=2), "too few rows (2)"),
            train("three-rows", table(data / "three.csv", n=3), "too few rows (3)"),
            train(
                "constant-target",
                table(data / "flat.csv", edit={(i, 2): 7 for i in range(40)}),
                "'target' has the same value, 7, on every row",
            ),
            train(
                "word-cell",
                table(data / "word.csv", edit={(0, 0): "red"}),
                "line 2, column 'a': 'red' is not a number",
            ),
            train("extra-field", ragged, "line 3 has 4 fields, the header 3"),
            train("missing-field", short, "line 4 has 2 fields, the header 3"),
            train(
                "duplicate-column",
                write_rows(data / "dup.csv", ["a", "a", "target"], [[1, 2, 3]] * 9),
                "names column 'a' twice",
            ),
            train(
                "no-target",
                write_rows(data / "nt.csv", ["a", "b"], [[1, 2]] * 9),
                "expected a CSV with a 'target' column",
            ),
            train("not-utf8", latin, "not a readable UTF-8 CSV file"),
            train(
                "header-only",
                write_rows(data / "empty.csv", ["a", "target"], []),
                "has a header but no rows",
            ),
        ]
        bom = table(data / "bom.csv")
        bom.write_bytes(b"\xef\xbb\xbf" + bom.read_bytes())
        cases.append(train("byte-order-mark", bom, "", code=0))
        best = str(runs / "byte-order-mark" / "checkpoints" / "best.ckpt")
        one = table(data / "eval-one.csv", n=1)
        nan_rows = write_rows(data / "predict-nan.csv", ["a", "b"], [[1, 2], ["nan", 3]])
        cases += [
            Case(
                "evaluate-one-row",
                ["evaluate", "--checkpoint", best, "--data", str(one), "--accelerator", "cpu"],
                area / "cwd",
                2,
                "R2 needs at least two",
                watch=[area],
            ),
            Case(
                "predict-nan",
                ["predict", "--checkpoint", best, str(nan_rows)],
                area / "cwd",
                2,
                "line 3, column 'a': 'nan' is not a finite number",
                watch=[area],
            ),
        ]
    elif task == "text-classification":
        comma = data / "comma.csv"
        comma.write_text("text,label\nfine film,pos\nslow, dull film,neg\n" * 5)
        unlabelled = data / "unlabelled.csv"
        unlabelled.write_text("text,label\nfine film,pos\njust a text\n" * 5)
        latin = data / "latin1.csv"
        latin.write_bytes("text,label\ncaf\xe9 film,pos\nbad,neg\n".encode("latin-1"))
        unclosed = data / "unclosed.csv"  # the quote on line 3 swallowed every later line
        unclosed.write_text('text,label\nfine film,pos\n"slow film,neg\n' + "good,pos\n" * 9)
        cases += [
            train(
                "one-label",
                texts(data / "same.csv", labels=("pos",)),
                "every row has the label 'pos'",
            ),
            train("unquoted-comma", comma, "line 3 has more fields than the header"),
            train("no-label", unlabelled, "line 3 has no label"),
            train(
                "unclosed-quote",
                unclosed,
                "the row from line 3 is not valid CSV (unexpected end of data); a text in "
                "double quotes must end with one",
            ),
            train("one-row", texts(data / "one.csv", n=1), "has 1 rows; at least two are needed"),
            train(
                "wrong-columns",
                write_rows(data / "cols.csv", ["sentence", "category"], [["a", "b"]] * 4),
                "expected a CSV with columns text,label",
            ),
            train("not-utf8", latin, "not a readable UTF-8 CSV file"),
            train("empty-file", data / "empty.csv", "got columns (none)"),
        ]
        (data / "empty.csv").write_text("")
        bom = texts(data / "bom.csv")
        bom.write_bytes(b"\xef\xbb\xbf" + bom.read_bytes())
        cases.append(train("byte-order-mark", bom, "", code=0))
        best = str(runs / "byte-order-mark" / "checkpoints" / "best.ckpt")
        odd = texts(data / "odd.csv", labels=("pos", "odd"))
        cases.append(
            Case(
                "evaluate-unknown-label",
                ["evaluate", "--checkpoint", best, "--data", str(odd), "--accelerator", "cpu"],
                area / "cwd",
                2,
                "labels ['odd'] are not among the trained ones",
                watch=[area],
            )
        )
    elif task == "image-classification":
        bomb = images(data / "bomb")
        bomb_png(bomb / "dog" / "huge.png")
        cut = images(data / "cut")
        truncated_jpeg(cut / "cat" / "photo.jpg")
        broken = images(data / "broken")
        (broken / "dog" / "notes.png").write_text("not an image")
        lonely = images(data / "lonely", classes=("cat",))
        hollow = images(data / "hollow")
        (hollow / "bird").mkdir()
        half = images(data / "half" / "train")
        images(data / "uneven" / "train")
        images(data / "uneven" / "val", classes=("cat",))  # no val/dog/
        (data / "a-file.png").write_bytes(b"")
        cases = [c for c in cases if c.name not in ("folder", "named-pipe")]
        cases += [
            train("decompression-bomb", bomb, "huge.png is too large to decode safely"),
            train("truncated-jpeg", cut, "photo.jpg (image file is truncated"),
            train("not-an-image", broken, "cannot read image"),
            train("a-file", data / "a-file.png", "is a file, not a folder"),
            train("one-class", lonely, "has 1 class sub-folders; expected at least two"),
            train("empty-class", hollow, "bird holds no images"),
            train("train-without-val", half.parent, "has train/ but no val/"),
            train("val-lacks-a-class", data / "uneven", "uneven/val/dog is missing: add it"),
            train("every-mode", every_mode(data / "modes"), "", code=0),
            # Last (its setup stays): an image that fails in a DataLoader worker process,
            # whose error comes back wrapped in the worker's traceback.
            Case(
                "error-in-a-loader-worker",
                [
                    "train",
                    *CPU,
                    *FEW_STEPS,
                    "--set",
                    "train.num_workers=1",
                    "--output-dir",
                    str(runs),
                    "--name",
                    "worker",
                    "--data",
                    str(images(data / "fine")),
                ],
                area / "cwd",
                2,
                "cannot read image (in a worker)",
                watch=[area],
                may_write=[runs],
                setup=FAIL_IN_A_WORKER,
            ),
        ]
    else:
        (data / "empty.txt").write_text(" \n")
        (data / "binary.txt").write_bytes(b"\xff\xfe\x00\x81" * 64)
        (data / "short.txt").write_text("just a few words\n")
        (data / "bom.txt").write_bytes(b"\xef\xbb\xbf" + b"the cat sat on the mat.\n" * 40)
        cases += [
            train("empty", data / "empty.txt", "is empty"),
            train("not-utf8", data / "binary.txt", "is not UTF-8 text"),
            train("too-short", data / "short.txt", "too few for block_size"),
            train("byte-order-mark", data / "bom.txt", "", code=0),
        ]
    return cases


def diverging_cases(task: str, area: Path) -> list[Case]:
    """An absurd learning rate: one line naming the step and the loss, exit 1.

    Images: the case of issue 20, whose first evaluations were finite while batch norm's
    running variance was inf; and a good run resumed with such a rate, whose last.ckpt must
    stay the good one."""
    runs, cwd = area / "runs", area / "cwd"
    budget = ["--max-steps", "10", "--set", "train.eval_every=1"]
    if task == "image-classification":
        budget = ["--max-steps", "20", "--set", "train.eval_every=5"]
    argv = ["train", *CPU, *budget, "--lr", "1e6", "--output-dir", str(runs), "--name", "diverge"]
    diverging = Case(
        "lr-1e6",
        argv,
        cwd,
        code=1,
        says="training diverged at step ",
        watch=[area],
        may_write=[runs],
    )
    if task != "image-classification":
        return [diverging]
    good = ["train", *CPU, "--max-steps", "10", "--set", "train.eval_every=5"]
    good += ["--output-dir", str(runs), "--name", "good"]
    last = runs / "good" / "checkpoints" / "last.ckpt"
    resumed = ["train", "--resume", str(last), "--max-steps", "30", "--lr", "1e5"]
    return [
        diverging,
        Case("good", good, cwd, code=0, watch=[area], may_write=[runs]),
        Case(
            "resumed-lr-1e5",
            resumed,
            cwd,
            code=1,
            says=f"; the last good checkpoint is {last}",
            watch=[last.parent],  # untouched
            may_write=[runs / "good"],
        ),
    ]


def checkpoint_step(path: Path) -> int:
    import torch

    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    return checkpoint["progress"]["step"]


def checkpoint_is_finite(path: Path) -> bool:
    import torch

    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    weights = checkpoint.get("model") or checkpoint["state_dict"]
    return all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())


def check_divergence(case: Case, folder: Path) -> None:
    """Nothing of the diverged state was saved: every checkpoint of the run folder is older,
    and finite (weights and buffers)."""
    message = case.result["stderr"].strip()
    step = int(message.split("at step ")[1].split(":")[0])
    seen = message.split(": the ")[1].split(";")[0]  # "loss is nan", "model's x is nan or inf"
    assert seen.startswith(("loss is ", "validation loss is ", "model's ")), message
    assert seen.split(" is ")[1] in ("nan", "inf", "-inf", "nan or inf"), message
    checkpoints = list((folder / "checkpoints").glob("*"))
    assert all(p.suffix == ".ckpt" for p in checkpoints), checkpoints  # no temporary left
    for path in checkpoints:
        assert checkpoint_step(path) < step and checkpoint_is_finite(path), path
    last = folder / "checkpoints" / "last.ckpt"
    assert (f"the last good checkpoint is {last}" in message) == last.is_file(), message
    if (folder / "metrics.csv").is_file():  # Lightning writes it at the first evaluation
        with (folder / "metrics.csv").open() as file:
            rows = list(csv.DictReader(file))
        assert all(math.isfinite(float(v)) for row in rows for v in row.values()), rows


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("framework", ["raw", "lightning"])
@pytest.mark.parametrize("task", TASKS)
def test_bad_data_is_one_line_and_divergence_stops_cleanly(task, framework, installed, tmp_path):
    project = installed(task, framework)
    area = tmp_path / "area"
    diverging = diverging_cases(task, area)
    check_all(project.drive(bad_data_cases(task, area) + diverging, tmp_path / "driver"))
    check_divergence(diverging[0], area / "runs" / "diverge")
    if task == "image-classification":  # the good run resumed with a rate that diverges
        check_divergence(diverging[-1], area / "runs" / "good")
        assert checkpoint_step(area / "runs" / "good" / "checkpoints" / "last.ckpt") == 10


# --- checkpoints and run folders ---------------------------------------------------------

OTHER = {"raw": "lightning", "lightning": "raw"}


_TRAINED: dict[tuple[str, str], Path] = {}


@pytest.fixture(scope="session")
def trained(installed, tmp_path_factory):
    """trained(task, framework) -> the folder of a finished 3-step run of that project."""
    runs = _TRAINED

    def get(task: str, framework: str) -> Path:
        if (task, framework) not in runs:
            project = installed(task, framework)
            output = tmp_path_factory.mktemp(f"trained-{framework}")
            run(
                [str(project.script), "train", *CPU, *FEW_STEPS]
                + ["--output-dir", str(output), "--name", "done"],
                cwd=output,
            )
            runs[task, framework] = output / "done"
        return runs[task, framework]

    return get


def checkpoint_cases(framework: str, area: Path, other_run: Path) -> list[Case]:
    """Checkpoints of the other engine, of no run folder, damaged, malicious; run names
    that are paths; output folders that cannot be."""
    runs, home, cwd = area / "runs", area / "home", area / "cwd"
    done = runs / "done"
    last = done / "checkpoints" / "last.ckpt"
    downloads = home / "Downloads"
    downloads.mkdir(parents=True)
    shutil.copy(last, downloads / "last.ckpt")
    (runs / "killed" / "checkpoints").mkdir(parents=True)  # a run killed before a checkpoint
    shutil.copy(done / "config.yaml", runs / "killed" / "config.yaml")
    damaged = area / "damaged.ckpt"
    damaged.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    (area / "text.ckpt").write_text("not a checkpoint")
    (area / "folder.ckpt").mkdir()
    evil = area / "evil.ckpt"
    # A pickle that would create a file when loaded with weights_only=False.
    evil.write_bytes(pickle.dumps(Payload(str(area / "pwned"))))
    import torch

    torch.save({"task": "something-else", "config": {}}, area / "alien.ckpt")
    (area / "a-file").write_text("")
    (area / "folder.yaml").mkdir()
    other = other_run / "checkpoints" / "last.ckpt"

    def case(name, *argv, says="", code=2, may_write=(), watch=(area,)):
        watch = [*watch]
        return Case(name, list(argv), cwd, code, says, watch=watch, may_write=[*may_write])

    train = ["train", *CPU, "--output-dir", str(runs)]
    folder_name = "must be a folder name, without '/'"
    unreadable = "cannot read checkpoint"
    return [
        case(
            "resume-other-engine",
            *train,
            "--resume",
            str(other),
            "--max-steps",
            "6",
            says=f"was written by the {OTHER[framework]} engine",
            watch=(area, other_run),
        ),
        # Both engines train the same plain model: either reads the other's checkpoint.
        case(
            # One checkpoint format: either engine's checkpoint evaluates (only its own
            # engine resumes it).
            "evaluate-other-engine",
            "evaluate",
            "--checkpoint",
            str(other),
            "--accelerator",
            "cpu",
            code=0,
            watch=(area, other_run),
        ),
        case(
            "resume-outside-a-run-folder",
            *train,
            "--resume",
            str(downloads / "last.ckpt"),
            "--max-steps",
            "6",
            says="is not in a run folder (runs/<name>/checkpoints/); "
            "to start a new run from it, add --name NEW",
        ),
        case(
            "resume-outside-with-a-new-name",
            *train,
            "--resume",
            str(downloads / "last.ckpt"),
            "--max-steps",
            "5",
            "--name",
            "from-downloads",
            code=0,
            may_write=[runs],  # the output folder only: nothing beside the checkpoint
        ),
        case("name-parent-path", *train, "--name", "../../x", says=folder_name),
        case("name-nested", *train, "--name", "a/b", says=folder_name),
        case("name-dot-dot", *train, "--name", "..", says=folder_name),
        case("name-dot", *train, "--name", ".", says=folder_name),
        case("name-empty", *train, "--name", "", says=folder_name),
        case("name-absolute", *train, "--name", str(home / "x"), says=folder_name),
        case("name-trailing-slash", *train, "--name", "x/", says=folder_name),
        case(
            "resume-a-run-without-checkpoint",
            *train,
            "--resume",
            "last",
            "--name",
            "killed",
            says="has no checkpoint yet (it stopped before its first evaluation); start it "
            "again with --name killed, without --resume",
        ),
        case(
            "restart-a-run-without-checkpoint",
            *train,
            *FEW_STEPS,
            "--name",
            "killed",
            code=0,
            may_write=[runs / "killed"],
        ),
        case("name-taken", *train, "--name", "done", says="exists already"),
        case(
            "resume-with-nothing-to-resume",
            "train",
            *CPU,
            "--output-dir",
            str(area / "none"),
            "--resume",
            "last",
            says="train first",
        ),
        case(
            "resume-spent-budget",
            *train,
            "--resume",
            "last",
            "--name",
            "done",
            says="has trained its 3 steps already",
        ),
        case(
            "resume-other-model",
            *train,
            "--resume",
            str(last),
            "--max-steps",
            "6",
            "--set",
            "model.hidden=32",
            says="was trained with other model settings",
        ),
        case("resume-damaged", *train, "--resume", str(damaged), says=unreadable),
        case("evaluate-damaged", "evaluate", "--checkpoint", str(damaged), says=unreadable),
        case(
            "evaluate-not-a-checkpoint",
            "evaluate",
            "--checkpoint",
            str(area / "text.ckpt"),
            says=unreadable,
        ),
        case("evaluate-malicious-pickle", "evaluate", "--checkpoint", str(evil), says=unreadable),
        case("resume-malicious-pickle", *train, "--resume", str(evil), says=unreadable),
        case(
            "evaluate-other-task",
            "evaluate",
            "--checkpoint",
            str(area / "alien.ckpt"),
            says="is not a checkpoint of this project",
        ),
        case(
            "checkpoint-is-a-folder",
            "evaluate",
            "--checkpoint",
            str(area / "folder.ckpt"),
            says="is a folder; give a .ckpt file inside it",
        ),
        case(
            "checkpoint-missing",
            "evaluate",
            "--checkpoint",
            str(area / "nope.ckpt"),
            says="does not exist",
        ),
        case(
            "output-dir-is-a-file",
            *train[:-1],
            str(area / "a-file"),
            *FEW_STEPS,
            says="cannot create the run folder",
        ),
        case(
            "output-dir-under-a-file",
            *train[:-1],
            str(area / "a-file" / "runs"),
            *FEW_STEPS,
            says="cannot create the run folder",
        ),
        case(
            "config-is-a-folder",
            *train,
            "--config",
            str(area / "folder.yaml"),
            says="is a folder, not a file",
        ),
        case("lr-inf", *train, "--lr", "inf", says="must be finite numbers"),
        case("lr-nan", *train, "--lr", "nan", says="must be finite numbers"),
        case("lr-overflow", *train, "--set", "train.lr=1e999", says="must be finite numbers"),
        # Last: it trains on. The run folder was copied here from elsewhere.
        case(
            "resume-a-moved-run",
            *train,
            "--resume",
            "last",
            "--name",
            "done",
            "--max-steps",
            "6",
            "--set",
            "train.eval_every=1",
            code=0,
            may_write=[done],
        ),
    ]


def edited_cases(area: Path) -> list[Case]:
    """Checkpoints and run files edited by hand (each command that reads them says so in one
    line, naming the file); a run folder whose config.yaml was deleted (it resumes); export
    --output where it cannot write."""
    import torch

    runs, cwd = area / "runs", area / "cwd"

    def copy_run(name: str, edit=None) -> tuple[Path, Path]:
        folder = runs / name
        shutil.copytree(runs / "done", folder)
        last = folder / "checkpoints" / "last.ckpt"
        if edit is not None:
            checkpoint = torch.load(last, weights_only=True)
            edit(checkpoint["hyper_parameters"])
            torch.save(checkpoint, last)
        return folder, last

    def readers(name: str, last: Path, says: str, commands=("evaluate", "predict", "export")):
        given = {
            "evaluate": ["evaluate", "--checkpoint", str(last), "--accelerator", "cpu"],
            "predict": ["predict", "--checkpoint", str(last), str(area / "inputs.csv")],
            "export": ["export", "--checkpoint", str(last), "--output", str(area / "x.pt2")],
            "resume": ["train", *CPU, "--resume", str(last), "--max-steps", "6"],
        }
        # A resume claims its run folder (runs/<name>/.claim, removed as it fails): the files
        # in it must be as they were.
        watch = {"resume": [last.parent.parent]}
        return [
            Case(
                f"{command}-{name}",
                given[command],
                cwd,
                says=says,
                watch=watch.get(command, [area]),
            )
            for command in commands
        ]

    every = ("evaluate", "predict", "export", "resume")
    _, no_columns = copy_run("no-columns", lambda h: h["meta"].pop("numeric"))
    _, no_target = copy_run("no-target", lambda h: h["meta"].pop("target"))
    _, no_config = copy_run("config-empty", lambda h: h.update(cfg={}))
    _, narrower = copy_run("narrower", lambda h: h["cfg"]["model"].update(hidden=64))
    edited = "; the checkpoint was edited or damaged"
    cases = [
        *readers("meta-without-columns", no_columns, f"(KeyError: 'numeric'){edited}", every),
        *readers("meta-without-target", no_target, f"(KeyError: 'target'){edited}", ["predict"]),
        *readers("config-empty", no_config, "lacks parts of a checkpoint", every),
        *readers("narrower-model", narrower, "its weights do not fit the model", every),
    ]
    for name, text in (("broken", "{broken"), ("list", "[1, 2]")):
        folder, last = copy_run(f"record-{name}")
        (folder / "record.json").write_text(text)
        says = f"{folder / 'record.json'} is damaged (not the JSON object a run writes)"
        cases += readers(f"record-{name}", last, says, ["evaluate", "resume"])
    folder, last = copy_run("latin-1")
    metrics = folder / "metrics.csv"
    metrics.write_bytes(metrics.read_bytes().replace(b"val/mse", b"val/m\xe9e", 1))
    cases += readers("latin-1-metrics", last, f"{metrics} is not a CSV file of UTF-8", ["resume"])
    folder, last = copy_run("no-config")
    (folder / "config.yaml").unlink()
    resume = ["train", *CPU, "--resume", str(last), "--max-steps", "6"]
    cases.append(Case("resume-without-config", resume, cwd, 0, watch=[area], may_write=[folder]))
    best = str(runs / "done" / "checkpoints" / "best.ckpt")
    output = ["export", "--checkpoint", best, "--output"]
    cases += [
        Case(
            "export-into-a-missing-folder",
            [*output, str(area / "nosuch" / "x.pt2")],
            cwd,
            says=f"goes into {area / 'nosuch'}, which does not exist",
            watch=[area],
        ),
        Case("export-onto-a-folder", [*output, str(cwd)], cwd, says="is a folder", watch=[area]),
    ]
    return cases


# W&B with no credentials (the tests' machines have none, nor a network): WANDB_MODE as given.
NO_WANDB_KEY = """
import os
home = {home!r}
os.environ.update(WANDB_MODE={mode!r}, HOME=home, NETRC=home + "/.netrc")
os.environ.update(WANDB_CONFIG_DIR=home + "/config", WANDB_DIR=home + "/wandb")
os.environ.pop("WANDB_API_KEY", None)
"""


def wandb_cases(area: Path) -> list[Case]:
    home = area / "home"
    train = ["train", *CPU, *FEW_STEPS, "--logger", "wandb", "--output-dir", str(area / "runs")]
    return [
        Case(
            f"wandb-{mode}",
            [*train, "--name", f"wandb-{mode}"],
            area / "cwd",
            says=says,
            watch=[area],
            may_write=[home],
            setup=NO_WANDB_KEY.format(home=str(home), mode=mode),
        )
        for mode, says in (
            ("bogus", "WANDB_MODE=bogus is not a mode of W&B: set it to online, offline"),
            ("online", "WANDB_MODE=online, but no W&B API key is set up here: run `wandb login`"),
        )
    ]


class Payload:
    """Unpickled, it would create a file: it must never be."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("framework", ["raw", "lightning"])
def test_checkpoints_and_run_folders_are_one_line(framework, installed, trained, tmp_path):
    task = "tabular-regression"
    project = installed(task, framework)
    area = tmp_path / "area"
    shutil.copytree(trained(task, framework), area / "runs" / "done")
    cases = edited_cases(area) + checkpoint_cases(framework, area, trained(task, OTHER[framework]))
    # Last: they set W&B's environment variables in the driver's process.
    check_all(project.drive(cases + wandb_cases(area), tmp_path / "driver"))
    assert not (area / "pwned").exists(), "a checkpoint's pickle ran code"
    # A run folder without its config.yaml resumed in place, and wrote it again.
    assert checkpoint_step(area / "runs" / "no-config" / "checkpoints" / "last.ckpt") == 6
    assert (area / "runs" / "no-config" / "config.yaml").is_file()
    # The new run from a checkpoint outside a run folder is a run folder of its own.
    started = area / "runs" / "from-downloads"
    assert {"config.yaml", "metrics.csv"} <= {p.name for p in started.iterdir()}
    assert checkpoint_step(started / "checkpoints" / "last.ckpt") == 5
    # The moved run kept its record: best.ckpt is still its best evaluation.
    with (area / "runs" / "done" / "metrics.csv").open() as file:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(file)]
    assert [row["step"] for row in rows] == [1, 2, 3, 4, 5, 6]
    best = min(rows, key=lambda row: row["val/mse"])
    assert checkpoint_step(area / "runs" / "done" / "checkpoints" / "best.ckpt") == best["step"]


# --- sweeps and folds: nothing mixed, nothing lost --------------------------------------

SPACE = {"trials": 2, "pruner": None, "params": {"train.lr": {"low": 1e-3, "high": 1e-2}}}
QUICK = [*CPU, "--max-steps", "2", "--set", "train.eval_every=1"]
QUICK_SWEEP = [arg for arg in QUICK if arg not in ("--devices", "1")]  # one device a trial


def space_file(path: Path, edit: dict | None = None, **changes) -> Path:
    """SPACE with these top-level changes, and `edit` merged into train.lr's range."""
    import yaml

    space = {**SPACE, **changes}
    if edit is not None:
        space["params"] = {"train.lr": {**SPACE["params"]["train.lr"], **edit}}
    path.write_text(yaml.safe_dump(space))
    return path


def sweep_and_folds_cases(area: Path) -> list[Case]:
    """Search spaces with typos, wrong types or impossible ranges; sweeps whose storage lost
    their trials; k folds of another split under the same name; folders through a missing
    one. All refused before any trial or fold trains, nothing written."""
    import sqlite3

    runs, cwd, spaces = area / "runs", area / "cwd", area / "spaces"
    spaces.mkdir(parents=True)
    sweep = ["sweep", *QUICK_SWEEP, "--output-dir", str(runs)]
    ok = space_file(spaces / "ok.yaml")

    def refused(name: str, argv: list[str], says: str, watch=(area,), **kwargs) -> Case:
        return Case(name, argv, cwd, says=says, watch=[*watch], **kwargs)

    def space_case(name: str, says: str, **changes) -> Case:
        argv = [*sweep, "--space", str(space_file(spaces / f"{name}.yaml", **changes))]
        return refused(f"space-{name}", [*argv, "--name", name], says)

    cases = [
        space_case(
            "typo", "unknown key 'trails'; a search space has trials, params, pruner", trails=3
        ),
        space_case(
            "trials-true", "trials must be a whole number, 1 or more; got True", trials=True
        ),
        space_case("step-0", "train.lr: step must be above 0; got 0.0", edit={"step": 0}),
        space_case("step-negative", "train.lr: step must be above 0; got -1.0", edit={"step": -1}),
        space_case(
            "high-inf",
            "train.lr: low, high and step must be finite numbers",
            edit={"high": float("inf")},
        ),
        space_case(
            "pruner-negative",
            "pruner needs startup_trials and warmup_evaluations, whole numbers, 0 or more",
            pruner={"startup_trials": -1, "warmup_evaluations": 1},
        ),
        space_case(
            "output-dir",
            "train.output_dir cannot be searched: the sweep sets it for each trial",
            params={"train.output_dir": {"choices": ["a", "b"]}},
        ),
        space_case(
            "name",
            "train.name cannot be searched: the sweep sets it for each trial",
            params={"train.name": {"choices": ["a", "b"]}},
        ),
        refused("trials-0", [*sweep, "--space", str(ok), "--trials", "0"], "--trials must be 1"),
        refused(
            "trials-negative",
            [*sweep, "--space", str(ok), "--trials", "-1"],
            "--trials must be 1 or more; got -1",
        ),
    ]
    # A sweep of two trials, and one of one: then the first one's storage emptied, replaced
    # by the second one's, or by a database of another schema.
    done = runs / "sweeps" / "done"
    cases += [
        Case("sweep", [*sweep, "--space", str(ok), "--name", "done"], cwd, 0, may_write=[runs]),
        Case(
            "other",
            [*sweep, "--space", str(ok), "--name", "other", "--trials", "1"],
            cwd,
            0,
            may_write=[runs],
        ),
    ]
    again = [*sweep, "--space", str(ok), "--name", "done", "--trials", "3"]
    lost = f"{done} holds 2 trials (trial-000...) that the sweep's storage sqlite:///"
    # Opening the storage may make its tables (and a journal beside it, that changes the
    # folder's time); the lock file is touched. trials.csv and best.yaml are checked after.
    may_write = [done]
    emptied = f"\nopen({str(done / 'study.db')!r}, 'w').close()"
    replaced = f"import shutil; shutil.copy({str(runs / 'sweeps' / 'other' / 'study.db')!r}, "
    replaced += f"{str(done / 'study.db')!r})"
    schema = runs / "sweeps" / "schema"
    schema.mkdir(parents=True)
    with sqlite3.connect(schema / "study.db") as db:
        db.execute("create table studies (x int)")
    cases += [
        refused("storage-emptied", again, lost, setup=emptied, may_write=may_write),
        refused("storage-of-another-sweep", again, lost, setup=replaced, may_write=may_write),
        refused(
            "storage-of-another-schema",
            [*sweep, "--space", str(ok), "--name", "schema"],
            f"cannot use the sweep's storage sqlite:///{schema / 'study.db'}: it is not a "
            "storage of Optuna",
            may_write=[schema],
        ),
    ]
    # k folds: another K, another seed, a damaged folds.json; too few rows for the folds.
    folds = ["train", *QUICK, "--output-dir", str(runs), "--name", "cv", "--folds"]
    cv = [runs / "cv"]  # its files; its claim, taken while it checks, is gone after
    cases += [
        Case("folds", [*folds, "2"], cwd, 0, may_write=[runs]),
        refused(
            "folds-another-k",
            [*folds, "3"],
            f"{runs / 'cv'} holds the folds of a 2-fold split; --folds 3 there would mix",
            watch=cv,
        ),
        refused(
            "folds-another-seed",
            [*folds, "2", "--seed", "7"],
            "holds folds trained with other settings (train.seed: 42 -> 7)",
            watch=cv,
        ),
        refused(
            "folds-damaged",
            [*folds, "2"],
            f"{runs / 'cv' / 'folds.json'} is damaged",
            setup=f"open({str(runs / 'cv' / 'folds.json')!r}, 'w').write('{{broken')",
            watch=cv,
            may_write=[runs / "cv" / "folds.json"],
        ),
        refused(
            "folds-of-one-row",
            [
                *folds[:-3],
                "--name",
                "four",
                "--data",
                str(table(area / "four.csv", n=4)),
                "--folds",
                "4",
            ],
            "4 examples make folds of 1, and a validation split needs 2 at least; use --folds 2",
            watch=[runs],  # runs/four/fold-1/, made for the claims, removed again
        ),
    ]
    # An output folder through a missing one: nothing created there, by any command.
    through = str(Path("out", "nosuch", "..", "x_out"))
    says = f"--output-dir {through} goes through {Path('out', 'nosuch')}, which does not exist"
    for name, command in (
        ("train", ["train", *QUICK]),
        ("folds", ["train", *QUICK, "--folds", "2"]),
        ("sweep", ["sweep", *QUICK_SWEEP, "--space", str(ok)]),
    ):
        argv = [*command, "--output-dir", through, "--name", "x"]
        cases.append(refused(f"{name}-through-a-missing-folder", argv, says))
    return cases


# Keeps what the sweep wrote before its storage is emptied (the driver's setup runs first).
KEEP_RESULTS = """
import shutil
for name in ("trials.csv", "best.yaml"):
    shutil.copy({done!r} + "/" + name, {kept!r} + "/" + name)
"""


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sweeps_and_folds_refuse_to_mix_or_lose_results(installed, tmp_path):
    project = installed("tabular-regression", "raw")
    area, kept = tmp_path / "area", tmp_path / "kept"
    kept.mkdir()
    cases = sweep_and_folds_cases(area)
    done = area / "runs" / "sweeps" / "done"
    (emptied,) = [case for case in cases if case.name == "storage-emptied"]
    emptied.setup = KEEP_RESULTS.format(done=str(done), kept=str(kept)) + emptied.setup
    check_all(project.drive(cases, tmp_path / "driver"))
    # Refused, the sweep left its results as they were: two trials, and the best of them.
    for name in ("trials.csv", "best.yaml"):
        assert (done / name).read_bytes() == (kept / name).read_bytes(), name
    assert len((done / "trials.csv").read_text().splitlines()) == 1 + 2
    assert not list(area.rglob(".claim")), "a claim was left behind"


# --- a disk that is full or read-only ----------------------------------------------------


def mount_tmpfs(path: Path, size: str) -> bool:
    """A small filesystem of its own at `path`: needs root (else False)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)])
    return done.returncode == 0


def fill(disk: Path, leave_kib: int = 16) -> None:
    """Fill the filesystem of `disk`, but for leave_kib KiB."""
    free = shutil.disk_usage(disk).free - leave_kib * 1024
    with (disk / "filler").open("wb") as file:
        while free > 0:
            chunk = min(free, 1 << 20)
            try:
                file.write(b"\0" * chunk)
                file.flush()
            except OSError as error:
                assert error.errno == errno.ENOSPC
                break
            free -= chunk


def file_states(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


def disk_cases(disk: Path, cwd: Path, says: tuple[str, str]) -> list[Case]:
    """Resuming the run `done` on `disk`, and starting a new one there: both refused."""
    checkpoints = disk / "done" / "checkpoints"
    resume = ["train", *CPU, "--output-dir", str(disk), "--resume", "last"]
    resume += ["--name", "done", "--max-steps", "6"]
    new = ["train", *CPU, *FEW_STEPS, "--output-dir", str(disk), "--name", "new"]
    return [
        Case("resume", resume, cwd, says=says[0], watch=[checkpoints]),
        Case("new-run", new, cwd, says=says[1], watch=[checkpoints]),
    ]


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("framework", ["raw", "lightning"])
def test_a_full_disk_is_one_line_and_keeps_the_checkpoints(framework, installed, trained, tmp_path):
    project = installed("tabular-regression", framework)
    disk = tmp_path / "disk"
    if not mount_tmpfs(disk, "4m"):
        pytest.skip("mounting a small tmpfs needs root: no full disk to try")
    try:
        shutil.copytree(trained("tabular-regression", framework), disk / "done")
        checkpoints = disk / "done" / "checkpoints"
        kept = file_states(checkpoints)
        fill(disk)
        space = "No space left on device"
        cases = project.drive(disk_cases(disk, tmp_path / "cwd", (space, space)), tmp_path / "d")
        check_all(cases)
        assert file_states(checkpoints) == kept  # no temporary left, nothing overwritten
    finally:
        subprocess.run(["umount", "-l", str(disk)])


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("framework", ["raw", "lightning"])
def test_a_read_only_output_folder_is_one_line_and_keeps_the_checkpoints(
    framework, installed, trained, tmp_path
):
    project = installed("tabular-regression", framework)
    disk = tmp_path / "disk"
    root = os.geteuid() == 0  # root writes through permissions: a read-only mount instead
    if root and not mount_tmpfs(disk, "4m"):
        pytest.skip("as root, a read-only folder needs a read-only mount, and mount failed")
    try:
        shutil.copytree(trained("tabular-regression", framework), disk / "done")
        checkpoints = disk / "done" / "checkpoints"
        kept = file_states(checkpoints)
        if root:
            subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
            says = ("Read-only file system", "Read-only file system")
        else:
            for folder in (checkpoints, checkpoints.parent, disk):
                folder.chmod(0o555)
            says = ("Permission denied", "Permission denied")
        cases = project.drive(disk_cases(disk, tmp_path / "cwd", says), tmp_path / "d")
        check_all(cases)
        assert file_states(checkpoints) == kept
    finally:
        if root:
            subprocess.run(["umount", "-l", str(disk)])
        else:
            for folder in (disk, disk / "done", disk / "done" / "checkpoints"):
                folder.chmod(0o755)
