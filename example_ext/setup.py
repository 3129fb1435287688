"""example-ext: the extension the host-framework docs quote, using every extension point."""

from setuptools import setup

setup(
    name="example-ext",
    version="0.1.0",
    description="Example tasks for host-framework",
    packages=["example_ext"],
    python_requires=">=3.10",
    install_requires=["host-framework"],
    entry_points={
        "host.celery_task": ["tasks = example_ext.celery_import:task_imports"],
        # A pluggy plugin, enabled by name in the ini: host.plugins = example
        "host.plugins": ["example = example_ext.plugin"],
    },
)
