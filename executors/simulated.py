"""The simulated executor: predicts with the SimPy engine."""
from __future__ import annotations

from executors.base import Executor
from simcore.calibration import Calibration
from simcore.engine import Simulator
from simcore.result import RunResult


class SimulatedExecutor(Executor):
    """``progress(simulated_s, events)``, if given, is called now and then on long runs.

    ``native_collectives=False`` leaves out a profile's corrections for the
    library's own collectives, for comparison with a real run in algorithm mode.
    """

    name = "sim"

    def __init__(self, progress=None, aligned: bool = False, native_collectives: bool = True):
        self.progress = progress
        # aligned: every operation index starts on all ranks together, to
        # compare with a real run timed with a barrier before each operation.
        self.aligned = aligned
        self.native_collectives = native_collectives

    def run(self, scenario) -> RunResult:
        simulator = Simulator(
            scenario.topology,
            scenario.programs(),
            seed=scenario.seed,
            stragglers=scenario.stragglers,
            count_idle_energy=scenario.energy.count_idle,
            name=scenario.name,
            aligned=self.aligned,
            process_groups=scenario.groups,
            calibration=Calibration.from_profile(scenario.profile, scenario.nranks,
                                                 native=self.native_collectives),
        )
        return simulator.run(progress=self.progress)
