"""Operation vocabulary, collective algorithms and high-level workloads (no simpy, mpi4py or torch here)."""
