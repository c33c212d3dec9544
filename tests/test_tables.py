"""CSV tables as people have them (dnnspec/tables.py, data.py, frontend's data statement, export/tabular.py).

The reference for every encoding is written here from the definition (a one-hot column per
sorted category); the exported preprocessing graph is checked against onnxruntime."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from dnnspec import frontend, ir, tables
from dnnspec.data import load_data, read_csv_table
from dnnspec.dataschema import Column, DataSchema, source_with
from dnnspec.errors import DataError, SpecError

HEAD = "diagnosis,size,colour,weight,shape\n"
ROWS = [("benign", 1.5, "red", 10, "round"), ("malignant", 2.5, "blue", 20, "square"),
        ("benign", 0.5, "green", 30, "round"), ("malignant", 3.0, "red", 40, "oval"),
        ("benign", 1.0, "blue", 50, "square")]


def write_table(path, rows=ROWS, head=HEAD):
    path.write_text(head + "".join(",".join(str(c) for c in r) + "\n" for r in rows))
    return path


def vec_model(features=8, classes=2, names=(), loss="cross_entropy", batch=1):
    m = ir.model_from_layers((features,), [("dense", {"units": classes if loss != "mse" else 1}),
                                           *([("softmax", {})] if loss != "mse" else [])],
                             loss=loss, train={"batch": batch})
    if names:
        from dataclasses import replace

        m = replace(m, task=replace(m.task, class_names=tuple(names)))
    return m


def reference_encoding(rows, columns):
    """One-hot by definition: numbers as they are, category k of the sorted vocabulary -> feature k."""
    out = []
    for r in rows:
        feats = []
        for value, col in zip(r, columns):
            if col.kind == "number":
                feats.append(float(value))
            else:
                feats += [1.0 if value == c else 0.0 for c in col.categories]
        out.append(feats)
    return np.asarray(out, np.float32)


# --- reading -----------------------------------------------------------------------------------


def test_text_label_first_column_and_two_text_columns(tmp_path):
    p = write_table(tmp_path / "t.csv")
    d = load_data(f"{p}:label=diagnosis", vec_model(features=8))
    s = d.schema
    assert s.kind == "table" and s.label == ("diagnosis",) and s.class_names == ("benign", "malignant")
    assert [(c.name, c.kind) for c in s.columns] == [("size", "number"), ("colour", "text"), ("weight", "number"),
                                                    ("shape", "text")]
    assert s.columns[1].categories == ("blue", "green", "red") and s.columns[3].categories == ("oval", "round",
                                                                                               "square")
    np.testing.assert_array_equal(d.y_train, [0, 1, 0, 1, 0])
    np.testing.assert_array_equal(d.x_train, reference_encoding([r[1:] for r in ROWS], s.columns))
    assert d.raw_train.shape == (5, 4) and d.raw_train[0, 1] == "red" and d.raw_train[0, 0] == 1.5
    assert d.notes == (f"{p}: the label is column 1 (diagnosis), chosen by label=diagnosis",)


def test_label_by_option_index_flag_and_data_statement_agree(tmp_path):
    p = write_table(tmp_path / "t.csv")
    model = vec_model(features=8)
    want = load_data(f"{p}:label=diagnosis", model)
    for kwargs in ({"source": f"{p}:diagnosis"}, {"source": f"{p}:0"}, {"source": str(p), "label": "diagnosis"}):
        d = load_data(kwargs.pop("source"), model, **kwargs)
        np.testing.assert_array_equal(d.x_train, want.x_train)
        np.testing.assert_array_equal(d.y_train, want.y_train)
    spec = frontend.parse(f'data "{p}" label=diagnosis\ninput [8]\nclasses 2\nlayers {{\n dense 2\n softmax\n}}\n')
    assert spec.data == f"{p}:label=diagnosis"
    np.testing.assert_array_equal(load_data(None, spec, batch=1).x_train, want.x_train)
    with pytest.raises(DataError, match=r"label column is given twice \(label=shape in the source, --label diag"):
        load_data(f"{p}:label=shape", model, label="diagnosis")


def test_default_label_is_the_last_column_and_every_label_message_says_so(tmp_path):
    p = write_table(tmp_path / "t.csv")  # last column: shape (3 texts)
    with pytest.raises(DataError, match=r"the data has 3 classes \(oval, round, square\); the spec says classes 2; "
                                        r"the label is column 5 \(shape\), the last column \(the default; choose "
                                        r"another with label=NAME"):
        load_data(str(p), vec_model(features=7))
    d = load_data(str(p), vec_model(features=7, classes=3))
    assert d.class_names == ("oval", "round", "square")
    with pytest.raises(DataError, match=r"row 3, column 1 \(diagnosis\): label 'malignant' is not one of the classes "
                                        r"benign, malign \(did you mean 'malign'\?\); the label is column 1"):
        load_data(f"{p}:label=diagnosis", vec_model(names=("benign", "malign")))


def test_spec_class_names_map_text_labels_by_name(tmp_path):
    p = write_table(tmp_path / "t.csv")
    d = load_data(f"{p}:label=diagnosis", vec_model(names=("malignant", "benign")))
    np.testing.assert_array_equal(d.y_train, [1, 0, 1, 0, 1])
    assert d.schema.class_names == ("malignant", "benign")


def test_number_labels_are_class_indices_with_positions(tmp_path):
    p = write_table(tmp_path / "n.csv", [(1.0, "a", 0), (2.0, "b", 1), (3.0, "a", 2)], "x,c,y\n")
    with pytest.raises(DataError, match=r"n\.csv: the data has 3 classes \(0, 1, 2\); the spec says classes 2 "
                                        r"\(labels are class indices 0\.\.1; label 2 at row 4\); the label is "
                                        r"column 3 \(y\), the last column"):
        load_data(str(p), vec_model(features=3))
    q = write_table(tmp_path / "f.csv", [(1.0, 0), (2.0, 1.5)], "x,y\n")
    with pytest.raises(DataError, match=r"f\.csv: row 3, column 2 \(y\): label 1\.5 is not a whole number"):
        load_data(str(q), vec_model(features=1))


@pytest.mark.parametrize("cell, message", [
    ("", r"row 4, column 2 \(size\): missing value \(empty\); fill it in or remove the row"),
    ("NA", r"row 4, column 2 \(size\): missing value \(NA\)"),
    ("?", r"row 4, column 2 \(size\): missing value \(\?\)"),
    ("inf", r"row 4, column 2 \(size\): 'inf' is not a finite number, but 80% of this column's cells are numbers"),
    ("big", r"row 4, column 2 \(size\): 'big' is not a finite number"),
])
def test_missing_and_bad_numbers_name_row_and_column(tmp_path, cell, message):
    rows = [list(r) for r in ROWS]
    rows[2][1] = cell
    p = write_table(tmp_path / "t.csv", rows)
    with pytest.raises(DataError, match=message):
        load_data(f"{p}:label=diagnosis", vec_model())


def test_missing_text_cell_and_bad_header_and_ragged_rows(tmp_path):
    rows = [list(r) for r in ROWS]
    rows[4][2] = ""
    p = write_table(tmp_path / "t.csv", rows)
    with pytest.raises(DataError, match=r"row 6, column 3 \(colour\): missing value \(empty\)"):
        load_data(f"{p}:label=diagnosis", vec_model())
    dup = write_table(tmp_path / "dup.csv", ROWS, "diagnosis,size,colour,size,shape\n")
    with pytest.raises(DataError, match=r"row 1: the header names column 2 and column 4 both 'size'"):
        load_data(str(dup), vec_model())
    (tmp_path / "ragged.csv").write_text(HEAD + "benign,1,red,2,round\n\nbenign,1,red,2\n")
    with pytest.raises(DataError, match=r"ragged\.csv: row 4 has 4 cells, but the header has 5 columns"):
        load_data(str(tmp_path / "ragged.csv"), vec_model())


def test_quoted_cells_blank_lines_bom_and_gzip(tmp_path):
    text = '\ufeffname,n,label\n"Smith, J",1,yes\n\n"O""Brien",2,no\n'
    (tmp_path / "q.csv").write_text(text, encoding="utf-8")
    (tmp_path / "q.csv.gz").write_bytes(gzip.compress(text.encode("utf-8")))
    for name in ("q.csv", "q.csv.gz"):
        table = tables.read_table(tmp_path / name)
        assert table.names == ("name", "n", "label") and list(table.rows) == [2, 4]
        assert list(table.columns[0]) == ["Smith, J", 'O"Brien'] and table.kinds == ["text", "number", "text"]


def test_too_many_categories_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(tables, "MAX_CATEGORIES", 3)
    p = write_table(tmp_path / "t.csv", [(f"id{i}", i, "y" if i % 2 else "n") for i in range(6)], "id,x,label\n")
    with pytest.raises(DataError, match=r"column 1 \(id\) holds 6 different texts, more than the 3 a text column"):
        load_data(str(p), vec_model())


def test_numbers_only_tables_keep_the_fast_reader_and_its_checks(tmp_path):
    (tmp_path / "n.csv").write_text("a,b\n1,2\n3,4\n")
    header, table = read_csv_table(tmp_path / "n.csv")
    assert header == ["a", "b"]
    np.testing.assert_array_equal(table, [[1, 2], [3, 4]])
    (tmp_path / "t.csv").write_text("a,b\n1,x\n3,y\n")
    with pytest.raises(DataError, match=r"not a numeric CSV table: column 2 \(b\) holds text"):
        read_csv_table(tmp_path / "t.csv")


# --- the data statement ---------------------------------------------------------------------------


SPEC = "input [8]\nclasses 2\nlayers {{\n dense 2\n softmax\n}}\n{data}\n"


@pytest.mark.parametrize("data, want", [
    ('data "wine.csv" label=quality', "wine.csv:label=quality"),
    ('data "wine.csv" label="wine quality"', "wine.csv:label=wine quality"),
    ('data "wine.csv" label=[t1, t2]', "wine.csv:label=t1,t2"),
    ('data "wine.csv" label=0', "wine.csv:label=0"),
    ('data "photos/" resize=crop', "photos/:resize=crop"),
    ('data "photos"', "photos"),
])
def test_data_statement_options_join_the_source(data, want):
    assert frontend.parse(SPEC.format(data=data)).data == want


@pytest.mark.parametrize("data, message", [
    ('data "photos/" resize=squash', "resize='squash' is not one of fit, crop, pad"),
    ('data spirals label=y', "label= applies to a .csv table, not to spirals"),
    ('data "d.npz" resize=fit', "resize= applies to an image folder, not to d.npz"),
    ('data "t.csv" lable=y', "unknown option 'lable' for data"),
    ('data "t.csv" label=y label=z', "option 'label' of data is given twice"),
    ('data "t.csv" label="a,b"', "label= needs a column name or index, found 'a,b'"),
])
def test_data_statement_option_errors_point_at_the_option(data, message):
    with pytest.raises(SpecError) as e:
        frontend.parse(SPEC.format(data=data), "s.dnn")
    assert e.value.diagnostics[0].message == message
    assert e.value.diagnostics[0].span.line == 7


def test_source_options_on_the_command_line_are_checked(tmp_path):
    p = write_table(tmp_path / "t.csv")
    with pytest.raises(DataError, match=r"unknown option 'lable'; a data file takes label=NAME"):
        load_data(f"{p}:lable=diagnosis", vec_model())
    with pytest.raises(DataError, match="resize= applies to an image folder"):
        load_data(f"{p}:resize=fit", vec_model())
    assert source_with("t.csv", {"label": "y"}) == "t.csv:label=y"


# --- a trained model's schema: evaluation and prediction ----------------------------------------------


def test_trained_schema_finds_columns_by_name_and_unseen_texts_encode_as_zeros(tmp_path):
    p = write_table(tmp_path / "train.csv")
    trained = load_data(f"{p}:label=diagnosis", vec_model()).schema
    # columns in another order, a category never seen in training, the label in the middle
    (tmp_path / "eval.csv").write_text("shape,weight,diagnosis,colour,size\nround,5,malignant,purple,2\n"
                                       "oval,6,benign,red,1\n")
    d = load_data(str(tmp_path / "eval.csv"), vec_model(), schema=trained)
    want = reference_encoding([(2, "purple", 5, "round"), (1, "red", 6, "oval")], trained.columns)
    np.testing.assert_array_equal(d.x_train, want)
    assert d.x_train[0, 1:4].sum() == 0  # purple: all zeros
    np.testing.assert_array_equal(d.y_train, [1, 0])
    (tmp_path / "short.csv").write_text("size,colour,diagnosis\n1,red,benign\n")
    with pytest.raises(DataError, match=r"has no columns 'weight', 'shape'; the model takes size, colour, weight, "
                                        r"shape \(matched by the header's names\)"):
        load_data(str(tmp_path / "short.csv"), vec_model(), schema=trained)


def test_read_inputs_drops_the_label_with_a_note_and_keeps_code_columns_as_text(tmp_path):
    schema = DataSchema("table", ("no", "yes"), (Column("zip", "text", ("02134", "10001")), Column("x")), ("label",))
    (tmp_path / "p.csv").write_text("label,x,zip,extra\nyes,1.5,02134,7\nno,2,99999,8\n")
    rows, notes = tables.read_inputs(tmp_path / "p.csv", schema)
    assert rows.tolist() == [["02134", 1.5], ["99999", 2.0]]  # zip codes stay text: "02134", not 2134
    assert notes == [f"{tmp_path / 'p.csv'}: dropped column 1 (label), the label column",
                     f"{tmp_path / 'p.csv'}: ignored column 4 (extra): not a column the model takes"]
    feeds = tables.onnx_feeds(rows, schema)
    assert feeds["zip"].tolist() == [["02134"], ["99999"]] and feeds["x"].dtype == np.float32
    feeds = tables.onnx_feeds({"x": [1, 2], "zip": ["10001", None]}, schema)
    assert feeds["zip"].tolist() == [["10001"], [""]]
    with pytest.raises(DataError, match="missing column.s. zip"):
        tables.onnx_feeds({"x": [1]}, schema)
    with pytest.raises(DataError, match="column 'x' row 2: missing or not a finite number"):
        tables.onnx_feeds([["02134", 1.0], ["02134", float("nan")]], schema)


# --- the exported preprocessing graph -----------------------------------------------------------------


def test_exported_table_model_takes_raw_columns_and_matches_the_engine(tmp_path):
    import onnx
    import onnxruntime as ort

    from dnnspec.dataschema import attach
    from dnnspec.engine.net import Net
    from dnnspec.export.onnx_export import export

    p = write_table(tmp_path / "t.csv")
    model = vec_model(features=8)
    d = load_data(f"{p}:label=diagnosis", model)
    net = attach(Net(model, seed=3), d.schema)
    path = export(net, tmp_path / "t.onnx")
    proto = onnx.load(path)
    kinds = {i.name: i.type.tensor_type.elem_type for i in proto.graph.input}
    assert kinds == {"size": onnx.TensorProto.FLOAT, "colour": onnx.TensorProto.STRING,
                     "weight": onnx.TensorProto.FLOAT, "shape": onnx.TensorProto.STRING}
    assert any(n.op_type == "OneHotEncoder" and n.domain == "ai.onnx.ml" for n in proto.graph.node)
    meta = {m.key: m.value for m in proto.metadata_props}
    assert DataSchema.from_dict(__import__("json").loads(meta["data_schema"])) == d.schema
    assert __import__("json").loads(meta["class_names"]) == ["benign", "malignant"]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rows = [(1.5, "red", 10.0, "round"), (2.0, "purple", 3.0, "triangle")]  # unseen texts in row 2
    feeds = {"size": np.array([[1.5], [2.0]], np.float32), "colour": np.array([["red"], ["purple"]], object),
             "weight": np.array([[10.0], [3.0]], np.float32), "shape": np.array([["round"], ["triangle"]], object)}
    got = sess.run(["probabilities"], feeds)[0]
    np.testing.assert_allclose(got, net.forward(reference_encoding(rows, d.schema.columns)), atol=1e-6)
    from dnnspec.export.predictor import Predictor

    pred = Predictor(path)
    assert pred.table == d.schema and pred.input_shape == (4,)
    np.testing.assert_allclose(pred.predict(np.array(rows, dtype=object)), got, atol=1e-7)


def test_check_data_says_what_the_table_has(tmp_path, capsys):
    from dnnspec.cli import main

    p = write_table(tmp_path / "t.csv")
    spec = tmp_path / "t.dnn"
    spec.write_text(f'data "{p}" label=diagnosis\ninput [9]\nclasses 2\nlayers {{\n dense 2\n softmax\n}}\n'
                    f'train batch=2\n')
    assert main(["check", str(spec), "--data"]) == 1
    err = capsys.readouterr().err
    assert (f"{p}: the data has 8 features per example (2 number columns, 2 text columns one-hot encoded "
            f"(colour: 3 values, shape: 3 values)); the spec says input [9]: write input [8]") in err
    spec.write_text(spec.read_text().replace("input [9]", "input [8]").replace(" label=diagnosis", ""))
    assert main(["check", str(spec), "--data", str(p), "--label", "diagnosis"]) == 0
    out = capsys.readouterr().out
    assert (f"{p}: the label is column 1 (diagnosis), chosen by label=diagnosis\n"
            f"data {p}: 5 training examples of 8 features (2 number columns, 2 text columns one-hot encoded "
            f"(colour: 3 values, shape: 3 values))\ntraining examples per class: benign 3, malignant 2\n") in out
