"""The simulated executor: predicts with the SimPy engine."""
from __future__ import annotations

from executors.base import Executor
from simcore.calibration import Calibration
from simcore.engine import SimulationError, Simulator
from simcore.result import RunResult
from topologies.limits import over_limit_message


class SimulatedExecutor(Executor):
    """``progress(simulated_s, events)``, if given, is called now and then on long runs.

    ``native_collectives=False`` leaves out a profile's corrections for the
    library's own collectives, for comparison with a real run in algorithm mode.
    ``expand_records=False``: a run of symmetric rank classes keeps its
    representatives' records only (``RunResult.rep_of``, ``all_records()``).
    """

    name = "sim"

    def __init__(self, progress=None, aligned: bool = False, native_collectives: bool = True,
                 expand_records: bool = True):
        self.progress = progress
        # aligned: every operation index starts on all ranks together, to
        # compare with a real run timed with a barrier before each operation.
        self.aligned = aligned
        self.native_collectives = native_collectives
        self.expand_records = expand_records

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
            expand_records=self.expand_records,
        )
        if scenario.memory_check is not None:
            # The scenario fits the memory limit only with its symmetric classes folded: a run that
            # cannot fold stops here, before it takes the memory.
            simulator.find_symmetry()
            if simulator.symmetry is None:
                needed, limit = scenario.memory_check
                raise SimulationError(over_limit_message(
                    f"{scenario.name or 'the scenario'}: every rank must be simulated ({simulator.fold_note}), "
                    "which needs", needed, limit))
        return simulator.run(progress=self.progress)
