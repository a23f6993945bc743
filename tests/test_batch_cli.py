"""``textfleet batch``: a dataset through the engine into part files, equal to ``Engine.embed``.

Runs the command's ``main`` in this process on a few hundred workload texts,
locally (parts, progress, failed rows, reruns) and on Ray Data with a local Ray
(one engine actor), and locally on the whole workload file (slow). All are
compared row for row with ``Engine.embed`` and ``Engine.score`` over the same
texts. On a two-node cluster: tests/test_batch_cluster.py.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import WORKLOAD

from textfleet.batch.files import read_output
from textfleet.cli import main

pytest.importorskip("pyarrow")

ROWS = 200
PART = 64  # rows per part: four parts, the last one short
BAD = {17: 42, 101: None}  # row -> a value that is not a text (null: the key is missing)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, workload_texts) -> tuple[Path, list]:
    """A JSONL file of ROWS rows with ids, two of them bad; and each row's text (or value)."""
    path = tmp_path_factory.mktemp("batch") / "texts.jsonl"
    values = list(workload_texts[:ROWS])
    for row, value in BAD.items():
        values[row] = value
    with open(path, "w", encoding="utf-8") as f:
        for i, value in enumerate(values):
            record = {"id": 1000 + i} if value is None else {"id": 1000 + i, "text": value}
            f.write(json.dumps(record) + "\n")
    return path, values


@pytest.fixture(scope="module")
def reference(engine, dataset) -> np.ndarray:
    _, values = dataset
    good = [v for i, v in enumerate(values) if i not in BAD]
    return engine.embed(good)


def batch(capsys, *args: str) -> tuple[int, str]:
    code = main(["batch", *args])
    return code, capsys.readouterr().err


def check_output(table, values, reference) -> None:
    """Every input row once, in input order, with its id; bad rows carry an error."""
    rows = table.to_pylist()
    assert [r["id"] for r in rows] == [1000 + i for i in range(len(values))]
    good = [r for i, r in enumerate(rows) if i not in BAD]
    assert all(r["error"] is None for r in good)
    got = np.array([r["embedding"] for r in good], dtype=np.float32)
    np.testing.assert_allclose(got, reference, rtol=1e-4, atol=1e-5)
    assert rows[17]["embedding"] is None
    assert rows[17]["error"] == "text: expected a string, got int"
    assert rows[101]["error"] == "text: expected a string, got null"


def test_local_run_equals_engine_embed_and_reports_progress(
    tmp_path, capsys, model_dir, dataset, reference
):
    path, values = dataset
    out = tmp_path / "out.parquet"
    args = [str(model_dir.path), "--input", str(path), "--output", str(out), "--id-column", "id",
            "--rows-per-part", str(PART), "--batch-size", "32"]  # fmt: skip
    code, err = batch(capsys, *args)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [
        "_batch.json",
        *(f"part-{i:05d}.parquet" for i in range(4)),
    ]
    check_output(read_output(out), values, reference)
    assert f"batch: {ROWS}/{ROWS} rows (100%)" in err  # the progress line's last state
    assert f"{ROWS} rows: {ROWS} computed" in err
    assert "2 with an error" in err

    # A rerun computes nothing; with one part gone, only that part.
    code, err = batch(capsys, *args)
    assert code == 0 and "0 computed" in err and "in 4 parts already done" in err
    (out / "part-00001.parquet").unlink()
    code, err = batch(capsys, *args)
    assert code == 0 and f"{PART} computed" in err and "in 3 parts already done" in err
    check_output(read_output(out), values, reference)

    # Other settings are refused, not mixed into the same directory.
    code, err = batch(capsys, *args[:-4], "--rows-per-part", "50")
    assert code == 2 and "rows_per_part=64" in err

    # --strict: an error row makes the exit status 1.
    code, err = batch(capsys, *args, "--strict")
    assert code == 1


def test_jsonl_output_and_bad_options(tmp_path, capsys, model_dir, dataset, reference):
    path, values = dataset
    out = tmp_path / "out.jsonl"
    code, err = batch(capsys, str(model_dir.path), "--input", str(path), "--output", str(out),
                      "--id-column", "id")  # fmt: skip
    assert code == 0, err
    check_output(read_output(out), values, reference)

    code, err = batch(capsys, str(model_dir.path), "--input", str(path), "--output", "x.csv")
    assert code == 2 and "--output: x.csv should end with one of .parquet, .jsonl" in err
    code, err = batch(capsys, str(model_dir.path), "--input", str(path), "--output", str(out),
                      "--pair-column", "doc")  # fmt: skip
    assert code == 2 and "takes single texts" in err
    code, err = batch(capsys, str(model_dir.path), "--input", str(path), "--output", str(out),
                      "--task", "pair-scoring")  # fmt: skip
    assert code == 2 and "has task 'embedding'" in err


def test_pair_scoring_from_csv_equals_engine_score(tmp_path, capsys, cross_encoder_dir):
    from textfleet.engine.engine import Engine

    pairs = [
        ("what is a cat", "a cat is a small animal"),
        ("weather", "it rains today"),
        ("python", "a programming language"),
        ("ray", "a distributed runtime"),
    ] * 5
    path = tmp_path / "pairs.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["qid", "query", "document"])
        w.writerows([(f"q{i}", q, d) for i, (q, d) in enumerate(pairs)])
    out = tmp_path / "scores.parquet"
    args = [str(cross_encoder_dir.path), "--input", str(path), "--output", str(out),
            "--column", "query", "--pair-column", "document", "--id-column", "qid"]  # fmt: skip
    code, err = batch(capsys, *args)
    assert code == 0, err
    rows = read_output(out).to_pylist()
    assert [r["qid"] for r in rows] == [f"q{i}" for i in range(len(pairs))]
    with Engine.load(cross_encoder_dir) as engine:
        expected = engine.score(pairs)
    np.testing.assert_allclose([r["score"] for r in rows], expected, rtol=1e-4, atol=1e-5)

    code, err = batch(capsys, *args[:-4], "--id-column", "qid")
    assert code == 2 and "--pair-column" in err


@pytest.mark.slow
def test_whole_workload_equals_engine_embed_and_reports_progress(
    tmp_path, capsys, model_dir, engine, workload_texts
):
    """The 20,000 workload texts straight from the committed file (``.jsonl.gz``, no
    ids) in four parts: every row, in input order, a finite embedding, with progress
    lines on the way (one every 2 s off a terminal). The run takes minutes on 2
    cores, so ``Engine.embed`` recomputes only a fixed sample of its rows, the
    longest texts among them (a row's result does not depend on the batch it
    joined), and each must equal its row."""
    total = len(workload_texts)
    assert total == 20_000
    out = tmp_path / "workload.parquet"
    code, err = batch(capsys, str(model_dir.path), "--input", str(WORKLOAD), "--output", str(out),
                      "--rows-per-part", "5000")  # fmt: skip
    assert code == 0, err
    done = [int(n) for n in re.findall(rf"^batch: (\d+)/{total} rows", err, re.MULTILINE)]
    assert len(done) >= 3 and done == sorted(done) and done[-1] == total, done
    assert f"{total} rows: {total} computed" in err and "0 with an error" in err
    assert len(list(out.glob("part-*.parquet"))) == 4
    table = read_output(out)
    assert table.num_rows == total and table.column("error").null_count == total
    got = table.column("embedding").combine_chunks().flatten().to_numpy().reshape(total, -1)
    assert np.isfinite(got).all()
    by_length = np.argsort([-len(t) for t in workload_texts], kind="stable")[:50]
    rows = np.union1d(by_length, np.arange(0, total, 20))
    expected = engine.embed([workload_texts[i] for i in rows])
    np.testing.assert_allclose(got[rows], expected, rtol=1e-4, atol=1e-5)


@pytest.fixture
def local_ray():
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


@pytest.mark.slow
def test_ray_data_run_equals_engine_embed(tmp_path, capsys, model_dir, dataset, reference,
                                          local_ray):  # fmt: skip
    """One engine actor on a local Ray (on 2 shared cores, tens of seconds to start)."""
    path, values = dataset
    # Ray Data's JSON reader types each column: keep the good rows only.
    clean = tmp_path / "clean.jsonl"
    clean.write_text(
        "".join(line for i, line in enumerate(path.read_text().splitlines(True)) if i not in BAD)
    )
    out = tmp_path / "out.parquet"
    args = [str(model_dir.path), "--input", str(clean), "--output", str(out), "--id-column", "id",
            "--ray", "--concurrency", "1", "--batch-size", "64"]  # fmt: skip
    code, err = batch(capsys, *args)
    assert code == 0, err
    rows = read_output(out).to_pylist()
    good = [i for i in range(ROWS) if i not in BAD]
    assert [r["id"] for r in rows] == [1000 + i for i in good]
    assert all(r["error"] is None for r in rows)
    got = np.array([r["embedding"] for r in rows], dtype=np.float32)
    np.testing.assert_allclose(got, reference, rtol=1e-4, atol=1e-5)
    assert f"{len(good)} rows: {len(good)} computed" in err

    code, err = batch(capsys, *args)  # complete: nothing to do
    assert code == 0 and "0 computed" in err


def test_model_by_name_from_models_yaml(tmp_path, capsys, model_dir, dataset, engine):
    """MODEL as a models.yaml entry's name: its model_dir and engine settings. Here
    ``on_overflow: error``, so the engine refuses a text past max_length: that row
    gets the engine's message, the rows around it their embeddings."""
    path, values = dataset
    short = [i for i, v in enumerate(values) if isinstance(v, str) and len(v) < 100][:10]
    records = [{"id": 1000 + i, "text": values[i]} for i in short]
    records.insert(5, {"id": -1, "text": "word " * 1000})
    small = tmp_path / "small.jsonl"
    small.write_text("".join(json.dumps(r) + "\n" for r in records))
    config = tmp_path / "models.yaml"
    config.write_text(
        f"models:\n  - name: mini\n    model_dir: {model_dir.path}\n    on_overflow: error\n"
    )
    out = tmp_path / "out.parquet"
    code, err = batch(capsys, "mini", "--config", str(config), "--input", str(small),
                      "--output", str(out), "--id-column", "id")  # fmt: skip
    assert code == 0, err
    assert "11 rows: 11 computed" in err and "1 with an error" in err
    rows = read_output(out).to_pylist()
    assert [r["id"] for r in rows] == [r["id"] for r in records]
    assert rows[5]["embedding"] is None
    assert rows[5]["error"].startswith("text: has 1002 tokens; the model takes at most")
    got = np.array([r["embedding"] for i, r in enumerate(rows) if i != 5], dtype=np.float32)
    expected = engine.embed([values[i] for i in short])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)

    code, err = batch(capsys, "other", "--config", str(config), "--input", str(small),
                      "--output", str(out))  # fmt: skip
    assert code == 2 and "no model named 'other'; models: mini" in err
