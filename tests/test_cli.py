"""The command line: the broker commands with good and bad arguments (the
demo has its own tests in test_demo.py)."""

from click.testing import CliRunner

import pyqueue
from pyqueue.cli import main


def test_create_and_list_topics(tmp_path):
    runner = CliRunner()
    path = str(tmp_path / "b")
    r = runner.invoke(main, ["create", "--path", path, "orders", "--partitions", "3"])
    assert r.exit_code == 0 and "orders\tpartitions=3" in r.output
    with pyqueue.open(path) as b:
        b.topic("orders").send(b"x", partition=1)
    r = runner.invoke(main, ["topics", "--path", path])
    assert r.exit_code == 0 and "orders\tpartitions=3\tmessages=1" in r.output


def test_bad_arguments_fail_clearly(tmp_path):
    runner = CliRunner()
    r = runner.invoke(main, ["topics", "--path", str(tmp_path / "missing")])
    assert r.exit_code != 0 and "no broker" in r.output
    r = runner.invoke(main, ["create", "--path", str(tmp_path / "b"), "../evil"])
    assert r.exit_code != 0 and "invalid topic name" in r.output
    runner.invoke(main, ["create", "--path", str(tmp_path / "b"), "t", "--partitions", "2"])
    r = runner.invoke(main, ["create", "--path", str(tmp_path / "b"), "t", "--partitions", "4"])
    assert r.exit_code != 0 and "partitions=2" in r.output
    r = runner.invoke(main, ["demo", "--uploads", "0"])
    assert r.exit_code != 0
    r = runner.invoke(main, ["nonsense"])
    assert r.exit_code != 0
