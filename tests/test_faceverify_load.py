"""The workload generator drives a real server and reports throughput, latency and accuracy."""
import json

from apps.faceverify import load
from tests.faceverify_helpers import faceverify_server


def test_load_generator_reports_verifications_latency_and_accuracy(tmp_path, capsys):
    out = tmp_path / "load.json"
    with faceverify_server("--identities", "300") as srv:
        rc = load.main(["-p", str(srv.address[1]), "--identities", "300", "--threads", "4",
                        "--duration", "0.5", "--warmup", "0.1", "--pool", "300",
                        "--json", str(out)])
        assert srv.stop() == 0
    assert rc == 0
    summary = json.loads(out.read_text())
    assert summary["errors"] == 0 and summary["verifications"] > 0
    assert summary["verifications_per_s"] > 0
    lat = summary["latency_us"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p999"]
    acc = summary["accuracy"]
    assert acc["tpr"] >= 0.95 and acc["fpr"] <= 0.05
    assert "verifications/s" in capsys.readouterr().out


def test_pool_is_deterministic_apart_from_nonces_and_mixes_genuine_and_impostor():
    a = load.build_pool(200, 1000, 0.5, client_id=2, seed=5)
    b = load.build_pool(200, 1000, 0.5, client_id=2, seed=5)
    assert [(r.genuine, r.real, len(r.frame)) for r in a] == [(r.genuine, r.real, len(r.frame)) for r in b]
    assert 60 < sum(r.genuine for r in a) < 140
    assert any(r.real for r in a) and not all(r.real for r in a)
    assert len({r.nonce for r in a + b}) == 400
