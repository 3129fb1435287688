"""example_ext's tasks, run in the test itself (eager): no broker, no worker.

Written with host-framework's test kit only: its pytest plugin gives the
fixtures, and this folder has no conftest.
"""

import json

import pytest

pytestmark = pytest.mark.host_ini(
    plugins=["example"], plugin_options={"example": {"greeting": "Hi"}}, eager=True
)


def test_add(host_app):
    assert host_app.tasks["example.add"].delay(2, 3).get(timeout=10) == 5


def test_a_class_based_task(host_app):
    assert host_app.tasks["example.word_count"].delay("one two three").get(timeout=10) == 3


def test_ingest_keeps_its_own_outcome_and_log(host_app, host_cli):
    result = host_app.tasks["example.ingest"].delay(["a", "bad b", "c"], seconds_each=0)
    assert result.get(timeout=10) == {"ingested": 2, "failed": 1}

    report = json.loads(host_cli("result", result.id, "--json").output)
    assert report["outcome"] == "failed"
    assert report["log"]["errors"][0]["message"] == "item 'bad b' failed its check"
    assert "greeting from [plugin:example]: Hi" in report["log"]["info"][0]["message"]
