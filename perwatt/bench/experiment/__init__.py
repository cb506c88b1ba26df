"""``perwatt experiment``: launch each server configuration, sweep GPU settings × load, answer.

An experiment file (:mod:`~perwatt.bench.experiment.config`) lists server configurations (a
command to launch or a running server's URL), GPU power limits and/or locked SM clocks, load
levels and one workload. :func:`run_experiment` (:mod:`~perwatt.bench.experiment.run`) measures
every point with perwatt's bench runner, one server at a time, resumably;
:func:`analyze` (:mod:`~perwatt.bench.experiment.analysis`) answers: the Pareto frontier of
tokens per joule against latency, the best configuration under the SLO with intervals, savings
against the baseline, the accuracy guard, and a calibration export for the facility simulator.
Per-request energy is attributed into each run's requests CSV
(:mod:`~perwatt.bench.experiment.attribution`).
"""

from perwatt.bench.experiment.analysis import ExperimentAnalysis, analyze, calibration
from perwatt.bench.experiment.attribution import attribute
from perwatt.bench.experiment.config import ExperimentConfig, load_experiment, parse_experiment
from perwatt.bench.experiment.run import (
    ExperimentInterrupted,
    ExperimentOutcome,
    run_experiment,
)

__all__ = [
    "ExperimentAnalysis",
    "ExperimentConfig",
    "ExperimentInterrupted",
    "ExperimentOutcome",
    "analyze",
    "attribute",
    "calibration",
    "load_experiment",
    "parse_experiment",
    "run_experiment",
]
