"""The machinery behind the commands: settings, runs and checkpoints, the resumable loader,
what a run shows. It imports none of your files: engine.py and cli.py hand it what it needs.
"""

import signal
from pathlib import Path


class UserError(Exception):
    """A problem the user can fix (settings, data, a checkpoint, a folder): one line, exit 2."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM stopped training; `checkpoint` (last.ckpt) holds its latest step."""

    def __init__(self, signum: int, checkpoint):
        self.signum, self.checkpoint = signum, checkpoint
        super().__init__(signal.Signals(signum).name)


class Diverged(Exception):
    """The validation loss became nan or inf: the run stops before that model is saved;
    its last.ckpt holds the last good one."""

    def __init__(self, step: int, run_dir):
        self.checkpoint = Path(run_dir, "checkpoints", "last.ckpt")
        super().__init__(
            f"training diverged at step {step}: the validation loss is nan or inf; lower the "
            "learning rate (--lr) or look for extreme values in the data"
        )
