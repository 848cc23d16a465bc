"""skivcnf.dask: a fitted imputer mapped over the partitions of Dask arrays and DataFrames."""

import pickle
import warnings

import numpy as np
import pandas as pd
import pytest

from skivcnf import IVCNFImputer

from .helpers import TINY_IMPUTER as TINY
from .helpers import diabetes_with_holes
from .test_imputer_mixed import mixed_table, with_holes

da = pytest.importorskip("dask.array")
dd = pytest.importorskip("dask.dataframe")
skdask = pytest.importorskip("skivcnf.dask")

#: A row's draws depend on its key alone; a batch of another size may round a float32 sum
#: differently (as in test_drawing): a few roundings on values of order one standard deviation.
FLOAT32_NOISE = 1e-5


@pytest.fixture(scope="module")
def data():
    _, X_missing, _, _ = diabetes_with_holes(n_rows=90)
    X_missing[3] = X_missing[40]  # a repeated row, in another partition: its copies must still differ
    return X_missing, np.isnan(X_missing)


@pytest.fixture(scope="module")
def fitted(data):
    return IVCNFImputer(**{**TINY, "n_draws": 8}).fit(data[0])


@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("distributed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                      worker_dashboard_address=None) as local, distributed.Client(local) as client:
            yield client


@pytest.mark.parametrize("rows", [90, 31, 7])
def test_an_array_gives_the_in_memory_imputations_whatever_the_chunks(data, fitted, rows):
    X, mask = data
    sd = np.nanstd(X, axis=0)
    lazy = skdask.transform(fitted, da.from_array(X, chunks=(rows, 4)))  # columns split too: brought together
    assert isinstance(lazy, da.Array) and lazy.chunks[0] == da.from_array(X, chunks=rows).chunks[0]
    out = lazy.compute()
    np.testing.assert_allclose(out / sd, fitted.transform(X) / sd, rtol=0, atol=FLOAT32_NOISE)
    np.testing.assert_array_equal(out[~mask], X[~mask])
    copies = skdask.sample_multiple_imputations(fitted, da.from_array(X, chunks=(rows, 10)), 3, proper=False)
    assert isinstance(copies, da.Array) and copies.shape == (3, *X.shape)
    in_memory = fitted.sample_multiple_imputations(X, 3, proper=False)
    np.testing.assert_allclose(copies.compute() / sd, in_memory / sd, rtol=0, atol=FLOAT32_NOISE)
    assert not np.array_equal(in_memory[:, 3], in_memory[:, 40])


def test_the_model_is_one_task_of_the_graph(data, fitted):
    X, _ = data
    model_size = len(pickle.dumps(fitted))
    for partitions in (2, 30):
        graph = dict(skdask.transform(fitted, da.from_array(X, chunks=len(X) // partitions)).__dask_graph__())
        assert len(pickle.dumps(graph)) < 1.5 * model_size  # not a copy per partition


def test_two_workers_of_a_local_cluster_agree_with_memory(data, fitted, cluster):
    X, _ = data
    sd = np.nanstd(X, axis=0)
    frame = pd.DataFrame(X, columns=[f"x{j}" for j in range(X.shape[1])], index=np.arange(1000, 1000 + len(X)))
    lazy = dd.from_pandas(frame, npartitions=4)
    out = skdask.transform(fitted.set_output(transform="default"), lazy)
    assert list(out.divisions) == list(lazy.divisions)
    computed = out.compute()  # by the cluster: the client is the default scheduler
    assert list(computed.index) == list(frame.index) and list(computed.columns) == list(frame.columns)
    np.testing.assert_allclose(computed.to_numpy() / sd, fitted.transform(X) / sd, rtol=0, atol=FLOAT32_NOISE)
    workers = cluster.run(lambda dask_worker: len(dask_worker.data) >= 0)
    assert len(workers) == 2
    copies = skdask.sample_multiple_imputations(fitted, lazy, 2, proper=False).compute()
    assert list(copies.columns) == ["imputation", *frame.columns]
    by_copy = copies.reset_index().sort_values(["imputation", "index"])
    np.testing.assert_allclose(by_copy[frame.columns].to_numpy().reshape(2, *X.shape) / sd,
                               fitted.sample_multiple_imputations(X, 2, proper=False) / sd, rtol=0, atol=FLOAT32_NOISE)


def test_a_mixed_frame_keeps_its_dtypes():
    truth = mixed_table(n=120)
    missing, mask = with_holes(truth)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        imputer = IVCNFImputer(**TINY).set_output(transform="pandas").fit(missing)
    source = dd.from_pandas(missing, npartitions=3)  # Dask reads object columns of strings as its string dtype
    lazy = skdask.transform(imputer, source)
    out = lazy.compute()
    assert dict(lazy.dtypes) == dict(source.dtypes) == dict(out.dtypes)
    expected = imputer.transform(missing)
    labels = ["tier", "sign", "flag", "count"]
    pd.testing.assert_frame_equal(out[labels].astype(object), expected[labels].astype(object))
    copies = skdask.sample_multiple_imputations(imputer, dd.from_pandas(missing, npartitions=3), 2, proper=False)
    computed = copies.compute()
    assert computed["tier"].dtype == source["tier"].dtype and computed["count"].dtype == "Int64"
    assert set(computed["tier"].dropna()) <= {"low", "mid", "high", "unused"}
    observed = ~mask[:, missing.columns.get_loc("sign")]
    for _, copy in computed.groupby("imputation"):
        assert (copy["sign"].to_numpy()[observed] == missing["sign"].to_numpy()[observed]).all()


def test_errors_name_the_problem(data, fitted):
    X, _ = data
    lazy = da.from_array(X, chunks=30)
    with pytest.raises(ValueError, match="proper=True.*pass proper=False"):
        skdask.sample_multiple_imputations(fitted, lazy, 2)
    with pytest.raises(TypeError, match=r"skivcnf\.dask\.transform"):
        fitted.transform(lazy)
    with pytest.raises(TypeError, match=r"fit trains on a table in memory.*X\.compute\(\)"):
        IVCNFImputer(**TINY).fit(lazy)
    with pytest.raises(TypeError, match="Dask array or DataFrame, got ndarray"):
        skdask.transform(fitted, X)
    with pytest.raises(ValueError, match="2-D"):
        skdask.transform(fitted, da.from_array(X[:, 0], chunks=30))
    with pytest.raises(ValueError, match="column named 'imputation'"):
        frame = pd.DataFrame(X[:, :2], columns=["imputation", "y"])
        skdask.sample_multiple_imputations(IVCNFImputer(**TINY).fit(frame), dd.from_pandas(frame, npartitions=2), 2,
                                           proper=False)
    with pytest.raises(Exception, match="not fitted"):
        skdask.transform(IVCNFImputer(), lazy)


def test_dask_ml_parallel_post_fit(data, fitted):
    wrappers = pytest.importorskip("dask_ml.wrappers")
    X, _ = data
    wrapped = wrappers.ParallelPostFit(IVCNFImputer(**{**TINY, "n_draws": 8})).fit(X)
    out = wrapped.transform(da.from_array(X, chunks=25))
    assert isinstance(out, da.Array)
    np.testing.assert_allclose(out.compute(), fitted.transform(X), rtol=0, atol=FLOAT32_NOISE * np.nanstd(X))


def test_empty_partitions_and_integer_category_codes():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=60), "k": rng.choice([3, 5, 7], size=60)})
    imputer = IVCNFImputer(**TINY, categorical_features=["k"]).fit(frame.assign(x=frame.x.mask(frame.index % 5 == 0)))
    missing = frame.assign(x=frame.x.mask(frame.index % 5 == 0))  # k (numpy ints) has no missing entry
    lazy = dd.from_pandas(missing, npartitions=3)
    filtered = lazy.map_partitions(lambda part: part[part.index >= 40], meta=lazy._meta)  # two partitions empty
    out = skdask.transform(imputer, filtered).compute()
    assert list(out.index) == list(range(40, 60)) and out["k"].dtype == missing["k"].dtype
    np.testing.assert_allclose(out.to_numpy(dtype=float), imputer.set_output(transform="default")
                               .transform(missing.iloc[40:]).astype(float), rtol=0, atol=FLOAT32_NOISE * 10)
    copies = skdask.sample_multiple_imputations(imputer, filtered, 2, proper=False).compute()
    assert len(copies) == 40 and set(copies["k"]) <= {3, 5, 7}
    array = da.from_array(missing.to_numpy(), chunks=20)
    kept = array[array[:, 1] > 100]  # no row: every block is empty, with unknown sizes
    assert skdask.transform(imputer, kept).compute().shape == (0, 2)
