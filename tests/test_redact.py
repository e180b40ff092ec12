"""No credential in what is printed or logged: URI passwords and credential query values are
masked in MLflow params, the resolved config, the dry-run plan and the CLI's lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from reidsearch.redact import MASK, mask_secrets, mask_uri

REPO = Path(__file__).resolve().parents[1]
SECRET_URI = "s3://b/x?access_key=AKID&secret_key=SK9&endpoint_override=minio:9000&region=eu"


def test_a_uri_password_is_masked_the_user_and_host_kept() -> None:
    assert mask_uri("http://user:secret@host:5000") == "http://user:***@host:5000"
    assert mask_uri("postgresql://me:p%40ss@db:5432/mlflow") == "postgresql://me:***@db:5432/mlflow"
    # An object store's user name is its access key; an unescaped '/' hides nothing.
    assert mask_uri("s3://AKID:ab/cd@bucket/runs") == "s3://***:***@bucket/runs"


@pytest.mark.parametrize(
    "key",
    [
        "access_key",
        "secret_key",
        "session_token",
        "password",
        "token",
        "X-Amz-Signature",
        "X-Amz-Credential",
        "X-Amz-Security-Token",
        "sig",
        "sas_token",
        "account_key",
        "client_secret",
    ],
)
def test_each_credential_query_value_is_masked(key: str) -> None:
    masked = mask_uri(f"s3://bucket/path?region=us-east-1&{key}=VALUE42&scheme=http")
    assert masked == f"s3://bucket/path?region=us-east-1&{key}={MASK}&scheme=http"


@pytest.mark.parametrize(
    "plain",
    [
        "s3://bucket/runs?endpoint_override=localhost:9000&region=us-east-1&scheme=http",
        "http://127.0.0.1:5000",
        "sqlite:////home/me/mlflow.db",
        "file:///mnt/shared/runs",
        "/data/market1501",
        "gs://bucket/latfpp",
    ],
)
def test_nothing_is_masked_in_a_plain_uri(plain: str) -> None:
    assert mask_uri(plain) == plain == mask_secrets(plain)


def test_uris_inside_messages_and_settings_are_masked() -> None:
    message = f"{SECRET_URI}: data.root: cannot open (OSError: {SECRET_URI}). Try again"
    masked = mask_secrets(message)
    assert "SK9" not in masked and "AKID" not in masked
    assert masked.startswith("s3://b/x?access_key=***&secret_key=***&endpoint_override=minio:9000")
    assert masked.endswith("&region=eu). Try again")  # the sentence's punctuation is kept
    settings = {"data": {"root": SECRET_URI, "height": 224}, "uris": ["http://u:pw@h", ("x",)]}
    assert mask_secrets(settings) == {
        "data": {"root": mask_uri(SECRET_URI), "height": 224},
        "uris": ["http://u:***@h", ("x",)],
    }


def test_mlflow_params_and_resolved_config_hold_no_secret() -> None:
    from reidsearch.config import TrialConfig
    from reidsearch.search.driver.logged import flatten_config

    cfg = TrialConfig.model_validate(
        {"data": {"root": SECRET_URI, "layout": "market1501"}, "model": {"weights": SECRET_URI}}
    )
    flat = flatten_config(cfg)
    assert not [k for k, v in flat.items() if "SK9" in v or "AKID" in v]
    assert flat["data.root"] == mask_uri(SECRET_URI) and "minio:9000" in flat["model.weights"]
    assert "SK9" not in str(mask_secrets(cfg.model_dump()))  # the resolved_config.json artifact
    assert cfg.data.root == SECRET_URI  # what is used to connect is untouched


def test_the_dry_run_plan_shows_no_password() -> None:
    from reidsearch.search.driver.plan import SearchPlan

    plan = SearchPlan(
        experiment_dir="s3://b/runs/quick-1?secret_key=SK9",
        tracking_uri="http://u:pw@h:5000",
        experiment="reid",
        max_concurrent=2,
        local_cpus=4,
    )
    text = plan.describe()
    assert "pw" not in text and "SK9" not in text
    assert "http://u:***@h:5000" in text and plan.tracking_uri == "http://u:pw@h:5000"


def test_cli_dry_run_prints_no_credential(tmp_path: Path, monkeypatch, capsys) -> None:
    from reidsearch.cli import main

    monkeypatch.chdir(tmp_path)
    code = main(
        [
            "run",
            str(REPO / "search_spaces" / "quickstart.yaml"),
            "--dry-run",
            "--address",
            "local",
            "--tracking-uri",
            "http://u:pw@h:5000",
            "--data",
            SECRET_URI,
            "--storage",
            "s3://b/runs?access_key=AKID&secret_key=SK9",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "SK9" not in out and "AKID" not in out and ":pw@" not in out
    assert "http://u:***@h:5000" in out and "endpoint_override=minio:9000" in out
