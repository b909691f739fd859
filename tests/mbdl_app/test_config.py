import pytest

from mbdl_app.config import default_config, load_config, shipped_configs
from mbdl_app.errors import ConfigError


def test_default_session_runs_a_learned_engine_beside_its_baseline_in_each_modality():
    cfg = default_config()
    assert {s.name: s.uri.split("?")[0] for s in cfg.sources} == {
        "ceus": "sim:ceus", "lorenz": "sim:lorenz"}
    assert [(e.name, e.source or f"<- {e.input}") for e in cfg.engines] == [
        ("svd-filter", "ceus"), ("corona-ceus", "ceus"), ("ulm-lista", "<- corona-ceus"),
        ("ekf", "lorenz"), ("kalmannet-lorenz", "lorenz")]
    # the clutter filters run in blocks of their window: each frame once
    assert [e.hop for e in cfg.engines[:2]] == [20, 20] and cfg.engines[0].params["window"] == 20


def test_a_config_file_loads_its_sources_engines_and_params(tmp_path):
    p = tmp_path / "s.toml"
    p.write_text('[[sources]]\nname = "a"\nuri = "sim:lorenz"\n'
                 '[[engines]]\nname = "ekf"\nsource = "a"\nparams = { r2 = 0.5 }\n')
    cfg = load_config(p)
    assert cfg.engines[0].params == {"r2": 0.5} and cfg.engines[0].label == "ekf"


@pytest.mark.parametrize("text, needle", [
    ("[[sources]\nname='a'", "not valid TOML"),
    ("[[sources]]\nname = 'a'\n", "sources.0.uri"),
    ("[[sources]]\nname='a'\nuri='sim:lorenz'\ncolour='red'\n", "colour"),
    ("[[sources]]\nname='a'\nuri='sim:lorenz'\n[[engines]]\nname='ekf'\nsource='b'\n",
     "source 'b', which is not defined"),
    ("[[sources]]\nname='a'\nuri='x:y'\n[[sources]]\nname='a'\nuri='x:z'\n", "duplicate source"),
    ("engines = []\n", "sources"),
])
def test_malformed_config_gives_one_line_error_naming_file_and_problem(tmp_path, text, needle):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and needle in msg and "\n" not in msg


def test_missing_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.toml")


def test_an_unknown_config_name_lists_the_shipped_configs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as e:
        load_config("no-such-session")
    msg = str(e.value)
    assert "no-such-session" in msg and "shipped" in msg and "\n" not in msg


@pytest.mark.parametrize("name", shipped_configs())
def test_every_shipped_config_loads_by_name_and_names_known_engines(name, tmp_path, monkeypatch):
    import engines

    monkeypatch.chdir(tmp_path)
    cfg = load_config(name)
    assert cfg.sources
    unknown = [e.name for e in cfg.engines if e.name not in engines.available()]
    assert not unknown, f"{name}: engines not available: {unknown}"
