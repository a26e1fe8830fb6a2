"""The user's room: what a user changes in model.py and data.py alone trains in both styles.

A text-classification project gets a second input: data.py's dataset yields each text's
length beside its tokens, and model.py's model takes both, fed by step(). Nothing else
changes; the installed project (pip install -e) picks the edits up, and both engines train
the edited model to the same result.
"""

from __future__ import annotations

import pytest
from conftest import assert_learned, evaluations, read_baseline

pytestmark = pytest.mark.slow

# Appended to data.py: the built-in and the user's texts alike go through encode_rows.
LENGTH_IN_DATA = '''

encode_tokens = encode_rows


def encode_rows(texts: list[str], labels: list[str], meta: dict) -> TensorDataset:
    """The tokens, each text's length (a share of max_length), and the labels."""
    tokens, targets = encode_tokens(texts, labels, meta).tensors
    length = (tokens > 0).sum(dim=1, keepdim=True).float() / tokens.shape[1]
    return TensorDataset(tokens, length, targets)
'''

# Appended to model.py: a model with two inputs, and the step() that feeds it.
TWO_INPUTS = '''

class WithLength(nn.Module):
    """The bag of embeddings, plus a term for the text's length: two inputs."""

    def __init__(self, bag: nn.Module, num_classes: int):
        super().__init__()
        self.bag = bag
        self.length = nn.Linear(1, num_classes)

    def forward(self, tokens: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        return self.bag(tokens) + self.length(length)


build_bag = build_model


def build_model(cfg: Config, meta: dict) -> WithLength:
    return WithLength(build_bag(cfg, meta), len(meta["labels"]))


def step(model: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    tokens, length, labels = batch
    logits = model(tokens, length)
    return F.cross_entropy(logits, labels), logits, labels
'''


@pytest.mark.timeout(600)
@pytest.mark.xdist_group("two-inputs")
def test_a_two_input_model_trains_in_both_styles_with_model_py_and_data_py_alone(
    installed_project, tmp_path
):
    finals = {}
    for framework in ("raw", "lightning"):
        combination = {"task": "text-classification", "framework": framework, "hardware": "cpu"}
        installed = installed_project(combination, author_name="Two Inputs")
        package = installed.project / "src" / installed.package
        for name, edit in (("data.py", LENGTH_IN_DATA), ("model.py", TWO_INPUTS)):
            if edit not in (package / name).read_text():
                (package / name).write_text((package / name).read_text() + edit)
        runs = tmp_path / framework
        # Then evaluate rebuilds the edited model from last.ckpt, reads the edited data,
        # and gives the last evaluation's numbers again.
        last = runs / "two" / "checkpoints" / "last.ckpt"
        trained, evaluated = installed.drive(
            ["train", "--accelerator", "cpu", "--max-steps", "100", "--output-dir", str(runs)]
            + ["--name", "two", "train.eval_every=25", "train.patience=0"],
            ["evaluate", "--checkpoint", str(last)],
        )
        trained.check()
        assert "WithLength" in trained.stdout, trained.stdout  # the model of model.py
        rows = evaluations(runs / "two")
        best = max(rows, key=lambda row: row["val/acc"])
        assert_learned("text-classification", best, read_baseline(runs / "two"))
        printed = dict(line.split(": ") for line in evaluated.check().stdout.splitlines())
        for key in ("val/loss", "val/acc"):
            assert float(printed[key]) == pytest.approx(rows[-1][key], abs=2e-4), printed
        finals[framework] = rows[-1]
    # Both styles trained the same edited model on the same batches: alike within 2%.
    for key in ("val/loss", "val/acc"):
        a, b = finals["raw"][key], finals["lightning"][key]
        assert abs(a - b) <= max(0.02 * max(abs(a), abs(b)), 0.005), (key, a, b)
