"""What `scaffold new` and `scaffold update` do around Copier: the template's source, git.

Nothing here imports Copier, so `scaffold --help` stays quick.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from generator import __version__
from generator.questions import template_root

DISTRIBUTION = "torch-scaffold"
# Where a project made from the installed wheel takes its updates from: the `Source` URL of the
# package metadata ([project.urls] in pyproject.toml), unless this variable names another one.
TEMPLATE_URL_ENV = "TORCH_SCAFFOLD_TEMPLATE_URL"
ANSWERS_FILE = ".copier-answers.yml"
CONFLICT_MARKERS = (b"<<<<<<<", b"=======", b">>>>>>>")


def release_tag(version: str = __version__) -> str:
    """The git tag of a release: v0.1.0."""
    return f"v{version}"


@dataclass(frozen=True)
class Source:
    """What Copier renders from, and what the answers file should record of it."""

    path: Path
    vcs_ref: str | None  # the commit to render, for a git checkout
    published: tuple[str, str] | None  # (git URL, tag) to record, for the wheel's copy
    warning: str | None = None


def template_source() -> Source:
    """The template this `scaffold` carries: a git checkout at its last commit, or the wheel's copy.

    A checkout is rendered at HEAD, without uncommitted changes, so that the `_commit` recorded
    in the answers exists and `copier update` can find it again.
    """
    root = template_root()
    head = None
    if (root / ".git").exists() and shutil.which("git"):
        try:
            head = git(root, "rev-parse", "HEAD")
        except GitError:  # a repository without a commit yet: render the folder as it is
            pass
    if head is not None:
        changed = changed_files(root, "copier.yml", "template")
        warning = None
        if changed:
            warning = (
                f"the template checkout {root} has uncommitted changes ({summary(changed)}); "
                f"rendered its last commit {head[:7]} without them: commit them to include them"
            )
        return Source(root, head, None, warning)
    published = published_template()
    warning = None
    if published is None:
        warning = (
            f"no template URL in the {DISTRIBUTION} package metadata: "
            "`copier update` will not find this project's template"
        )
    return Source(root, None, published, warning)


def published_template() -> tuple[str, str] | None:
    """The public git URL of the template and the tag of this release, from package metadata."""
    url = os.environ.get(TEMPLATE_URL_ENV)
    if not url:
        from importlib.metadata import PackageNotFoundError, metadata

        try:
            entries = metadata(DISTRIBUTION).get_all("Project-URL") or []
        except PackageNotFoundError:
            return None
        urls = dict(entry.split(", ", 1) for entry in entries if ", " in entry)
        url = urls.get("Source")
    return (url, release_tag()) if url else None


def public_url() -> str:
    """The template's git URL, for messages."""
    published = published_template()
    return published[0] if published else "<the template's git URL>"


class SourceError(Exception):
    """The template a project records cannot be updated from; the message says why and how."""


def update_ref(src: str, commit: str, requested: str | None) -> tuple[str | None, str | None]:
    """The template version an update goes to, and a warning to show, if any.

    A local checkout: its last commit (Copier would take the latest tag, a downgrade for a
    project made from a later commit, or HEAD with uncommitted changes, a commit that does
    not exist). A git URL: Copier's choice, the latest release tag. `:current:` keeps the
    project's version, to change answers only.
    """
    if requested == ":current:":
        return commit, None
    if requested:
        return requested, None
    checkout = Path(src).expanduser()
    if not (checkout / ".git").exists():
        return None, None
    try:
        git(checkout, "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}")
    except GitError:
        raise SourceError(
            f"the project records template commit {commit}, which {checkout} does not have "
            f"(made from uncommitted changes?); set _commit in {ANSWERS_FILE} to the commit "
            "it was made from, and commit that"
        ) from None
    head = git(checkout, "rev-parse", "HEAD")
    changed = changed_files(checkout, "copier.yml", "template")
    warning = None
    if changed:
        warning = (
            f"the template checkout {checkout} has uncommitted changes ({summary(changed)}); "
            f"updating to its last commit {head[:7]} without them"
        )
    return head, warning


class AnswersError(Exception):
    """The answers file cannot be read as answers; the message names it and the fix."""


def read_answers(project: Path) -> dict:
    """The answers file's mapping; AnswersError when it is not one (broken by hand or a merge)."""
    path = project / ANSWERS_FILE
    restore = (
        f"fix it, or restore a good version (`git log -p -- {ANSWERS_FILE}` shows them), "
        "then commit"
    )
    try:
        answers = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise AnswersError(f"{path} is not UTF-8 text: {restore}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or "unreadable"
        raise AnswersError(f"{path} is not valid YAML ({problem}{where}): {restore}") from None
    if answers is None:
        return {}
    if not isinstance(answers, dict):
        raise AnswersError(
            f"{path} holds a {type(answers).__name__}, not the answers (`name: value` lines: "
            f"_src_path, _commit and one per question): {restore}"
        )
    return answers


def extras_before_the_question(answers: dict) -> list[str]:
    """The extras of a project made before `extras` was a question: every such project had the
    sweeps and the folds, and a multi-gpu one SLURM scripts."""
    return ["sweeps", "folds"] + (["slurm"] if answers.get("hardware") == "multi-gpu" else [])


def is_local_path(src: str) -> bool:
    """Whether a recorded _src_path is a folder (not a URL like gh:, https://, git@...)."""
    return not (
        re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", src) or src.startswith(("gh:", "gl:", "git@"))
    )


def record_source(project: Path, url: str, ref: str) -> None:
    """Point the answers file at the published template, for a project made from the wheel."""
    path = project / ANSWERS_FILE
    text = path.read_text(encoding="utf-8")
    header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    answers = yaml.safe_load(text)
    answers.update(_src_path=url, _commit=ref)
    body = yaml.safe_dump(answers, allow_unicode=True, default_flow_style=False, width=1000)
    path.write_text(header + body, encoding="utf-8")


def importable_modules() -> list[str]:
    """Top-level names importable here: built-in, standard library, and every sys.path folder.

    The current folder is left out: it is where the project goes, not what it runs with.
    """
    from importlib.machinery import all_suffixes

    names = set(sys.builtin_module_names) | set(sys.stdlib_module_names)
    suffixes = tuple(all_suffixes())
    here = {"", os.getcwd()}
    for folder in sys.path:
        if os.path.abspath(folder) in here or not os.path.isdir(folder):
            continue
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.endswith(suffixes):
                    name = entry.name.partition(".")[0]
                elif entry.is_dir():
                    name = entry.name
                else:
                    continue
                if name.isidentifier():
                    names.add(name)
    return sorted(names)


# --- git -------------------------------------------------------------------------------


class GitError(Exception):
    """A git command failed; the message is its last line of output."""


def git(cwd: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines() or [f"git {args[0]} failed"]
        raise GitError(lines[-1])
    return result.stdout.strip()


def work_tree_of(path: Path) -> Path | None:
    """The top of the git work tree that holds `path` (or its nearest existing parent)."""
    folder = nearest_existing(path)
    if not shutil.which("git") or not folder.is_dir():
        return None
    try:
        return Path(git(folder, "rev-parse", "--show-toplevel"))
    except GitError:
        return None


def is_tracked(repo: Path, name: str) -> bool:
    """Whether git tracks this file of `repo`."""
    try:
        git(repo, "ls-files", "--error-unmatch", "--", name)
    except GitError:
        return False
    return True


def nearest_existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def changed_files(repo: Path, *paths: str) -> list[str]:
    """Files with uncommitted changes (untracked ones included), relative to `repo`."""
    out = subprocess.run(
        ["git", "status", "--porcelain", "-z", "--untracked-files=all", "--", *(paths or ".")],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    top = Path(git(repo, "rev-parse", "--show-toplevel")) if out else repo
    files, skip = [], False
    for entry in out.split("\0"):
        if skip or not entry:  # a rename's second name
            skip = False
            continue
        status, name = entry[:2], entry[3:]
        skip = "R" in status or "C" in status
        files.append(os.path.relpath(top / name, Path(repo).resolve()))
    return files


def summary(names: list[str], shown: int = 4) -> str:
    """'a, b, c and 3 more'."""
    head = ", ".join(names[:shown])
    return head + (f" and {len(names) - shown} more" if len(names) > shown else "")


def make_repository(project: Path, author_name: str, author_email: str, message: str) -> None:
    """`git init` and a first commit of everything, with the author answers as a fallback identity.

    The user's own git identity is used when there is one; their configuration is never changed.
    """
    git(project, "init", "--quiet")
    identity = []
    for key, fallback in (("user.name", author_name), ("user.email", author_email)):
        try:
            git(project, "config", key)
        except GitError:  # not set anywhere: only for this commit
            identity += ["-c", f"{key}={fallback}"]
    git(project, "add", "--all")
    git(project, *identity, "commit", "--quiet", "--no-verify", "--no-gpg-sign", "-m", message)


def conflict_markers(project: Path, files: list[str]) -> list[tuple[str, int, str]]:
    """(file, line number, line) of the first conflict marker in each of these files."""
    found = []
    for name in files:
        path = project / name
        if not path.is_file():
            continue
        if name.endswith(".rej"):
            found.append((name, 1, "(a rejected change: merge it by hand, then delete the file)"))
            continue
        with path.open("rb") as file:
            for number, line in enumerate(file, start=1):
                if line.startswith(CONFLICT_MARKERS):
                    found.append((name, number, line.decode(errors="replace").rstrip()))
                    break
    return found


# The settings file of a generated project: `section:` lines, and under each a setting a line,
# commented out with its default (`  # batch_size: 64  # why`) until the user sets it.
SETTINGS_FILE = "configs/default.yaml"
_SECTION = re.compile(r"([A-Za-z_]\w*):\s*(#.*)?")
_SETTING = re.compile(r"  (# ?)?([A-Za-z_]\w*):( .*)?")


def _settings_lines(text: str) -> list[tuple[str, tuple[str, str] | None, bool]]:
    """Each line, with the (section, key) of the setting it holds, if any, and whether it is
    set (not commented out)."""
    lines, section = [], ""
    for line in text.splitlines():
        if match := _SECTION.fullmatch(line):
            section = match[1]
        elif (match := _SETTING.fullmatch(line)) and section:
            lines.append((line, (section, match[2]), match[1] is None))
            continue
        lines.append((line, None, False))
    return lines


def merge_settings(base: str, ours: str, theirs: str) -> tuple[str, list[str]] | None:
    """The template's new settings file (`theirs`) with the settings the user set in `ours`,
    the file as the old template made it being `base`; and those settings' names. None when
    the user changed more than settings (a comment, a removed line) or set one that the new
    file lacks: a merge for a person to make."""
    old = {key: line for line, key, _ in _settings_lines(base) if key}
    mine, undone = {}, []
    for line, key, is_set in _settings_lines(ours):
        if key and is_set and old.get(key) != line:
            mine[key] = line
            if key not in old:  # a setting the old template did not list
                continue
            line = old[key]
        undone.append(line)
    if undone != base.splitlines():
        return None
    merged, placed = [], set()
    for line, key, _ in _settings_lines(theirs):
        if key in mine:
            line = mine[key]
            placed.add(key)
        merged.append(line)
    if placed != set(mine):
        return None
    names = [f"{section}.{name}" for section, name in mine]
    return "\n".join(merged) + ("\n" if theirs.endswith("\n") else ""), names


def resolve_settings_conflict(project: Path) -> list[str] | None:
    """Resolve a conflict that an update left in the settings file, when the user's only edits
    there are settings: the new file, with them set. Returns their names, or None (the
    conflict stays). Copier records the merge's three sides in git's index (1: the old
    template's file, 2: the user's, 3: the new template's)."""
    sides = [
        subprocess.run(
            ["git", "show", f":{stage}:./{SETTINGS_FILE}"],
            cwd=project,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        for stage in (1, 2, 3)
    ]
    if any(side.returncode != 0 for side in sides):  # not a conflict of the three
        return None
    base, ours, theirs = (side.stdout for side in sides)
    merged = merge_settings(base, ours, theirs)
    if merged is None:
        return None
    text, names = merged
    (project / SETTINGS_FILE).write_text(text, encoding="utf-8")
    git(project, "reset", "--quiet", "--", SETTINGS_FILE)  # the index entry as it was
    return names


def requirements(pyproject: Path) -> set[str] | None:
    """What `pip install -e .` installs from a project's pyproject.toml: its dependencies,
    each extra's, and its commands; None when the file cannot be read (conflict markers)."""
    import tomllib

    try:
        table = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return None
    found = set(table.get("dependencies", []))
    for extra, packages in table.get("optional-dependencies", {}).items():
        found |= {f"{package} (extra {extra})" for package in packages}
    found |= {f"command {name}" for name in table.get("scripts", {})}
    return found


def reinstall_advice(before: set[str] | None, after: set[str] | None) -> str:
    """Whether an updated project needs `pip install -e .` again, and why."""
    command = "pip install -e . (with the extras you use, e.g. '.[dev]')"
    if before is None or after is None:
        return f"pyproject.toml has conflicts: once they are resolved, reinstall: {command}."
    if before == after:
        return "The dependencies are the same: no need to reinstall."
    changes = [f"+{item}" for item in sorted(after - before)]
    changes += [f"-{item}" for item in sorted(before - after)]
    return f"The dependencies changed ({summary(changes)}): reinstall: {command}."
