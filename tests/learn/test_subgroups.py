"""Per-subgroup evaluation: metrics equal scikit-learn's on the subgroup's rows, small cells
never leave the node, bad settings are refused with what is wrong."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, roc_auc_score

from cordiale.cli.subgroups import parse_subgroups
from cordiale.core.codec import encode_message
from cordiale.core.errors import ConfigError
from cordiale.core.messages import Content, Envelope, Message
from cordiale.core.records import ConfigRecord, check_name
from cordiale.data.catalog import get_dataset
from cordiale.data.features import Standardizer
from cordiale.data.local import build_site_dataset
from cordiale.learn.models import ModelSpec, build_model, get_weights, set_weights
from cordiale.learn.study import StudySpec
from cordiale.learn.subgroups import (
    SUPPRESSED_KEY,
    SubgroupSpec,
    cell_name,
    parse_cell_name,
    suppressed_cells,
)
from cordiale.learn.trainer import TrainConfig, predict_proba
from cordiale.node.runtime import NodeRuntime
from cordiale.sim.runner import DataSource, SimulationSpec, prepare_sites, simulate

AGE_BANDS = (30.0, 40.0)
MIN_CELL = 5


def _bands(age: np.ndarray) -> np.ndarray:
    """The reference banding, written independently: [-inf, 30), [30, 40), [40, inf)."""
    cut = pd.cut(age, [-np.inf, 30, 40, np.inf], right=False, labels=["<30", "30-40", ">=40"])
    return np.asarray(cut, dtype=object)


@pytest.fixture(scope="module")
def simulation():
    spec = SimulationSpec(
        source=DataSource(dataset="pima"),
        sites=2,
        rounds=3,
        model=ModelSpec(kind="logreg"),
        train=TrainConfig(lr=0.1),
        pooled=False,
        subgroups=SubgroupSpec(("Age", "Pregnancies"), {"Age": AGE_BANDS}, MIN_CELL),
    )
    _, sites = prepare_sites(spec)
    return sites, simulate(spec, sites=sites)


def _site_probs(sites, weights):
    """Each site's test probabilities from the final weights, scaled as the pooled rows are
    (federated scaling equals pooled scaling)."""
    scaler = Standardizer.fit(np.concatenate([d.x_train for d in sites.values()]))
    model = build_model(ModelSpec(kind="logreg"), 8, seed=0)
    set_weights(model, weights)
    return {s: predict_proba(model, scaler.transform(d.x_test)) for s, d in sites.items()}


def test_subgroup_metrics_equal_scikit_learn_on_the_rows_of_the_reporting_sites(simulation):
    # Prepare
    sites, result = simulation
    probs = _site_probs(sites, result.federated.weights)
    report = result.federated.evaluation
    cells = {
        "Age": {s: _bands(d.subgroups_test["Age"].astype(float)) for s, d in sites.items()},
        "Pregnancies": {
            s: np.asarray([str(int(v)) for v in d.subgroups_test["Pregnancies"]], dtype=object)
            for s, d in sites.items()
        },
    }

    def small(rows, y):
        return min(int(rows.sum()), int(y[rows].sum()), int((1 - y[rows]).sum())) < MIN_CELL

    # Execute / Assert: no small cell is reported, and the cells a site held back are, together,
    # not small either (else subtracting the reported ones from its whole histogram shows them);
    # a cell big enough is held back only when that needed it
    checked = 0
    for column, by_site in cells.items():
        for site, values in by_site.items():
            y = sites[site].y_test
            reported = report.per_site_subgroups[site][column]
            primary = {v for v in set(values) if small(values == v, y)}
            held = set(values) - set(reported)
            assert primary <= held and held <= set(report.suppressed.get(column, ()))
            union = np.isin(values, list(held))
            assert not union.any() or not small(union, y) or not reported
            if not primary or not small(np.isin(values, list(primary)), y):
                assert held == primary, (site, column)
        # ... and the pooled metrics are scikit-learn's on the reporting sites' rows
        for value, metrics in report.subgroups[column].items():
            reporting = [s for s in sites if value in report.per_site_subgroups[s][column]]
            mask = {s: by_site[s] == value for s in reporting}
            p = np.concatenate([probs[s][mask[s]] for s in reporting])
            y = np.concatenate([sites[s].y_test[mask[s]] for s in reporting])
            assert metrics["n"] == len(y)
            assert metrics["auc"] == pytest.approx(roc_auc_score(y, p), abs=2e-3)
            assert metrics["accuracy"] == pytest.approx(accuracy_score(y, p >= 0.5), abs=1e-9)
            checked += 1
    assert checked >= 4  # several cells were reported, so the comparison means something
    assert report.suppressed  # and some were too small


def test_results_json_carries_subgroups_per_site_and_suppressed(simulation):
    _, result = simulation
    out = result.to_json()
    assert out["config"]["subgroups"]["min_cell"] == MIN_CELL
    assert out["subgroups"].keys() == {"Age", "Pregnancies"}
    assert list(out["subgroups"]["Age"]) == [
        v for v in ("<30", "30-40", ">=40") if v in out["subgroups"]["Age"]
    ]
    assert out["suppressed"] == result.federated.evaluation.suppressed
    for site, info in out["per_site"].items():
        assert info["subgroups"] == result.federated.evaluation.per_site_subgroups[site]
    last = out["rounds"][-1]
    assert last["subgroups"]["Age"].keys() == out["subgroups"]["Age"].keys()


def _evaluate_task(config: dict, stage: str = "evaluate") -> Message:
    weights = get_weights(build_model(ModelSpec(), 8, seed=0))  # the node's default model
    env = Envelope(study_id="s", round=1, stage=stage, sender="hub", recipient="site-0")
    return Message(env, Content(arrays={"weights": weights}, config=ConfigRecord(config)))


@pytest.fixture(scope="module")
def site():
    """One site holding the whole Pima table, as a node builds it from its file."""
    entry = get_dataset("pima")
    return build_site_dataset(
        entry.load(), entry.contract, site="site-0", test_fraction=0.2, seed=0
    )


def test_a_cell_below_min_cell_never_leaves_the_node_and_is_listed_as_suppressed(site):
    # Prepare: women of 50 and over are too few at this site to report (counted independently);
    # the smallest other band must then be held back too, or the whole histogram minus the
    # reported bands would be theirs
    ds = site
    spec = SubgroupSpec(("Age",), {"Age": (30.0, 40.0, 50.0)}, min_cell=10)
    bands = pd.cut(
        ds.subgroups_test["Age"].astype(float),
        [-np.inf, 30, 40, 50, np.inf],
        right=False,
        labels=["<30", "30-40", "40-50", ">=50"],
    )
    counts = pd.crosstab(bands, ds.y_test)  # negatives, positives per band
    assert counts.loc[">=50"].min() < 10 <= counts.drop(">=50").to_numpy().min()
    assert counts.loc["30-40"].sum() < counts.loc["40-50"].sum() < counts.loc["<30"].sum()
    node = NodeRuntime("site-0", ds)

    # Execute
    reply = node.handle(_evaluate_task(spec.to_config()))

    # Assert: the small cell and the secondary one are named as suppressed, with no histogram
    # and no count; what the hub can subtract is not small
    content = reply.content
    assert content.error is None
    sent = {cell_name("Age", v) for v in ("<30", "40-50")}
    held = [cell_name("Age", v) for v in ("30-40", ">=50")]
    assert set(content.arrays) == {"histogram", *sent}
    assert content.config.get_str_list(SUPPRESSED_KEY) == held
    assert set(content.metrics) == {"num_examples"}  # the whole test set's size only
    for v in ("<30", "40-50"):
        cell = content.arrays[cell_name("Age", v)]
        assert [int(cell["neg"].sum()), int(cell["pos"].sum())] == counts.loc[v].tolist()
    whole = content.arrays["histogram"]
    rest = [
        int(whole[k].sum()) - sum(int(content.arrays[n][k].sum()) for n in sent)
        for k in ("neg", "pos")
    ]
    assert min(rest) >= 10
    wire = encode_message(reply)
    assert all(wire.count(name.encode()) == 1 for name in held)  # in the suppressed list only


def test_a_node_refuses_a_missing_column_and_a_min_cell_below_the_floor(site):
    node = NodeRuntime("site-0", site)
    config = SubgroupSpec(("Ethnicity",)).to_config()
    for stage in ("stats", "evaluate"):
        error = node.handle(_evaluate_task(config, stage)).content.error
        assert error is not None and "'Ethnicity'" in error.message
        assert "not in this site's data" in error.message
    # a hub asking for smaller cells than the floor is refused by the node itself
    hostile = {"evaluation.subgroups": '{"columns": ["Age"], "bands": {}, "min_cell": 1}'}
    error = node.handle(_evaluate_task(hostile)).content.error
    assert error is not None and "min_cell must be at least 5" in error.message


def _spec(**evaluation):
    contract = get_dataset("pima").contract.model_dump(mode="json", exclude_none=True)
    return {
        "study": {"name": "s", "purpose": "p", "sites": ["a"], "rounds": 1},
        "data": {"dataset": "pima", "contract": contract},
        "evaluation": evaluation,
    }


@pytest.mark.parametrize(
    ("evaluation", "expected"),
    [
        ({"subgroups": ["Age"], "min_cell": 3}, "min_cell must be at least 5; got 3"),
        ({"min_cell": 4}, "min_cell must be at least 5; got 4"),
        ({"subgroups": ["Age"], "bands": {"Age": [40, 30]}}, "bands.Age must increase strictly"),
        ({"subgroups": ["Age"], "bands": {"Age": []}}, "bands.Age needs at least one edge"),
        ({"subgroups": ["Age"], "bands": {"BMI": [30]}}, "names 'BMI', which is not in"),
        ({"subgroups": ["Age", "Age"]}, "lists a column more than once"),
        ({"subgroups": ["BMI"]}, "'BMI' is a float field of the contract; give its bands"),
    ],
)
def test_bad_subgroup_settings_are_refused_with_what_is_wrong(evaluation, expected):
    with pytest.raises(ConfigError, match="evaluation") as e:
        StudySpec.parse(_spec(**evaluation))
    assert expected in str(e.value)


def test_good_subgroup_settings_reach_the_round_loop_and_the_command_line_agrees():
    spec = StudySpec.parse(_spec(subgroups=["Age", "Pregnancies"], bands={"Age": [30, 40]}))
    config = spec.federation_config("x")
    assert config.subgroups == SubgroupSpec(("Age", "Pregnancies"), {"Age": (30.0, 40.0)}, 10)
    assert parse_subgroups(["Age:30,40", "Pregnancies"], 10) == config.subgroups
    with pytest.raises(ConfigError, match="bands must be numbers"):
        parse_subgroups(["Age:thirty"], 10)


def test_a_simulation_names_a_subgroup_column_the_data_lacks():
    spec = SimulationSpec(source=DataSource(dataset="pima"), subgroups=SubgroupSpec(("sex",)))
    with pytest.raises(ConfigError, match=r"subgroup column\(s\) 'sex' not in pima"):
        prepare_sites(spec)


@given(st.text(min_size=1, max_size=6), st.text(max_size=6))
def test_cell_names_are_valid_record_keys_and_read_back(column, value):
    name = cell_name(column, value)
    assert check_name(name, "ArrayRecord") == name
    assert parse_cell_name(name) == (column, value)


@settings(max_examples=60, deadline=None)
@given(
    labels=st.lists(st.booleans(), min_size=60, max_size=200),
    columns=st.integers(min_value=2, max_value=3),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_nothing_the_hub_can_subtract_describes_a_few_examples_of_a_class(labels, columns, seed):
    """For any data: every reported cell, every column's held-back cells together, and the
    difference between any two reported cells of different columns (or a reported cell and the
    whole test set) hold none or at least min_cell examples of each class."""
    rng = np.random.default_rng(seed)
    y = np.asarray(labels)
    cells = {}
    first = rng.integers(0, 3, len(y))
    for c in range(columns):  # three values; later columns near-copies of the first, or not
        flip = rng.random(len(y)) < rng.choice([0.02, 0.05, 0.5])
        values = np.where(flip, (first + 1) % 3, first) if c else first
        for v in range(3):
            cells[(f"c{c}", str(v))] = values == v
    min_cell = 5

    hidden = suppressed_cells(cells, y, min_cell)

    def classes(rows):
        return int((rows & y).sum()), int((rows & ~y).sum())

    def ok(rows):
        return all(n == 0 or n >= min_cell for n in classes(rows))

    shown = {k: r for k, r in cells.items() if k not in hidden}
    for rows in shown.values():
        assert min(classes(rows)) >= min_cell
    for c in range(columns):
        union = np.zeros(len(y), bool)
        for (col, _), rows in cells.items():
            if col == f"c{c}" and (col, _) in hidden:
                union |= rows
        all_hidden = all(k in hidden for k in cells if k[0] == f"c{c}")
        assert not union.any() or min(classes(union)) >= min_cell or all_hidden
    everything = np.ones(len(y), bool)
    for ka, a in shown.items():
        assert ok(a ^ everything)
        for kb, b in shown.items():
            if ka[0] != kb[0]:
                assert ok(a ^ b), (ka, kb)
