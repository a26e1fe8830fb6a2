"""Run commands of an installed project, then its own tests, all in one process.

    python drive_project.py PACKAGE '[["evaluate", "--checkpoint", "..."], ["predict", ...]]'

Each command goes through the project's Typer app exactly as its console script would, so
torch (and lightning) is imported once instead of once per command. The last line printed
is {"outputs": [what each command printed], "pytest": exit code} as JSON.
"""

import contextlib
import io
import json
import sys
from importlib import import_module

import pytest

package, commands = sys.argv[1], json.loads(sys.argv[2])
app = import_module(f"{package}.cli").app
outputs = []
for command in commands:
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        app(command, standalone_mode=False)
    outputs.append(captured.getvalue())
status = int(pytest.main(["-q", "-p", "no:cacheprovider", "tests"]))
print("\n" + json.dumps({"outputs": outputs, "pytest": status}))
