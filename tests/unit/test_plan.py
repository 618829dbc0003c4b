from pathlib import Path

from haven.model.load import load_cluster_config
from haven.model.spec import VmSpec
from haven.plan.capacity import capacity
from haven.plan.present import from_config
from haven.plan.topology import LicenceModel, TopologyInput, compare
from haven.plan.whatif import what_if

EXAMPLES = Path(__file__).parents[2] / "examples"


def article(**licensing) -> TopologyInput:
    return TopologyInput(workloads={"count": 6}, licensing=licensing or {},
                         hosts=[{"name": "amd", "vcpus": 16, "memory_mib": 65536, "cpu_vendor": "amd"},
                                {"name": "intel", "vcpus": 16, "memory_mib": 65536}])


def test_the_articles_example_8_instances_1_cluster_against_14_and_6():
    host_cluster, guest_clusters = compare(article(price=100))
    assert (host_cluster.os_instances, host_cluster.clusters) == (8, 1)
    assert (guest_clusters.os_instances, guest_clusters.clusters) == (14, 6)
    assert (host_cluster.licence_cost, guest_clusters.licence_cost) == (800, 1400)
    assert host_cluster.host_failures_survived == guest_clusters.host_failures_survived == 1
    assert "mix vendors" in host_cluster.dissimilar_hosts


def test_per_host_editions_make_both_cost_the_same():
    a, b = compare(article(model=LicenceModel.PER_HOST, price=5000))
    assert a.licence_cost == b.licence_cost == 10000


def test_a_host_cluster_survives_as_many_failures_as_the_survivors_can_hold():
    data = TopologyInput(workloads={"count": 2, "memory_mib": 1024}, memory_reserve_mib=0,
                         hosts=[{"name": f"h{i}", "vcpus": 8, "memory_mib": 2048} for i in range(3)])
    host_cluster, guest_clusters = compare(data)
    assert host_cluster.host_failures_survived == 2  # one host holds both
    assert guest_clusters.host_failures_survived == 1  # a pair loses both VMs after two failures


def test_capacity_counts_what_fits_and_says_what_stops_the_next():
    config = load_cluster_config(EXAMPLES / "cluster.yaml")
    running = from_config(config)
    assert set(running) == {"db", "web1", "web2", "batch"}
    report = capacity(config, running, VmSpec(name="more", vcpus=2, memory_mib=2048))
    assert report.fits == sum(report.per_host.values()) >= 1
    assert "admission control" in report.limited_by
    bigger = capacity(config, running, VmSpec(name="more", vcpus=2, memory_mib=1024))
    assert bigger.fits > report.fits


def test_what_if_replays_the_failure_in_the_simulator():
    config = load_cluster_config(EXAMPLES / "cluster.yaml")
    running = from_config(config)
    victim = running["db"]
    report = what_if(config, running, [victim])
    db = next(o for o in report.outcomes if o.vm == "db")
    assert db.before == victim and db.after not in (None, victim)
    assert 2.0 < db.recovery_s < 10.0  # lease expiry + grace + boot
    everything = what_if(config, running, [h.name for h in config.hosts])
    assert set(everything.lost) == set(running)


def test_guest_clusters_survive_nothing_when_their_members_do_not_all_fit():
    # Two hosts of room 2 VMs each: three services need six members on distinct hosts of a pair.
    hosts = [{"name": f"h{i}", "vcpus": 8, "memory_mib": 2048} for i in range(2)]
    fits = TopologyInput(workloads={"count": 2, "memory_mib": 1024}, memory_reserve_mib=0, hosts=hosts)
    crowded = TopologyInput(workloads={"count": 3, "memory_mib": 1024}, memory_reserve_mib=0, hosts=hosts)
    assert compare(fits)[1].host_failures_survived == 1
    assert compare(crowded)[1].host_failures_survived == 0
