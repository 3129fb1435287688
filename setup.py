"""host-framework: the extension framework for Celery background tasks."""

from setuptools import setup

setup(
    name="host-framework",
    version="0.1.0",
    description="Run one Celery app whose tasks come from separately installed extensions.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    packages=["core", "core.cli", "core.testing", "plugins"],
    # py.typed: mypy checks an extension's hook implementations and task code against ours.
    # templates/: what `host new-extension` renders (copier).
    package_data={"core": ["py.typed", "templates/**/*"], "plugins": ["py.typed"]},
    python_requires=">=3.10",
    install_requires=[
        # 5.7 reports duplicate task names through one method we escalate to an error.
        "celery>=5.7,<6",
        # Earlier kombu can drop a failed publish silently.
        "kombu>=5.7,<6",
        "pluggy>=1.5",
        "importlib-metadata>=6",
        "click>=8.1",
        # Celery's database result backend, used by the embedded result store.
        "sqlalchemy>=2.0",
        # host send --wait's live progress bar (with an ETA) and terminal-aware
        # output: the well-kept library for it, instead of hand-drawn bars.
        "rich>=13",
        # host celeryd --reload: file watching with inotify (polling where there is none) and
        # debounced batches, so a burst of saves is one restart. Celery removed --autoreload.
        "watchfiles>=0.21",
    ],
    extras_require={
        "redis": ["redis>=5"],
        "flower": ["flower>=2"],
        # `host new-extension` renders its template with copier: a template library rather than
        # file-writing code; its `.jinja` suffix keeps the template's Python out of our lint
        # and tests. An extra: a production host does not need it (a clear error names it).
        "scaffold": ["copier>=9.4,<10"],
        # pytest-xdist runs the suite's modules in parallel (make test): the suite starts
        # real workers and brokers, and takes twice as long on one core.
        # Flower: the embedded broker's tests check that Flower's API sees its workers and tasks.
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.6",
            "hypothesis>=6",
            "redis>=5",
            "supervisor>=4.2",
            "flower>=2",
            # A real SMTP server, started by tests/test_notify.py on 127.0.0.1, receives the
            # failure emails the workers send to host.admin_emails.
            "aiosmtpd>=1.4",
            # host results and task reports are tested on a real PostgreSQL through Celery's
            # db+postgresql+psycopg:// result backend (the machine runs PostgreSQL).
            "psycopg[binary]>=3.1",
            # tests/test_flower.py opens Flower in a real headless browser: Debian's chromium
            # (.ci/run installs it), driven through executable_path. Never `playwright install`:
            # no browser is downloaded.
            "playwright>=1.40",
        ],
        # bench/ compares the host's discovery with stevedore and with pkg_resources
        # (what CKAN used; setuptools 81 removes it).
        # psutil reads an idle worker's CPU time, main process and pool children together (row 7).
        "bench": ["stevedore>=5", "setuptools<81", "redis>=5", "psutil>=5.9"],
        # Pinned to a minor version so a new lint rule cannot turn CI red on its own.
        # import-linter checks that the layers import only downward (docs/architecture.md):
        # the well-kept tool for it, with layers, forbidden and acyclic contracts.
        # pytest: mypy checks the test kit (core/testing, a pytest plugin) against pytest's types.
        "lint": ["ruff==0.17.*", "mypy==2.4.*", "import-linter==2.17.*", "pytest>=8"],
    },
    entry_points={
        "console_scripts": ["host = core.cli:main"],
        # The test kit: its fixtures (host_app, host_worker, ...) in every pytest run, no conftest.
        "pytest11": ["host = core.testing.plugin"],
    },
)
