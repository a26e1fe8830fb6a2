{# The scratch project's data.py, with the tokenizer of the pretrained model instead of a
   char or BPE tokenizer made from the text: only these blocks differ. #}
{% extends "template/_tasks/language-modeling/data.py" %}
{% block docstring %}
"""Data for language modelling: the built-in text, or your UTF-8 text file of any size.

Your data: one UTF-8 text file. Its end (data.val_split of it) is held out for validation;
training draws random windows of block_size tokens from the text before it, never across
into it, and evaluation uses train.eval_batches batches of windows spread over the held-out
text. The text is tokenised by the pretrained model's own tokenizer (model.pretrained),
which is saved with the checkpoint.

A text of more than CACHE_MIN_BYTES is encoded once, into a token file in the output folder
(runs/.token-cache/) named after a hash of the text's bytes, the split and the model.
Later runs read their windows from it, so neither the memory nor the start of a run grows
with the corpus; a token file that fails its checks is encoded again.
"""
{% endblock %}
{% block imports %}
from . import pretrained
from .config import Config
{% endblock %}
{% block described %}
                f"{text.path}: {before + held:,} tokens (the model's tokenizer, "
{% endblock %}
{% block new_tokenizer %}
def new_tokenizer(text: Text, cuts: list[int], cfg: Config) -> BPETokenizer:
    """model.pretrained's tokenizer, adding no special tokens (a beginning-of-text token
    at the start of each piece): the text is one stream of tokens."""
    settings = pretrained.tokenizer_settings(cfg.model.pretrained)
    if settings["vocab_size"] > 2**16:
        raise pretrained.ModelError(
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
