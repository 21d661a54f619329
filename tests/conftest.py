"""Markers the real-executor tests use beyond those in pyproject.toml (slow, mpi, gpu)."""


def pytest_configure(config):
    config.addinivalue_line("markers", "torch: needs torch with torch.distributed (gloo on CPU, NCCL on GPU)")
