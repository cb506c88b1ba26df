"""PipelineSpec (perwatt/train/pipeline.py): one checked description of a pipeline."""

from __future__ import annotations

import pytest

from perwatt.errors import ConfigError, FieldError
from perwatt.train.pipeline import MAX_INSTRUCTIONS, PipelineSpec


def test_a_spec_builds_its_schedule() -> None:
    spec = PipelineSpec(stages=4, microbatches=8, p_block_w=[80.0, 70, 60, 50], schedule="gpipe")
    assert spec.p_block_w == (80.0, 70.0, 60.0, 50.0)
    sched = spec.build_schedule()
    assert sched.num_stages == 4 and sched.num_nodes == spec.instructions == 64
    inter = PipelineSpec(stages=2, microbatches=4, p_block_w=1.0, schedule="interleaved", chunks=2)
    assert inter.build_schedule().chunks == 2
    assert inter.p_block_per_stage_w == (1.0, 1.0)


@pytest.mark.parametrize(
    ("fields", "message", "flag_message"),
    [
        ({"stages": 0}, "stages must be a whole number ≥ 1, got 0", "--stages must be"),
        ({"chunks": 2}, "chunks 2 needs schedule interleaved (the 1f1b", "--chunks 2 needs --sch"),
        ({"p_block_w": (1.0, 2.0, 3.0)}, "p_block_w has 3 values but stages is 2", "--p-block has"),
        ({"p_block_w": -1.0}, "p_block_w must be a non-negative number of watts", "--p-block"),
        ({"schedule": "zb"}, "unknown schedule 'zb'", "unknown --schedule"),
        ({"noise_factor": float("nan")}, "noise_factor must be ≥ 1", "--noise-factor must"),
        ({"time_quantum_s": 0.0}, "time_quantum_s must be > 0 s", "--quantum-ms must"),
        ({"microbatches": MAX_INSTRUCTIONS}, "stages 2 × microbatches", "--stages 2 × --micro"),
    ],
)
def test_errors_name_fields_and_a_front_end_can_name_flags(
    fields: dict[str, object], message: str, flag_message: str
) -> None:
    base: dict[str, object] = {"stages": 2, "microbatches": 4, "p_block_w": 50.0}
    with pytest.raises(FieldError) as info:
        PipelineSpec(**{**base, **fields})  # type: ignore[arg-type]
    assert message in str(info.value)
    assert "--" not in str(info.value)
    assert isinstance(info.value, ConfigError)
    from perwatt.cli.options import TRAIN_FLAGS

    assert flag_message in info.value.naming(TRAIN_FLAGS)
