{# The scratch project's data.py, with the tokenizer of the pretrained model instead of a
   char or BPE tokenizer made from the text: only these blocks differ. #}
{% extends "template/_tasks/language-modeling/data.py" %}
{% block docstring %}
"""Data for language modelling: the built-in text, or your UTF-8 text file of any size.

Your data: one UTF-8 text file. Its tokens are encoded once: a text of more than
CACHE_MIN_BYTES goes into a token file (uint16) under the output folder,
runs/.token-cache/, named after the file's size and modification time, the split and the
model, which later runs read instead of encoding again. Training draws random windows of
block_size tokens from the training text; evaluation uses train.eval_batches batches of
windows spread over the held-out text. So neither the memory nor the time of a run grows
with the corpus.

The end of the text (val_split of it, or a fold's stretch with --folds) is held out for
validation; no training window overlaps it. The text is tokenised by the pretrained model's
own tokenizer (model.pretrained), which is saved with the checkpoint.
"""
{% endblock %}
{% block imports %}
from .config import Config
from .plumbing import ConfigError, UserError, hub
{% endblock %}
{% block checks %}
{% endblock %}
{% block described %}
                f"{text.path}: {len(tokens):,} tokens (the model's tokenizer, "
{% endblock %}
{% block new_tokenizer %}
def new_tokenizer(text: Text, cuts: list[int], cfg: Config) -> BPETokenizer:
    """model.pretrained's tokenizer, adding no special tokens (a beginning-of-text token
    at the start of each piece): the text is one stream of tokens."""
    settings = hub.tokenizer_meta(cfg.model.pretrained)
    if settings["vocab_size"] > 2**16:
        raise ConfigError(
            f"model.pretrained={cfg.model.pretrained} has {settings['vocab_size']:,} tokens; "
            "the token files hold at most 65,536: pick a model with a smaller vocabulary"
        )
    tokenizer = BPETokenizer.from_json(settings["json"])
    tokenizer.tokenizer.post_processor = None
    return tokenizer


{% endblock %}
{% block made %}
    made = [*signature, cfg.model.pretrained]
{% endblock %}
