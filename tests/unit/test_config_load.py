from pathlib import Path

import pytest

from haven.model.load import ConfigError, load_cluster_config
from haven.model.spec import Settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    return path


GOOD = """
name: lab
hosts:
  - {name: h1, address: 10.0.0.1, vcpus: 4, memory_mib: 4096}
  - {name: h2, address: 10.0.0.2, vcpus: 4, memory_mib: 4096}
vms:
  - name: web
    memory_mib: 256
    priority: 3
    preferred_hosts: [h1]
    disks: [{pool: shared}]
    nics: [{mac: "52:54:00:00:00:01"}]
"""


def test_a_valid_file_loads(tmp_path):
    config = load_cluster_config(write(tmp_path, GOOD))
    assert [h.name for h in config.hosts] == ["h1", "h2"]
    assert config.vms[0].ha and config.vms[0].pools == {"shared"}
    assert config.settings.renew_interval == 0.5


def test_every_problem_is_reported_with_its_path(tmp_path):
    text = GOOD.replace("memory_mib: 256", "memory_mib: 16").replace("priority: 3", "priority: 7") \
               .replace("vcpus: 4, memory_mib: 4096}\n  - {name: h2", "vcpus: -1, memory_mib: 4096}\n  - {name: h2")
    with pytest.raises(ConfigError) as caught:
        load_cluster_config(write(tmp_path, text))
    problems = caught.value.problems
    assert any(p.startswith("vms[0].memory_mib:") and "72" in p and "(got 16)" in p for p in problems)
    assert any(p.startswith("vms[0].priority:") and "(got 7)" in p for p in problems)
    assert any(p.startswith("hosts[0].vcpus:") for p in problems)
    assert len(problems) == 3
    assert "3 problem(s)" in caught.value.explain()


def test_unknown_fields_and_bad_references(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_cluster_config(write(tmp_path, GOOD.replace("priority: 3", "priorty: 3")))
    assert caught.value.problems == ["vms[0].priorty: unknown field (check the spelling)"]
    with pytest.raises(ConfigError) as caught:
        load_cluster_config(write(tmp_path, GOOD.replace("[h1]", "[h9]")))
    assert "preferred host 'h9' is not a declared host" in caught.value.problems[0]


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_cluster_config(write(tmp_path, "hosts: [\n"))
    assert "not valid YAML" in caught.value.problems[0] and "line" in caught.value.problems[0]
    with pytest.raises(ConfigError) as caught:
        load_cluster_config(tmp_path / "missing.yaml")
    assert "cannot read the file" in caught.value.problems[0]


def test_timing_settings_must_leave_room_for_self_fencing():
    with pytest.raises(ValueError, match="self_fence_margin_s must be smaller"):
        Settings(lease_ttl_s=2, self_fence_margin_s=2)
    with pytest.raises(ValueError, match="renew_interval_s must be shorter"):
        Settings(lease_ttl_s=2, renew_interval_s=1.6)


def test_the_example_node_configuration_is_valid():
    from haven.daemon.config import ShutdownPolicy, load_node_config

    config = load_node_config(Path(__file__).parents[2] / "examples" / "node.yaml")
    assert config.host.name == "h1" and config.shutdown is ShutdownPolicy.CLUSTER and len(config.etcd) == 3
