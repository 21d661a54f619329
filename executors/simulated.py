"""The simulated executor: predicts with the SimPy engine."""
from __future__ import annotations

from executors.base import Executor
from simcore.engine import Simulator
from simcore.result import RunResult


class SimulatedExecutor(Executor):
    """``progress(simulated_s, events)``, if given, is called now and then on long runs."""

    name = "sim"

    def __init__(self, progress=None, aligned: bool = False):
        self.progress = progress
        # aligned: every operation index starts on all ranks together, to
        # compare with a real run timed with a barrier before each operation.
        self.aligned = aligned

    def run(self, scenario) -> RunResult:
        profile = getattr(scenario, "profile", None)
        calibrated = {}
        if profile is not None:
            calibrated = {
                "reduce_s_per_byte": profile.reduce_s_per_byte,
                "message_efficiency": profile.message_efficiency(scenario.nranks),
                "collective_efficiency": profile.collective_factor(),
            }
        simulator = Simulator(
            scenario.topology,
            scenario.programs(),
            seed=scenario.seed,
            stragglers=scenario.stragglers,
            count_idle_energy=scenario.energy.count_idle,
            name=scenario.name,
            aligned=self.aligned,
            **calibrated,
        )
        return simulator.run(progress=self.progress)
