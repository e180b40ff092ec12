"""The checkpoint location tagged for ``export --best`` opens from another process: Ray reports
checkpoint paths inside its filesystem (``bucket/prefix/...``), without the Train storage URI's
scheme or ``?query`` (an S3-compatible endpoint), and both must come back."""

from __future__ import annotations

from reidsearch import storage
from reidsearch.search.results.best_trial import checkpoint_location, fetch_checkpoint_file
from tests.cluster_harness import s3_fixture  # noqa: F401 - the `s3` fixture

QUERY = "endpoint_override=127.0.0.1:9000&scheme=http"


def test_the_storage_query_goes_back_at_the_end_as_storage_join_puts_it():
    runs = f"s3://bucket/runs?{QUERY}"
    where = checkpoint_location(runs, "bucket/runs/t/ck_1")
    assert where == f"s3://bucket/runs/t/ck_1?{QUERY}"
    assert where == storage.join(runs, "t", "ck_1")
    assert storage.join(where, "checkpoint.pt") == f"s3://bucket/runs/t/ck_1/checkpoint.pt?{QUERY}"
    assert (
        checkpoint_location("s3://bucket/runs", "bucket/runs/t/ck_1") == "s3://bucket/runs/t/ck_1"
    )


def test_a_checkpoint_on_an_s3_endpoint_named_in_the_query_is_fetched(s3, tmp_path, monkeypatch):
    for key, value in s3.env.items():  # credentials only: the endpoint is the URI's own
        if key != "AWS_ENDPOINT_URL":
            monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("REIDSEARCH_CACHE", str(tmp_path / "cache"))
    host = s3.endpoint.removeprefix("http://")
    runs = f"{s3.uri('runs-ck')}?endpoint_override={host}&scheme=http"
    storage.write_bytes(storage.join(runs, "t", "ck_1", "checkpoint.pt"), b"weights")
    reported = f"{s3.bucket}/runs-ck/t/ck_1"  # as Ray reports it: no scheme, no query
    copy = fetch_checkpoint_file(checkpoint_location(runs, reported))
    assert copy.read_bytes() == b"weights"
