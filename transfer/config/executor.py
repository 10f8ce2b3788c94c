"""Where a study's cells run: ``study.executor`` and the ``study.submitit`` section (Slurm job arrays)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from transfer.config.io import ConfigError


@dataclass
class SubmititConfig:
    """submitit's parameters: generic ones, and ``slurm_*`` ones passed to Slurm as they are named here."""

    #: slurm | local | debug; None: Slurm where ``srun`` exists, else submitit's local executor
    cluster: Literal["slurm", "local", "debug"] | None = None
    folder: str | None = None  #: job pickles and logs (default: <study dir>/submitit); on Slurm a shared filesystem
    cells_per_job: int = 1  #: cells run one after another in one job (fewer, longer jobs for short cells)
    timeout_min: int = 60
    cpus_per_task: int = 2
    gpus_per_node: int = 0
    mem_gb: float | None = None
    slurm_partition: str | None = None
    slurm_account: str | None = None
    slurm_qos: str | None = None
    slurm_array_parallelism: int = 32  #: jobs of the array running at the same time
    slurm_additional_parameters: dict[str, Any] = field(default_factory=dict)  #: e.g. {constraint: a100}
    slurm_setup: list[str] = field(default_factory=list)  #: shell lines before the job, e.g. "module load cuda"

    def __post_init__(self) -> None:
        if self.cells_per_job < 1:
            raise ConfigError(f"study.submitit.cells_per_job: must be >= 1, got {self.cells_per_job}")
        if self.timeout_min < 1:
            raise ConfigError(f"study.submitit.timeout_min: must be >= 1, got {self.timeout_min}")

    def parameters(self) -> dict[str, Any]:
        """The keyword arguments of ``AutoExecutor.update_parameters`` (unset ``slurm_*`` keys left out)."""
        out: dict[str, Any] = {"timeout_min": self.timeout_min, "cpus_per_task": self.cpus_per_task,
                               "slurm_array_parallelism": self.slurm_array_parallelism}
        if self.gpus_per_node:
            out["gpus_per_node"] = self.gpus_per_node
        if self.mem_gb is not None:
            out["mem_gb"] = self.mem_gb
        for key in ("slurm_partition", "slurm_account", "slurm_qos"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.slurm_additional_parameters:
            out["slurm_additional_parameters"] = dict(self.slurm_additional_parameters)
        if self.slurm_setup:
            out["slurm_setup"] = list(self.slurm_setup)
        return out
