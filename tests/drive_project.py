"""Run commands of an installed project, then optionally its own tests, all in one process.

    python drive_project.py PACKAGE '{"script": "/venv/bin/my-project",
        "commands": [["train", "--max-steps", "50"], ["evaluate"]], "pytest": true}'

Each command runs as its console script would: `sys.argv` is set (argv[0] is the script)
and the project's `cli.main` is called, so what `main` does with a user's mistake (one line,
exit code 2) is what is tested. A command's stdout and stderr are captured apart: Python
warnings and Lightning's log records included, and after them what the processes it starts
(torchrun's workers, Lightning's other ranks) write to the file descriptors they share with
it. Its exit code is that of the SystemExit it raised (an uncaught exception: its traceback
on stderr and exit code 1, as the interpreter does). torch (and lightning) is imported once
instead of once per command. The last line printed is JSON:

    {"commands": [{"code": 0, "stdout": "...", "stderr": "...", "seconds": 1.2}, ...],
     "pytest": exit code or null, "pytest_output": "..."}
"""

import contextlib
import io
import json
import os
import sys
import tempfile
import time
import traceback
from importlib import import_module


class Switch:
    """A stream that writes wherever it points now: handlers that kept a reference to
    sys.stderr when they were made (Lightning's logging) follow it into each capture."""

    encoding, errors = "utf-8", "strict"

    def __init__(self, target):
        self.target = target

    def write(self, text):
        return self.target.write(text)

    def flush(self):
        self.target.flush()

    def isatty(self):
        return False  # as under subprocess capture: no progress bars


real_stdout = sys.stdout
sys.stdout, sys.stderr = Switch(sys.stdout), Switch(sys.stderr)


@contextlib.contextmanager
def descriptors_captured():
    """What child processes (torchrun's workers, Lightning's other ranks) write to file
    descriptors 1 and 2, which they share with this process as with a console script's."""
    files = [tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace") for _ in (1, 2)]
    saved = [os.dup(1), os.dup(2)]
    sys.__stdout__.flush()
    sys.__stderr__.flush()
    os.dup2(files[0].fileno(), 1)
    os.dup2(files[1].fileno(), 2)
    texts = ["", ""]
    try:
        yield texts
    finally:
        sys.__stdout__.flush()
        sys.__stderr__.flush()
        for fd, copy in zip((1, 2), saved, strict=True):
            os.dup2(copy, fd)
            os.close(copy)
        for i, file in enumerate(files):
            file.seek(0)
            texts[i] = file.read()
            file.close()


def run_command(main, argv, script):
    stdout, stderr = io.StringIO(), io.StringIO()
    sys.stdout.target, sys.stderr.target = stdout, stderr
    sys.argv = [script, *argv]
    start = time.perf_counter()
    code = 0
    try:
        with descriptors_captured() as children:
            try:
                main()
            except SystemExit as exit_:
                if isinstance(exit_.code, str):
                    stderr.write(exit_.code + "\n")
                    code = 1
                else:
                    code = exit_.code or 0
            except BaseException:  # what the interpreter would print, and its exit code
                traceback.print_exc(file=stderr)
                code = 1
    finally:
        sys.stdout.target, sys.stderr.target = real_stdout, sys.__stderr__
    return {
        "code": code,
        "stdout": stdout.getvalue() + children[0],
        "stderr": stderr.getvalue() + children[1],
        "seconds": time.perf_counter() - start,
    }


def main():
    package, spec = sys.argv[1], json.loads(sys.argv[2])
    script = spec.get("script", package.replace("_", "-"))
    cli_main = import_module(f"{package}.cli").main
    results = [run_command(cli_main, argv, script) for argv in spec.get("commands", [])]
    report = {"commands": results, "pytest": None, "pytest_output": ""}
    if spec.get("pytest"):
        import pytest

        output = io.StringIO()
        sys.stdout.target = sys.stderr.target = output
        try:
            report["pytest"] = int(pytest.main(["-q", "-p", "no:cacheprovider", "tests"]))
        finally:
            sys.stdout.target, sys.stderr.target = real_stdout, sys.__stderr__
        report["pytest_output"] = output.getvalue()
    real_stdout.write("\n" + json.dumps(report) + "\n")
    real_stdout.flush()


if __name__ == "__main__":
    main()
