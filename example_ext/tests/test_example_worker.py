"""example_ext in a real worker: started on the test's ini, stopped with a warm shutdown.

A test that fails gets the worker's log in its report.
"""

import pytest

pytestmark = pytest.mark.host_ini(plugins=["example"])


def test_a_worker_runs_the_tasks(host_worker, host_app):
    # example.add goes to the plugin's queue "example", which the worker consumes too.
    assert host_app.tasks["example.add"].delay(2, 3).get(timeout=30) == 5
    assert host_app.tasks["example.echo"].delay("hi").get(timeout=30) == "hi"


def test_host_send_waits_for_the_result(host_worker):
    sent = host_worker.host("send", "example.word_count", '"one two"', "--wait")
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout == "2\n"
