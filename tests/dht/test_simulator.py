"""`zeone sim dht`: the simulator command on a small network (deterministic seed)."""

from __future__ import annotations

from zeone.sim import SimSettings, simulate


def test_values_survive_30_percent_of_nodes_failing_at_once() -> None:
    result = simulate(SimSettings(nodes=300, churn=0.3, lookups=60, values=60, seed=3))
    healthy, after = result["phases"]["healthy"], result["phases"]["after"]
    assert healthy["lookup_success"] == 1.0
    assert healthy["values_retrievable"] == 1.0
    assert after["values_retrievable"] >= 0.99  # seed 004 §6.3
    assert after["lookup_success"] >= 0.95
    assert healthy["hops_p50"] <= 4
    assert result["store_acks_mean"] == 20  # every value went to k nodes


def test_adversaries_do_not_hide_values(tmp_path) -> None:
    result = simulate(SimSettings(nodes=300, adversarial=0.2, lookups=60, values=60, seed=5))
    assert result["phases"]["after"]["values_retrievable"] >= 0.99


def test_the_cli_prints_json(tmp_path) -> None:
    import json

    from click.testing import CliRunner

    from zeone.cli import CliState, cli
    from zeone.plugins import Catalog

    runner = CliRunner()
    out = runner.invoke(
        cli,
        ["sim", "dht", "--nodes", "100", "--lookups", "20", "--values", "10", "--json"],
        obj=CliState(Catalog.discover(entry_points=False)),
    )
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["settings"]["nodes"] == 100
    assert set(data["phases"]) == {"healthy"}
