"""Plugins: the sample pass package installs and runs; a broken plugin is one line and the rest load."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def graphopt_cli(*args, env_extra=None, pythonpath=()):
    env = dict(os.environ)
    env.pop("GRAPHOPT_NO_PLUGINS", None)
    env["PYTHONPATH"] = os.pathsep.join([*map(str, pythonpath), env.get("PYTHONPATH", "")])
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "graphopt", *args], capture_output=True, text=True, env=env,
                          timeout=120)


@pytest.fixture(scope="module")
def sample_plugin_site(tmp_path_factory):
    site = tmp_path_factory.mktemp("site")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                        "--target", str(site), str(ROOT / "samples" / "custom_pass_plugin")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return site


@pytest.fixture(scope="module")
def broken_plugin_site(tmp_path_factory):
    site = tmp_path_factory.mktemp("broken")
    (site / "broken_plugin_mod.py").write_text("import a_module_that_does_not_exist\n")
    info = site / "broken_plugin-1.2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.2\n")
    (info / "entry_points.txt").write_text("[graphopt.passes]\nbroken = broken_plugin_mod\n")
    return site


def test_installed_plugin_is_listed_with_its_distribution(sample_plugin_site):
    r = graphopt_cli("passes", "--json", pythonpath=[sample_plugin_site])
    assert r.returncode == 0, r.stderr
    rows = {p["name"]: p for p in json.loads(r.stdout)}
    assert rows["sample_fold_double_neg"]["source"] == "graphopt-fold-double-neg 0.1.0"
    assert rows["eliminate_dead_code"]["source"] == "graphopt"  # built-ins load beside it


def test_installed_plugin_runs_in_the_default_pipeline(sample_plugin_site, tmp_path):
    code = textwrap.dedent("""
        import numpy as np, graphopt
        from graphopt import GraphBuilder
        from graphopt.plugins.cpu import run_reference
        b = GraphBuilder(); x = b.input("x", (3,))
        b.output(b.op("Relu", b.op("Neg", b.op("Neg", x))), "y")
        # the built-in simplify_algebra would take Neg(Neg(x)) first: leave it to the plugin
        g2, rep = graphopt.optimize(b.graph, level=2, disable=["simplify_algebra"], return_report=True)
        assert [n.op_type for n in g2] == ["Relu"], [n.op_type for n in g2]
        xv = np.array([-1, 0, 2], np.float32)
        assert (run_reference(g2, {"x": xv})[0] == run_reference(b.graph, {"x": xv})[0]).all()
        print(json.dumps(rep.to_json()["passes"]))
    """).replace("import numpy", "import json, numpy")
    env = dict(os.environ, PYTHONPATH=f"{sample_plugin_site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    env.pop("GRAPHOPT_NO_PLUGINS", None)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    applied = {p["pass"]: p["applied"] for p in json.loads(r.stdout.strip().splitlines()[-1])}
    assert applied["sample_fold_double_neg"] == {"neg_neg_to_identity": 1}


def test_autoload_can_be_turned_off(sample_plugin_site):
    r = graphopt_cli("passes", "--json", pythonpath=[sample_plugin_site], env_extra={"GRAPHOPT_NO_PLUGINS": "1"})
    assert r.returncode == 0, r.stderr
    assert "sample_fold_double_neg" not in {p["name"] for p in json.loads(r.stdout)}


def test_broken_plugin_is_one_line_and_others_still_load(broken_plugin_site, sample_plugin_site):
    r = graphopt_cli("passes", "--json", pythonpath=[broken_plugin_site, sample_plugin_site])
    assert r.returncode == 0
    assert r.stderr.strip() == ('graphopt: failed to load plugin "broken" (from distribution broken-plugin 1.2): '
                                "ModuleNotFoundError: No module named 'a_module_that_does_not_exist'")
    assert "sample_fold_double_neg" in {p["name"] for p in json.loads(r.stdout)}


def test_plugin_asked_for_by_name_that_fails_is_fatal(tmp_path):
    bad = tmp_path / "bad_plugin.py"
    bad.write_text("raise RuntimeError('plugin exploded')\n")
    r = graphopt_cli("passes", "--plugin", str(bad))
    assert r.returncode != 0
    assert r.stderr.strip() == f'graphopt: error: failed to load plugin "{bad}": RuntimeError: plugin exploded'
    assert "Traceback" not in r.stderr


def test_plugin_file_registers_a_pass(tmp_path):
    p = tmp_path / "my_pass.py"
    p.write_text(textwrap.dedent('''
        from graphopt.passmanager import register_pass, PassResult
        @register_pass("my_file_pass", opt_level=3)
        def my_file_pass(graph, ctx):
            "Does nothing, from a file."
            return PassResult(False)
    '''))
    r = graphopt_cli("passes", "--json", "--plugin", str(p))
    assert r.returncode == 0, r.stderr
    rows = {x["name"]: x for x in json.loads(r.stdout)}
    assert rows["my_file_pass"]["source"] == str(p)
