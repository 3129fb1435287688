def task_imports():
    """The modules holding this extension's tasks (the host.celery_task entry point)."""
    return ["example_ext.tasks"]
