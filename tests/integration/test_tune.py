"""``pagellm tune`` end to end on the default model (CPU): real ``pagellm serve`` trials driven
by the bench client, the study persisted and resumed, the best config written and loaded by
``pagellm serve --config``, the report with its Pareto PNG and the baseline comparison; and an
impossible SLO ends with a clear message naming it (the trial stopped after its first
request)."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest
import yaml

from tests.helpers.server import DrainedOutput, free_port, stop_server

pytestmark = pytest.mark.slow

SERVE_ARGS = "--max-model-len 256 --kv-cache-memory-bytes 16777216"
WORKLOAD = ["--num-prompts", "4", "--random-input-len", "8", "--random-output-len", "4",
            "--request-rate", "inf"]
KNOBS = ["--knob", "max_num_seqs=1:4", "--knob", "block_size=8,16"]


def _tune(*args: str, timeout_s: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pagellm.entrypoints.cli.main", "tune",
                           "default", "--serve-args", SERVE_ARGS, *WORKLOAD, *args],
                          env={**os.environ, "PYTHONPATH": os.getcwd()}, capture_output=True,
                          text=True, timeout=timeout_s)


def _study(study_dir):
    import optuna
    return optuna.load_study(study_name="pagellm-tune",
                             storage=f"sqlite:///{study_dir / 'study.db'}")


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    baseline = root / "online_chat.yaml"     # the seed's online_chat numbers (001 §4.1)
    baseline.write_text("max-num-seqs: 64\nscheduler-delay-factor: 0.05\n"
                        "enable-prefix-caching: true\n")
    done = _tune(*KNOBS, "--n-trials", "2", "--slo", "e2el_p99_ms=600000", "--study-dir",
                 str(root / "study"), "--baseline-config", str(baseline), "--html")
    assert done.returncode == 0, done.stdout + done.stderr
    return root / "study", done


def test_trials_ran_and_were_persisted(tuned):
    study_dir, done = tuned
    trials = _study(study_dir).trials
    assert [trial.state.name for trial in trials] == ["COMPLETE", "COMPLETE"]
    for trial in trials:
        assert set(trial.params) == {"max_num_seqs", "block_size"}
        (run,) = trial.user_attrs["runs"]
        assert run["completed"] == 4 and run["failed"] == 0 and not run["violated"]
        assert trial.value == pytest.approx(run["goodput"]) and trial.value > 0
        log = (study_dir / "trials" / f"trial_{trial.number}.log").read_text()
        assert "Serving default on http://127.0.0.1:" in log
    assert "best: trial" in done.stdout and "command: pagellm serve default" in done.stdout


def test_best_config_report_and_pareto_plot(tuned):
    study_dir, _ = tuned
    study = _study(study_dir)
    config = yaml.safe_load((study_dir / "best_config.yaml").read_text())
    assert config == {"model": "default", "max-model-len": 256,
                      "kv-cache-memory-bytes": 16777216,
                      "max-num-seqs": study.best_params["max_num_seqs"],
                      "block-size": study.best_params["block_size"]}
    report = (study_dir / "report.md").read_text()
    assert f"Trial {study.best_trial.number}: goodput" in report
    assert report.count("| COMPLETE |") == 2
    assert "## Comparison with the guide's preset" in report
    assert "| goodput (req/s) |" in report and "baseline online_chat.yaml" in report
    assert "![pareto.png](pareto.png)" in report
    assert (study_dir / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert (study_dir / "pareto.png").stat().st_size > 10_000
    assert "<table>" in (study_dir / "report.html").read_text()
    assert "max-num-seqs: 64" in (study_dir / "baseline.yaml").read_text()


def test_serve_loads_the_best_config_and_flags_override_it(tuned):
    study_dir, _ = tuned
    block_size = yaml.safe_load((study_dir / "best_config.yaml").read_text())["block-size"]
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pagellm.entrypoints.cli.main", "serve", "--config",
         str(study_dir / "best_config.yaml"), "--port", str(port), "--served-model-name",
         "tuned", "--disable-log-stats"],
        env={**os.environ, "PYTHONPATH": os.getcwd()}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    proc.stdout = DrainedOutput(proc.stdout)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(proc, base)
        assert httpx.get(base + "/v1/models").json()["data"][0]["id"] == "tuned"
        metrics = httpx.get(base + "/metrics").text
        assert f'block_size="{block_size}"' in metrics            # from the file
        done = httpx.post(base + "/v1/completions", timeout=120,
                          json={"model": "tuned", "prompt": "Hi", "max_tokens": 2})
        assert done.status_code == 200
    finally:
        assert stop_server(proc) == 0


def _wait_healthy(proc, base: str, timeout_s: float = 180) -> None:
    import time
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError("the server did not become healthy")


def test_resume_adds_trials_and_a_second_start_is_refused(tuned):
    study_dir, _ = tuned
    refused = _tune(*KNOBS, "--n-trials", "1", "--slo", "e2el_p99_ms=600000", "--study-dir",
                    str(study_dir), "--no-baseline")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "already holds a study of 2 trials: pass --resume" in refused.stderr
    other = _tune(*KNOBS, "--n-trials", "1", "--slo", "e2el_p99_ms=1000", "--study-dir",
                  str(study_dir), "--no-baseline", "--resume")
    assert other.returncode == 2 and "cannot resume the study" in other.stderr
    resumed = _tune(*KNOBS, "--n-trials", "1", "--slo", "e2el_p99_ms=600000", "--study-dir",
                    str(study_dir), "--no-baseline", "--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert len(_study(study_dir).trials) == 3
    assert "3 trials in" in resumed.stdout
    assert (study_dir / "report.md").read_text().count("| COMPLETE |") == 3


def test_an_impossible_slo_names_it_without_a_traceback(tmp_path):
    done = _tune("--knob", "max_num_seqs=1:4", "--n-trials", "1", "--slo",
                 "ttft_p99_ms=0.001", "--slo", "e2el_p99_ms=600000", "--study-dir",
                 str(tmp_path / "study"))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert ("pagellm tune: error: no configuration met the SLOs: ttft_p99_ms=0.001 was "
            "broken by 1 of 1 measured trials") in done.stderr
    assert "e2el_p99_ms" not in done.stderr.split("error:")[1]
    (trial,) = _study(tmp_path / "study").trials
    assert trial.state.name == "PRUNED"
    (run,) = trial.user_attrs["runs"]
    assert run["early_stopped"] and run["completed"] < run["num_requests"] == 4
    assert (tmp_path / "study" / "report.md").exists()
    assert not (tmp_path / "study" / "best_config.yaml").exists()


@pytest.mark.parametrize("args, message", [
    (["--slo", "ttft_p99=5"], "--slo takes METRIC_STAT_ms=BOUND"),
    (["--knob", "max_num_seq=1:3"], "did you mean 'max_num_seqs'"),
    (["--serve-args", "--max-num-seqs abc"], "--serve-args: argument --max-num-seqs"),
    (["--knob", "max_num_seqs", "--serve-args", "--max-num-seqs 4"],
     "--knob max_num_seqs is also fixed by --serve-args"),
    (["--time-budget", "soon"], "invalid duration 'soon'"),
])
def test_bad_tune_flags_are_one_line_errors(tmp_path, capsys, args, message):
    from pagellm.entrypoints.cli.main import main
    with pytest.raises(SystemExit) if args[0] == "--time-budget" else _no_raise():
        status = main(["tune", "default", "--study-dir", str(tmp_path), *args])
        assert status == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "study.db").exists()


def _no_raise():
    import contextlib
    return contextlib.nullcontext()
