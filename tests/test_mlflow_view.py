"""The MLflow UI link of a search (its saved view), the experiment kind, readable run names."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

mlflow = pytest.importorskip("mlflow")

from reidsearch.config import ObjectiveConfig  # noqa: E402
from reidsearch.search.keys import (  # noqa: E402
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    VIEW_TAG_PREFIX,
)
from reidsearch.search.results.run_names import readable_run_name, short_value  # noqa: E402
from reidsearch.search.results.store import get_or_create_experiment  # noqa: E402
from reidsearch.search.results.ui_view import search_view  # noqa: E402


def _store(tmp_path) -> tuple[str, object]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return uri, mlflow.tracking.MlflowClient(tracking_uri=uri)


def _search(client, experiment_id: str, folder: str, objective: ObjectiveConfig) -> str:
    """A parent run and two trials, tagged and logged as the tracker does."""
    parent = client.create_run(
        experiment_id,
        run_name=folder,
        tags={
            "reidsearch.kind": "search",
            "reidsearch.objective": objective.model_dump_json(),
            "reidsearch.experiment_dir": f"/runs/{folder}",
        },
    ).info.run_id
    for trial_id, lam in (("aaaa0001", 2.5), ("aaaa0002", 7.0)):
        run = client.create_run(
            experiment_id,
            run_name=trial_id,
            tags={
                "mlflow.parentRunId": parent,
                "reidsearch.kind": "trial",
                "reidsearch.trial_id": trial_id,
            },
        ).info.run_id
        client.log_param(run, "searched.model.lam", str(lam))
        client.log_param(run, "searched.optim.lr", "0.001")
        client.log_param(run, "model.depth", "2")  # a fixed setting: not a column
        client.log_metric(run, "score", lam / 10)
    return parent


def test_the_link_opens_the_search_sorted_by_its_objective(tmp_path):
    uri, client = _store(tmp_path)
    experiment_id = get_or_create_experiment(client, "exp", uri)
    older = _search(client, experiment_id, "s-old", ObjectiveConfig())
    newest = _search(client, experiment_id, "s-new", ObjectiveConfig(metric="loss"))

    view = search_view(uri)  # the newest search of the newest experiment
    assert view.parent_run_id == newest and view.experiment_id == experiment_id
    url = urlsplit(view.url("http://127.0.0.1:5123"))
    assert (url.scheme, url.netloc, url.path) == ("http", "127.0.0.1:5123", "/")
    route, _, query = url.fragment.partition("?")
    assert route == f"/experiments/{experiment_id}/runs"
    assert parse_qs(query) == {
        "workflowType": ["machine_learning"],
        "viewStateShareKey": [f"reidsearch-{newest}"],
    }

    # The experiment tag the key names holds the view: a saved-view envelope around the state.
    tags = client.get_experiment(experiment_id).tags
    envelope = json.loads(tags[f"{VIEW_TAG_PREFIX}reidsearch-{newest}"])
    assert envelope["name"] == "reidsearch s-new" and isinstance(envelope["createdAt"], int)
    state = json.loads(envelope["state"])
    assert state["searchFilter"] == f"tags.`mlflow.parentRunId` = '{newest}'"
    assert state["orderByKey"] == "metrics.`score`"
    assert state["orderByAsc"] is True  # the loss is minimised: lowest first
    columns = [
        "metrics.`score`",
        "metrics.`scored_rank1`",
        "metrics.`scored_mINP`",
        "metrics.`scored_mAP`",
        "params.`searched.model.lam`",
        "params.`searched.optim.lr`",
    ]
    assert state["selectedColumns"] == columns
    assert state["columnOrder"] == ["attributes.`Run Name`", *columns]
    assert set(state["columnWidths"]) == set(state["columnOrder"])
    # The filter MLflow is given selects exactly this search's trials.
    found = client.search_runs([experiment_id], filter_string=state["searchFilter"])
    assert {r.data.tags["reidsearch.trial_id"] for r in found} == {"aaaa0001", "aaaa0002"}
    assert all(r.data.tags["mlflow.parentRunId"] == newest for r in found)

    # An older search by its folder name: maximised, so highest first.
    older_view = search_view(uri, "exp", "s-old")
    assert older_view.parent_run_id == older and older_view.state["orderByAsc"] is False
    assert f"{VIEW_TAG_PREFIX}reidsearch-{older}" in client.get_experiment(experiment_id).tags


def test_experiments_are_marked_as_model_training(tmp_path):
    uri, client = _store(tmp_path)
    new_id = get_or_create_experiment(client, "new", uri)
    assert client.get_experiment(new_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    # The tag and its value are what the installed MLflow UI reads (its bundled JavaScript): an
    # MLflow that renamed either would show our experiments as GenAI ones again.
    bundle = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    scripts = " ".join(p.read_text(errors="ignore") for p in bundle.glob("main.*.js"))
    assert f'"{EXPERIMENT_KIND}"' in scripts and EXPERIMENT_KIND_TAG in scripts

    old_id = client.create_experiment("existing")  # made before reidsearch marked experiments
    assert EXPERIMENT_KIND_TAG not in client.get_experiment(old_id).tags
    assert get_or_create_experiment(client, "existing", uri) == old_id
    assert client.get_experiment(old_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND

    chosen = client.create_experiment("chosen", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    get_or_create_experiment(client, "chosen", uri)  # a kind someone chose is kept
    assert client.get_experiment(chosen).tags[EXPERIMENT_KIND_TAG] == "genai_development"


def test_readable_run_names():
    searched = {"model.lam": 4.5213, "loss.label_smoothing": 0.19, "optim.lr": 4.8e-4}
    assert readable_run_name("latf", searched, "53803dfb") == (
        "latf lam=4.52 ls=0.19 lr=4.8e-4 · 53803dfb"
    )
    # A searched head replaces the fixed one; ints, strings and large numbers stay short.
    name = readable_run_name("latf", {"model.head": "latfpp", "epochs": 30, "x.y": 12345.6}, "t1")
    assert name == "latfpp epochs=30 y=1.2e4 · t1"
    # Two keys with the same abbreviation are spelled out; long names are cut before the id.
    name = readable_run_name("latf", {"a.lam": 1.0, "b.lam": 2.0}, "t2")
    assert name == "latf a.lam=1 b.lam=2 · t2"
    long = readable_run_name("latf", {f"k.p{i}": 0.123456 for i in range(20)}, "t3")
    assert long.endswith("… · t3") and len(long) <= 80 + len(" · t3")
    assert [short_value(v) for v in (0.0, 1e-5, True, "bnneck", 0.3)] == [
        "0",
        "1e-5",
        "True",
        "bnneck",
        "0.3",
    ]


def test_reidsearch_ui_prints_the_link_of_the_newest_search(tmp_path, monkeypatch, capsys):
    from reidsearch import cli

    started = []
    monkeypatch.setattr(cli.os, "execv", lambda path, command: started.append(command))
    uri, client = _store(tmp_path)
    assert cli.main(["ui", "--tracking-uri", uri, "--port", "5123"]) == 0
    assert "no search to show yet" in capsys.readouterr().out  # and the UI starts anyway
    experiment_id = get_or_create_experiment(client, "exp", uri)
    parent = _search(client, experiment_id, "s-1", ObjectiveConfig())
    assert cli.main(["ui", "--tracking-uri", uri, "--port", "5123", "--search", "s-1"]) == 0
    out = capsys.readouterr().out
    assert (
        f"http://127.0.0.1:5123/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
        f"&viewStateShareKey=reidsearch-{parent}" in out
    )
    assert started[-1][started[-1].index("--backend-store-uri") + 1] == uri
    assert cli.main(["ui", "--tracking-uri", uri, "--search", "nope"]) == 2  # named, not found
