"""`haven witness`: an etcd member of the pair's cluster, and a clear error for a wrong setting."""
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from haven.cli.main import cli
from haven.daemon.witness import Witness, WitnessConfigError

CLUSTER = "h1=http://10.0.0.1:2380,h2=http://10.0.0.2:2380,w=http://10.0.0.3:2380"


def test_the_witness_is_an_etcd_member_of_the_pairs_cluster_with_their_timings():
    argv = Witness("w", "10.0.0.3", Path("/d"), CLUSTER).argv()
    assert argv[0] == "etcd"
    flags = dict(zip(argv[1::2], argv[2::2], strict=True))
    assert flags["--initial-cluster"] == CLUSTER and flags["--initial-cluster-state"] == "new"
    assert flags["--listen-peer-urls"] == "http://10.0.0.3:2380"
    assert flags["--advertise-client-urls"] == "http://10.0.0.3:2379"
    assert (flags["--heartbeat-interval"], flags["--election-timeout"]) == ("100", "1000")
    assert dict(zip(*[iter(Witness("w", "10.0.0.3", Path("/d"), CLUSTER, join=True).argv()[1:])] * 2,
                    strict=True))["--initial-cluster-state"] == "existing"


@pytest.mark.parametrize(("cluster", "said"), [
    ("h1=http://10.0.0.1:2380,w=http://10.0.0.3:2380", "names 2 member(s)"),
    ("h1=http://10.0.0.1:2380,h2=http://10.0.0.2:2380,w=http://10.0.0.9:2380", "w=http://10.0.0.3:2380"),
])
def test_a_cluster_that_does_not_hold_this_witness_is_refused_with_what_to_give(cluster, said):
    with pytest.raises(WitnessConfigError, match=re.escape(said)):
        Witness("w", "10.0.0.3", Path("/d"), cluster).argv()
    result = CliRunner().invoke(cli, ["witness", "--name", "w", "--address", "10.0.0.3", "--cluster", cluster,
                                      "--dry-run"])
    assert result.exit_code == 2 and said in result.output and "Traceback" not in result.output


def test_dry_run_prints_the_command_line():
    result = CliRunner().invoke(cli, ["witness", "--name", "w", "--address", "10.0.0.3", "--cluster", CLUSTER,
                                      "--dry-run"])
    assert result.exit_code == 0 and "--initial-cluster " + CLUSTER in result.output
