"""The user's room: what a user changes in model.py alone trains in both engines."""

from __future__ import annotations

import pytest
from conftest import assert_learned, read_baseline, read_metrics

pytestmark = pytest.mark.slow

# Appended to a text-classification project's model.py, and nothing else changed: a model
# with two inputs (the tokens, and the text's length), fed by step().
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
    tokens, labels = batch
    length = (tokens > 0).sum(dim=1, keepdim=True).float() / tokens.shape[1]
    logits = model(tokens, length)
    return F.cross_entropy(logits, labels), logits, labels
'''


@pytest.mark.timeout(600)
@pytest.mark.xdist_group("two-inputs")
def test_a_two_input_model_trains_in_both_engines_with_model_py_alone(installed_project, tmp_path):
    texts = {}
    for framework in ("raw", "lightning"):
        combination = {"task": "text-classification", "framework": framework, "hardware": "cpu"}
        installed = installed_project(combination, author_name="Two Inputs")
        model = installed.project / "src" / installed.package / "model.py"
        if "class WithLength" not in model.read_text():
            model.write_text(model.read_text() + TWO_INPUTS)
        runs = tmp_path / framework
        (trained,) = installed.drive(
            ["train", "--accelerator", "cpu", "--max-steps", "100", "--output-dir", str(runs)]
            + ["--name", "two", "train.eval_every=25"]
        )
        trained.check()
        assert "WithLength: " in trained.stdout, trained.stdout  # the model of model.py
        rows = read_metrics(runs / "two")
        best = max(rows, key=lambda row: row["val/acc"])
        assert_learned("text-classification", best, read_baseline(runs / "two"))
        texts[framework] = (runs / "two" / "metrics.csv").read_text()
    assert texts["raw"] == texts["lightning"]
