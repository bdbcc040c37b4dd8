"""The integration tests' helpers are the chaos tools' (one harness for both)."""

from chaos.harness import REPO, Collector, LocalServices, WorkerProcess, children, env_for, free_port, settings_for

__all__ = ["REPO", "Collector", "LocalServices", "WorkerProcess", "children", "env_for", "free_port", "settings_for"]
