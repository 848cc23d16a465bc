"""TableEncoder: column kinds, categories, codes, the flow's features, and the table written back."""

import numpy as np
import pandas as pd
import pytest

from skivcnf._encoding import CATEGORICAL, INTEGER, NUMERIC, TableEncoder


def frame_of_every_dtype():
    return pd.DataFrame({
        "cat": pd.Categorical(["b", "a", None, "b"], categories=["b", "a", "unused"], ordered=True),
        "obj": np.array(["x", None, "y", "z"], dtype=object),
        "str": pd.array(["u", "v", None, "u"], dtype="string"),
        "flag": pd.array([True, None, False, True], dtype="boolean"),
        "bool": np.array([True, False, False, True]),
        "Int64": pd.array([1, None, 3, 4], dtype="Int64"),
        "int64": np.array([1, 2, 3, 4], dtype=np.int64),
        "float": [0.5, np.nan, 1.5, 2.5],
        "float32": np.array([0.5, 1.0, np.nan, 2.0], dtype=np.float32),
    })


def test_auto_kinds_follow_the_pandas_dtypes():
    encoder = TableEncoder.fit(frame_of_every_dtype(), "auto", np.nan)
    assert encoder.kinds == (CATEGORICAL,) * 5 + (INTEGER, INTEGER, NUMERIC, NUMERIC)
    categories = [c.tolist() if c is not None else None for c in encoder.categories]
    # A category column keeps its dtype's order (only the categories seen); labels are sorted.
    assert categories[:5] == [["b", "a"], ["x", "y", "z"], ["u", "v"], [False, True], [False, True]]
    assert encoder.widths.tolist() == [1, 3, 1, 1, 1, 1, 1, 1, 1]


def test_arrays_have_categorical_columns_only_by_name():
    X = np.array([[0.0, 1.5], [2.0, np.nan], [np.nan, 1.0], [5.0, 3.0]])
    assert TableEncoder.fit(X, "auto", np.nan).kinds == (NUMERIC, NUMERIC)
    assert TableEncoder.fit(np.nan_to_num(X).astype(int), None, np.nan).kinds == (INTEGER, INTEGER)
    for chosen in ([0], [-2], np.array([True, False])):
        encoder = TableEncoder.fit(X, chosen, np.nan)
        assert encoder.kinds == (CATEGORICAL, NUMERIC)
        assert encoder.categories[0].tolist() == [0.0, 2.0, 5.0] and not encoder.has_labels
        np.testing.assert_array_equal(encoder.codes(X, np.nan)[:, 0], [0, 1, np.nan, 2])


@pytest.mark.parametrize("chosen, match", [
    (["nope"], "names the column 'nope', which is not in X"),
    ([7], "column names or indices"),
    (np.array([True]), "needs 2 entries"),
])
def test_bad_categorical_features_name_the_problem(chosen, match):
    frame = pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0]})
    with pytest.raises(ValueError, match=match):
        TableEncoder.fit(frame, chosen, np.nan)


def test_names_need_a_frame():
    with pytest.raises(ValueError, match="X has no column names"):
        TableEncoder.fit(np.zeros((3, 2)), ["a"], np.nan)


def test_a_column_mixing_types_is_refused():
    frame = pd.DataFrame({"ok": ["a", "b", "c"], "mixed": np.array(["a", 1, None], dtype=object)})
    with pytest.raises(ValueError, match="Column 'mixed' mixes values of types number, str"):
        TableEncoder.fit(frame, "auto", np.nan)


def test_unknown_categories_raise_or_are_missing():
    frame = pd.DataFrame({"c": ["a", "b", "a"], "x": [1.0, 2.0, 3.0]})
    encoder = TableEncoder.fit(frame, "auto", np.nan)
    new = pd.DataFrame({"c": ["b", "zz", None], "x": [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match="Column 'c' has the category 'zz', not seen at fit"):
        encoder.codes(new, np.nan)
    np.testing.assert_array_equal(encoder.codes(new, np.nan, handle_unknown="missing")[:, 0], [1, np.nan, np.nan])


def test_placeholders_beside_pandas_na():
    frame = pd.DataFrame({"s": pd.array(["a", "b", None, "?"], dtype="string"),
                          "f": pd.array([True, None, False, True], dtype="boolean")})
    encoder = TableEncoder.fit(frame, "auto", "?")
    np.testing.assert_array_equal(encoder.codes(frame, "?"), [[0, 1], [1, np.nan], [np.nan, 0], [np.nan, 1]])


def test_labels_in_an_array_are_refused():
    with pytest.raises(ValueError, match="categorical column 1 of an array holds labels"):
        TableEncoder.fit(np.array([[1.0, "a"], [2.0, "b"]], dtype=object), [1], np.nan)


def test_placeholders_of_label_columns_are_missing():
    frame = pd.DataFrame({"c": ["a", "?", "b", None]})
    encoder = TableEncoder.fit(frame, "auto", "?")
    assert encoder.categories[0].tolist() == ["a", "b"]
    np.testing.assert_array_equal(encoder.codes(frame, "?")[:, 0], [0, np.nan, 1, np.nan])


def test_features_and_codes_round_trip():
    encoder = TableEncoder.fit(frame_of_every_dtype(), "auto", np.nan)
    codes = encoder.codes(frame_of_every_dtype(), np.nan)
    features = encoder.expand(codes)
    assert features.shape == (4, 11)
    # The 3-category column is one-hot, all NaN where missing; a filled block decodes to its argmax.
    np.testing.assert_array_equal(features[:, 1:4], [[1, 0, 0], [np.nan] * 3, [0, 1, 0], [0, 0, 1]])
    filled = np.where(np.isnan(features), 0.2, features)
    np.testing.assert_array_equal(encoder.collapse(filled)[~np.isnan(codes)], codes[~np.isnan(codes)])
    np.testing.assert_array_equal(encoder.cell_widths(), [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0])
    # A 0/1 code beyond its range decodes to the nearest category; an integer rounds.
    block = np.array([[1.7, 0.1, 0.9, 0.3, -2.0, 0.6, 3.4, 2.6, 0.0, 0.5, 0.5]])
    assert encoder.collapse(block)[0, :6].tolist() == [1, 1, 0, 1, 1, 3]


@pytest.mark.parametrize("column", list(frame_of_every_dtype().columns))
def test_a_completed_frame_keeps_every_dtype(column):
    frame = frame_of_every_dtype()[[column]]
    encoder = TableEncoder.fit(frame, "auto", np.nan)
    codes = encoder.codes(frame, np.nan)
    mask = np.isnan(codes)
    out = encoder.restore(np.zeros_like(codes), mask, frame, np.ones(1, dtype=bool), frame=True)
    assert out.dtypes.iloc[0] == frame.dtypes.iloc[0]
    pd.testing.assert_series_equal(out[column][~mask[:, 0]], frame[column][~mask[:, 0]])
    if mask.any():  # code 0: the first category seen, or 0 for numbers
        expected = encoder.categories[0][0] if encoder.kinds[0] == CATEGORICAL else 0
        assert out[column][mask[:, 0]].tolist() == [expected]


def test_array_output_holds_labels_as_objects():
    frame = frame_of_every_dtype()[["obj", "float"]]
    encoder = TableEncoder.fit(frame, "auto", np.nan)
    codes = encoder.codes(frame, np.nan)
    out = encoder.restore(np.full_like(codes, 2.0), np.isnan(codes), frame, np.ones(2, dtype=bool))
    assert out.dtype == object and out[:, 0].tolist() == ["x", "z", "y", "z"] and out[1, 1] == 2.0


def test_plain_data_round_trip():
    encoder = TableEncoder.fit(frame_of_every_dtype(), "auto", np.nan)
    copy = TableEncoder.from_dict(encoder.to_dict())
    assert copy.kinds == encoder.kinds
    for mine, theirs in zip(copy.categories, encoder.categories, strict=True):
        assert (mine is None and theirs is None) or (mine.tolist() == theirs.tolist() and mine.dtype == theirs.dtype)
