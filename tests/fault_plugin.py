"""The plugin that brings the fault tests' tasks (tests/fault_tasks.py)."""

from plugins import hookimpl


@hookimpl
def host_config_declarations(declare):
    declare("redis_url", required=True, help="Where the tasks record that they ran.")


@hookimpl
def host_task_imports():
    return ["fault_tasks"]


@hookimpl
def host_worker_process_init():
    # Each pool process opens its own Redis connection, never the parent's.
    import fault_tasks

    fault_tasks._client = None
