"""The search of ``pagellm tune``: an Optuna study whose trials each serve one configuration
and measure it on the workload (``trial_runner.measure``).

- Objective: goodput (requests/s meeting every SLO) at the best request rate whose run met
  every SLO; throughput and P50/P95/P99 latencies are kept with each trial.
- Early stopping: a run is cut as soon as a percentile SLO is certainly broken
  (``slo.EarlyStop``), and a trial whose first (lowest) rate breaks an SLO is *pruned*
  (Optuna's PRUNED state): it counts as infeasible and costs only the requests it took to
  know. A configuration that cannot start (a constraint checked before launch, such as
  tp × dp above the GPU count) is pruned without a launch; a server that fails to start is a
  FAIL trial with its log's tail. A configuration already measured in the study is not
  launched again: the new trial takes the earlier one's result.
- Persistence: the study lives in ``STUDY_DIR/study.db`` (Optuna's RDB storage, SQLite); the
  workload, SLOs, model, fixed flags and knobs are stored with it, and ``--resume`` continues
  it (new trials add to the old) only when they match.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pagellm.errors import ClientError
from pagellm.tuning.search_space import Knob, constraint_violation
from pagellm.tuning.slo import SLO
from pagellm.tuning.trial_runner import RunResult, ServerStartError, Workload, best_run, measure

logger = logging.getLogger(__name__)

STUDY_NAME = "pagellm-tune"
STUDY_FILE = "study.db"


@dataclass
class TuneSetup:
    """Everything a study measures with; ``description`` must match to resume a study."""

    model: str
    fixed: dict
    """Fixed engine arguments (vLLM names), the same in every trial."""
    knobs: list[Knob]
    workload: Workload
    slos: list[SLO]
    workload_description: dict
    num_gpus: int = 0
    study_dir: Path = Path("pagellm-tune")

    @property
    def description(self) -> dict:
        return {"model": self.model, "fixed": self.fixed,
                "knobs": {knob.name: knob.describe() for knob in self.knobs},
                "workload": self.workload_description}


@dataclass
class TrialRecord:
    """One trial as the report shows it."""

    number: int
    state: str
    """COMPLETE, PRUNED (broke an SLO, or could not start by a constraint), FAIL, RUNNING."""
    values: dict
    """The knobs' values."""
    runs: list[dict] = field(default_factory=list)
    """RunResult.to_dict() of each rate, ascending."""
    goodput: float | None = None
    note: str = ""
    duration_s: float | None = None

    @property
    def best(self) -> dict | None:
        """The run the trial is scored by: the best feasible one, else its last."""
        feasible = [run for run in self.runs if not run["violated"]]
        if feasible:
            return max(feasible, key=lambda run: run["goodput"])
        return self.runs[-1] if self.runs else None


def serve_config(model: str, fixed: dict, values: dict) -> dict:
    """A ``pagellm serve --config`` mapping (flag names with dashes) of the model, the fixed
    engine arguments and the knobs' values."""
    config = {"model": model}
    for name, value in {**fixed, **values}.items():
        if name != "model":
            config[name.replace("_", "-")] = value
    return config


def write_config(path: Path, config: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def open_study(setup: TuneSetup, resume: bool, seed: int):
    """The study in ``setup.study_dir`` (created). ClientError when a study is there and
    ``resume`` is off, or when resuming a study of another model/workload/knobs."""
    import optuna

    setup.study_dir.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{(setup.study_dir / STUDY_FILE).resolve()}"
    count = 0
    if STUDY_NAME in optuna.study.get_all_study_names(storage):
        count = len(optuna.load_study(study_name=STUDY_NAME, storage=storage).trials)
        if not resume:
            raise ClientError(f"{setup.study_dir} already holds a study of {count} trials: "
                              "pass --resume to continue it, or choose another --study-dir",
                              param="study_dir")
    # a resumed study's sampler starts where the old one stopped, not from the same seed
    # (which would propose the first trials' configurations again)
    sampler = optuna.samplers.TPESampler(seed=seed + count, n_startup_trials=4)
    study = optuna.create_study(study_name=STUDY_NAME, storage=storage, direction="maximize",
                                sampler=sampler, load_if_exists=True)
    stored = study.user_attrs.get("setup")
    if stored is None:
        study.set_user_attr("setup", _jsonable(setup.description))
    elif stored != _jsonable(setup.description):
        differing = [key for key in stored if stored.get(key) != _jsonable(setup.description)[key]]
        raise ClientError(f"cannot resume the study in {setup.study_dir}: its "
                          f"{', '.join(differing)} differ from this command's (resume with the "
                          "same model, fixed flags, knobs, workload and SLOs)", param="resume")
    return study


def _jsonable(value):
    import json
    return json.loads(json.dumps(value, default=str))


def objective_for(setup: TuneSetup):
    """The Optuna objective: one trial = one configuration measured (see the module
    docstring)."""
    import optuna

    trials_dir = setup.study_dir / "trials"
    trials_dir.mkdir(parents=True, exist_ok=True)

    def objective(trial: optuna.Trial) -> float:
        values = {knob.name: knob.suggest(trial) for knob in setup.knobs}
        earlier = _same_configuration(trial, values)
        if earlier is not None:         # measured already: its result, not a second launch
            trial.set_user_attr("runs", earlier.user_attrs.get("runs", []))
            trial.set_user_attr("note", f"same configuration as trial {earlier.number}")
            if earlier.state == optuna.trial.TrialState.PRUNED:
                raise optuna.TrialPruned(f"same configuration as trial {earlier.number}")
            return earlier.value
        reason = constraint_violation(values, setup.fixed, setup.num_gpus,
                                      setup.fixed.get("max_model_len"))
        if reason is not None:
            trial.set_user_attr("note", f"not launched: {reason}")
            raise optuna.TrialPruned(reason)
        config_file = write_config(trials_dir / f"trial_{trial.number}.yaml",
                                   serve_config(setup.model, setup.fixed, values))
        logger.info("trial %d: %s", trial.number, _flags_text(values))
        runs: list[RunResult] = []

        def on_run(run: RunResult) -> None:
            runs.append(run)
            trial.report(run.goodput if run.meets_slos else 0.0, len(runs) - 1)
            trial.set_user_attr("runs", _jsonable([r.to_dict() for r in runs]))
            logger.info("trial %d at %s req/s: goodput %.3f req/s, %s", trial.number,
                        run.request_rate, run.goodput, _run_verdict(run))

        try:
            measure(config_file, trials_dir / f"trial_{trial.number}.log", setup.workload,
                    setup.slos, on_run)
        except ServerStartError as error:
            trial.set_user_attr("note", "server failed: " + str(error)[-1500:])
            raise
        best = best_run(runs)
        if best is None:
            trial.set_user_attr("note", _run_verdict(runs[0]))
            raise optuna.TrialPruned(_run_verdict(runs[0]))
        trial.set_user_attr("note", f"best at {best.request_rate} req/s"
                            + (f"; {_run_verdict(runs[-1])} at {runs[-1].request_rate} req/s"
                               if runs[-1] is not best else ""))
        return best.goodput

    return objective


def _same_configuration(trial, values: dict):
    """An earlier COMPLETE or PRUNED trial of the study with exactly these knob values (None
    when there is none)."""
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    for earlier in trial.study.get_trials(deepcopy=False, states=states):
        if earlier.params == values and earlier.user_attrs.get("runs"):
            return earlier
    return None


def _flags_text(values: dict) -> str:
    return " ".join(f"{name}={value}" for name, value in values.items())


def _run_verdict(run: RunResult) -> str:
    if run.meets_slos:
        return "met every SLO"
    broken = ", ".join(f"{name} ({_ms(value)})" for name, value in run.violated.items())
    how = " (stopped early)" if run.early_stopped else ""
    return f"broke {broken}{how}"


def _ms(value: float) -> str:
    return "not measurable: stopped early" if math.isinf(value) else f"{value:.1f} ms"


def run_study(setup: TuneSetup, n_trials: int | None, time_budget_s: float | None,
              resume: bool, seed: int = 0) -> list[TrialRecord]:
    """Run trials until ``n_trials`` new ones ran or ``time_budget_s`` passed (a trial in
    progress finishes); returns every trial of the study, old ones included."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(setup, resume, seed)
    study.optimize(objective_for(setup), n_trials=n_trials, timeout=time_budget_s,
                   catch=(ServerStartError,), gc_after_trial=False)
    return trial_records(study)


def trial_records(study) -> list[TrialRecord]:
    records = []
    for trial in study.trials:
        duration = None
        if trial.datetime_start and trial.datetime_complete:
            duration = (trial.datetime_complete - trial.datetime_start).total_seconds()
        records.append(TrialRecord(
            number=trial.number, state=trial.state.name, values=dict(trial.params),
            runs=trial.user_attrs.get("runs", []),
            goodput=trial.value if trial.state.name == "COMPLETE" else None,
            note=trial.user_attrs.get("note", ""), duration_s=duration))
    return records


def best_record(records: Sequence[TrialRecord]) -> TrialRecord | None:
    complete = [record for record in records if record.state == "COMPLETE"]
    return max(complete, key=lambda record: record.goodput) if complete else None


def infeasible_message(records: Sequence[TrialRecord], slos: Sequence[SLO]) -> str:
    """Why no trial qualified, naming each SLO that trials broke, how many broke it and the
    best value measured, and what to change."""
    measured = [record for record in records if record.runs]
    if not measured:
        notes = {record.note.split(":")[0] for record in records if record.note}
        return (f"no configuration could be measured in {len(records)} trials "
                f"({'; '.join(sorted(notes)) or 'no trial ran'}): see the server logs under "
                "the study dir's trials/, fix the fixed flags, or give a larger --time-budget")
    parts = []
    for slo in slos:
        values = [record.runs[0]["violated"][slo.name] for record in measured
                  if slo.name in record.runs[0]["violated"]]
        if values:
            best = min(values)
            shown = "not measured (runs stopped early)" if math.isinf(best) else f"{best:.1f} ms"
            parts.append(f"{slo} was broken by {len(values)} of {len(measured)} measured "
                         f"trials (best {slo.name}: {shown})")
    return ("no configuration met the SLOs: " + "; ".join(parts)
            + ". Relax the SLO (a larger bound), lower --request-rate, or search other knobs "
              "or ranges")
