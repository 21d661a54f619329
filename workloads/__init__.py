"""Operation vocabulary, collective algorithms and high-level workloads (no simpy, mpi4py or torch here)."""
from workloads.base import WORKLOADS, workload_from_dict

# Importing a workload module registers its kind in WORKLOADS.
from workloads import training  # noqa: F401,E402
from workloads import parameter_server  # noqa: F401,E402
from workloads import federated  # noqa: F401,E402
from workloads import pipeline  # noqa: F401,E402
from workloads import offload  # noqa: F401,E402
from workloads import transformer  # noqa: F401,E402

__all__ = ["WORKLOADS", "workload_from_dict"]
