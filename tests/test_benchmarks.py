"""Every benchmark runs at its smallest size, so none rots (their figures: benchmarks/README.md).

bench_faults and gpu_check have their own tests (test_bench_faults.py, test_gpu_check.py).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(script: str, *args: str, timeout: int = 300) -> str:
    run = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout


def test_bench_eval_smallest() -> None:
    out = _run(
        "bench_eval.py",
        *("--queries", "48", "--gallery", "400", "--dim", "16", "--ids", "12", "--repeats", "1"),
        *("--paths", "compact", "dense", "sorted"),
    )
    assert "(a) evaluate()" in out and "(a0) the query x gallery matmul alone" in out
    assert out.count("(same metrics)") == 3  # every counting path gave the same metrics
    assert "max |CMC diff| 0.00e+00" in out  # and the argsort loop agrees
    assert "(c) re-ranking" in out


def test_bench_synth_cache_smallest() -> None:
    out = _run(
        "bench_synth_cache.py", "--ids", "4", "--images-per-camera", "2", "--size", "32", "16"
    )
    generated = re.search(r"generate market1501: (\d+) images", out)
    parsed = re.search(r"parse: (\d+) rows", out)
    assert generated and parsed, out
    assert int(parsed[1]) == int(generated[1]) > 0  # the parser found every image written
    rates = [float(r.replace(",", "")) for r in re.findall(r"([\d,.]+) images/s", out)]
    assert len(rates) == 3 and all(rate > 0 for rate in rates), out


def test_bench_train_smallest() -> None:
    out = _run(
        "bench_train.py",
        *("--backbone", "vit_tiny_patch16_224", "--depth", "1", "--height", "32", "--width", "16"),
        *("--p", "2", "--k", "2", "--steps", "1", "--warmup", "1", "--ids", "6"),
    )
    rows = {
        name.strip(): (float(rate), float(ms))
        for name, rate, ms in re.findall(
            r"^(model only|reidsearch|reference.*?)\s+([\d.]+)\s+([\d.]+)", out, re.M
        )
    }
    assert set(rows) == {"model only", "reidsearch", "reference (2 workers)"}, out
    for rate, ms in rows.values():  # images/s x step time = the batch (P x K = 4 images)
        assert rate * ms / 1000 == pytest.approx(4, rel=0.02)
    ratio = re.search(r"reidsearch / reference: ([\d.]+)x", out)
    assert ratio, out
    expected = rows["reidsearch"][0] / rows["reference (2 workers)"][0]
    assert float(ratio[1]) == pytest.approx(expected, rel=0.05)  # the ratio of the table's rows


@pytest.mark.cluster  # starts its own local Ray (run with the other Ray-heavy tests, last)
def test_bench_startup_smallest() -> None:
    out = _run(
        "bench_startup.py",
        *("--trials", "2", "--epochs", "1", "--concurrent", "1", "--runners", "trial_process"),
        *("--small-data",),
        timeout=600,
    )
    per_trial = re.findall(r"trial_process: start-up ([\d.]+) s; trial wall time ([\d.]+) s", out)
    summary = re.search(
        r"trial_process: median start-up ([\d.]+) s per trial of ([\d.]+) s .*whole search "
        r"([\d.]+) s",
        out,
    )
    assert len(per_trial) == 2 and summary, out  # one line per trial, and the summary
    startup, wall, search = map(float, summary.groups())
    starts, walls = ([float(t[i]) for t in per_trial] for i in (0, 1))
    assert startup == pytest.approx(sum(starts) / 2, abs=0.011)  # the median of two (rounded)
    assert wall == pytest.approx(sum(walls) / 2, abs=0.011)
    assert 0 <= startup <= wall <= search  # start-up is part of the trial, the trial of the search
    # One trial at a time: the second starts in the slot the first one's end handed on.
    gaps = re.findall(
        r"trial_process: between trials ([\d.]+) s: a trial ended at ([\d.]+) s, "
        r"the next one's first step at ([\d.]+) s",
        out,
    )
    median = re.search(
        r"trial_process: median between trials ([\d.]+) s \(max ([\d.]+) s, 1 gaps\)", out
    )
    assert len(gaps) == 1 and median, out
    gap, ended, first_step = map(float, gaps[0])
    assert gap == pytest.approx(first_step - ended, abs=0.011) and 0 < gap  # after the end
    assert float(median[1]) == float(median[2]) == gap  # the median and max of one gap
    assert ended < search


def test_bench_startup_hands_each_slot_on_in_order() -> None:
    sys.path.insert(0, str(BENCH))
    from bench_startup import between_trials

    # Two at a time: a and b start first; c takes the slot of the first end (b's), d of a's.
    trials = [
        {"first_step": 0.1, "end": 2.5},  # a
        {"first_step": 0.2, "end": 2.0},  # b
        {"first_step": 2.3, "end": 4.0},  # c
        {"first_step": 2.9, "end": 5.0},  # d
    ]
    gaps = between_trials(trials, concurrent=2)
    assert [(e, f) for e, f, _ in gaps] == [(2.0, 2.3), (2.5, 2.9)]
    assert [round(g, 6) for _, _, g in gaps] == [0.3, 0.4]


@pytest.mark.cluster  # two searches on their own local Ray
def test_bench_search_smallest() -> None:
    out = _run(
        "bench_search.py",
        *("--seeds", "0", "--random-trials", "2", "--tpe-trials", "2", "--epochs", "1"),
        timeout=600,
    )
    curves = {
        name: [(int(b), float(v)) for b, v in re.findall(r"(\d+):([\d.]+)", points)]
        for name, points in re.findall(r"(\w+) best mAP by budget: (.*)", out)
    }
    assert set(curves) == {"random", "tpe_asha"}, out
    for curve in curves.values():  # the best so far, at every trial-epoch of the budget
        assert [b for b, _ in curve] == [1, 2]
        assert all(a[1] <= b[1] for a, b in zip(curve, curve[1:], strict=False))
    seed = re.search(
        r"random best mAP ([\d.]+) after 2 trial-epochs; TPE\+ASHA "
        r"(?:reached it after (\d+) \((\d+)% of that budget\)|never reached it)",
        out,
    )
    summary = re.search(r"needed to match it at 2 trial-epochs: (\S+) over 1 seed", out)
    assert seed and summary, out
    best, tpe = float(seed[1]), curves["tpe_asha"]
    assert best == curves["random"][-1][1]  # random's best is its curve's end
    # The share is where TPE's curve first reaches random's best (values printed to 0.1).
    if seed[2] is None:
        assert summary[1] == "inf%" and tpe[-1][1] <= best + 0.1
    else:
        reached = int(seed[2])
        assert summary[1] == f"{seed[3]}%" and int(seed[3]) == round(100 * reached / 2)
        assert tpe[reached - 1][1] >= best - 0.1
        assert reached == 1 or tpe[reached - 2][1] <= best + 0.1


def test_best_by_budget_counts_every_trial_epoch_in_time_order() -> None:
    sys.path.insert(0, str(BENCH))
    from bench_search import best_by_budget, budget_to_reach

    trial_a = [(10, 1, 0.2), (30, 2, 0.1)]
    trial_b = [(20, 1, 0.3), (40, 2, 0.5)]
    curve = best_by_budget([trial_a, trial_b])
    assert curve == [(1, 0.2), (2, 0.3), (3, 0.3), (4, 0.5)]
    assert budget_to_reach(curve, 0.3) == 2 and budget_to_reach(curve, 0.9) is None


def test_share_to_match_reads_random_searchs_best_at_each_budget() -> None:
    sys.path.insert(0, str(BENCH))
    from bench_search import share_to_match

    random_curve = [(1, 0.1), (2, 0.4), (3, 0.4), (4, 0.6)]
    tpe_curve = [(1, 0.4), (2, 0.5), (3, 0.5), (4, 0.5)]
    assert share_to_match(random_curve, tpe_curve, 2) == 0.5  # 0.4 reached after 1 of 2
    assert share_to_match(random_curve, tpe_curve, 4) == float("inf")  # 0.6: never


def test_search_grid_report_reads_each_pair_against_random_of_its_seed(capsys) -> None:
    sys.path.insert(0, str(BENCH))
    from search_grid import report, space_for

    done = {
        ("wide", "random+none", 0): [(1, 0.1), (2, 0.4), (3, 0.4), (4, 0.6)],
        ("wide", "random+none", 1): [(1, 0.2), (2, 0.2), (3, 0.3), (4, 0.3)],
        ("wide", "tpe+asha", 0): [(1, 0.4), (2, 0.5), (3, 0.5), (4, 0.5)],
        ("wide", "tpe+asha", 1): [(1, 0.1), (2, 0.3), (3, 0.3), (4, 0.3)],
        ("wide", "gp+asha", 2): [(1, 0.9)],  # no random run of seed 2: not compared
    }
    report(done, [2, 4], 4)
    out = capsys.readouterr().out
    lines = {line.split(" over ")[0]: line for line in out.splitlines() if " over " in line}
    # random search's own line: where it first reached its best after each budget
    assert "[0, 1]: " in lines["grid wide random+none"]
    assert (
        "at 2: 75% (100%, 50%); 4: 88% (100%, 75%) trial-epochs" in lines["grid wide random+none"]
    )
    # TPE reached 0.4 after 1 of 2 (seed 0) and 0.2 after 2 of 2 (seed 1); never 0.6 (inf)
    assert (
        "at 2: 75% (50%, 100%); 4: never (never, 50%) trial-epochs" in lines["grid wide tpe+asha"]
    )
    assert "gp+asha: no seed with a random + none run" in out
    # samplers that refuse conditional parameters search the same keys, unconditionally
    assert "when" in space_for("quick", "tpe")["loss.triplet_margin"]
    assert space_for("quick", "gp").keys() == space_for("quick", "tpe").keys()
    assert "when" not in space_for("wide", "gp")["loss.triplet_margin"]
    assert len(space_for("wide", "tpe")) >= 8


def test_random_search_is_optunas_random_sampler(tmp_path) -> None:
    from optuna.samplers import RandomSampler

    import reidsearch
    from reidsearch.internals.ray_internals import optuna_search_study
    from reidsearch.search.driver.searcher import build_searcher
    from tests.test_search_e2e import _write_space

    space = reidsearch.load_space(
        _write_space(
            tmp_path / "rand.yaml",
            searcher="random",
            trials=3,
            search={"optim.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
        )
    )
    limiter = build_searcher(space, max_concurrent=1)
    assert isinstance(optuna_search_study(limiter.searcher).sampler, RandomSampler)


@pytest.mark.cluster  # a search on its own local Ray
def test_bench_front_asha_smallest() -> None:
    out = _run("bench_front_asha.py", "--trials", "3", "--epochs", "2", timeout=600)
    head = re.search(
        r"(\d+) trials of (\d+) epochs \((\d+) trial-epochs\); (\d+) on the final", out
    )
    assert head, out
    trials, epochs, full, on_front = map(int, head.groups())
    assert (trials, epochs, full) == (3, 2, 6) and 1 <= on_front <= 3
    lines = re.findall(
        r"(front ASHA|ASHA on mAP alone): stopped (\d+) trial\(s\), (\d+) of (\d+) trial-epochs "
        r"\((\d+)% saved\); (\d+) of them ended on the final front",
        out,
    )
    assert [line[0] for line in lines] == ["front ASHA", "ASHA on mAP alone"], out
    for _, stopped, used, total, saved, wrong in lines:
        stopped, used, total, saved, wrong = map(int, (stopped, used, total, saved, wrong))
        assert total == full and trials <= used <= full  # every trial runs its first epoch
        assert saved == round(100 * (1 - used / full))
        assert wrong <= stopped <= trials and wrong <= on_front
        assert (stopped == 0) == (used == full)  # a stop is an epoch not run


def test_bench_node_setup_dry_run_prints_cluster_yamls_command() -> None:
    import yaml

    cluster = yaml.safe_load((BENCH.parent / "cluster.yaml").read_text())
    (expected,) = [c for c in cluster["setup_commands"] if "pip install" in c]
    lines = _run("bench_node_setup.py", "--dry-run", "--warm-repeats", "3").splitlines()
    assert lines[1] == expected  # the command is cluster.yaml's, byte for byte
    assert "--filter 'dir-merge,- .gitignore'" in lines[2] and "$HOME/reidsearch/" in lines[2]
    assert lines[3].startswith("cold: a brand-new venv") and "each of 3 runs" in lines[4]


def test_bench_node_setup_reads_the_branch_and_the_ratio() -> None:
    sys.path.insert(0, str(BENCH))
    from bench_node_setup import branch_of, executed_pip, summarize

    trace = "+ python -c 'import torch, faiss'\n+ pip install -q --no-deps -e /h/reidsearch\n"
    assert branch_of(executed_pip(trace)) == "light"
    assert branch_of(executed_pip("+ pip install -q -e '/h/reidsearch[gpu]'")) == "heavy"
    assert branch_of(executed_pip("pip: command not found")) == "none"
    assert summarize(300.0, [5.0, 7.0, 6.0]) == {
        "cold_s": 300.0, "warm_median_s": 6.0, "warm_s": [5.0, 7.0, 6.0], "ratio": 50.0
    }
