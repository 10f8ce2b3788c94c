from __future__ import annotations

import pytest

from transfer.config import Config
from transfer.config.io import ConfigError, from_dict, load_config, parse_overrides, to_dict


def test_defaults_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  depth: conv3-head\n  epochs: 3\ndata:\n  image_size: [64, 48]\n")
    cfg = load_config(Config, p, ["train.lr=0.01", "init=scratch", "data.augment.rotation=5"])
    assert cfg.train.depth == "conv3-head" and cfg.train.epochs == 3 and cfg.train.lr == 0.01
    assert cfg.init == "scratch" and cfg.data.image_size == (64, 48) and cfg.data.augment.rotation == 5.0
    assert cfg.backbone.name == "efficientnet_lite0"  # the default backbone
    assert to_dict(cfg)["data"]["image_size"] == [64, 48]


def test_a_float_written_with_an_exponent_and_no_dot_is_a_number(tmp_path):
    """PyYAML (YAML 1.1) reads ``1e-4`` as a string; in the file and on the command line it is the number meant."""
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  lr: 1e-4\n  weight_decay: 5E-5\n")
    cfg = load_config(Config, p, ["pretrain.lr=1e-9", "data.augment.noise=.5e-1"])
    assert cfg.train.lr == 1e-4 and cfg.train.weight_decay == 5e-5 and cfg.data.augment.noise == 0.05
    assert cfg.pretrain.lr == 1e-9
    with pytest.raises(ConfigError, match="pretrain.lr: must be > 0, got -1e-09"):  # a number: its range is checked
        load_config(Config, p, ["pretrain.lr=-1e-9"])
    with pytest.raises(ConfigError, match="train.lr.*expected a number, got '1e-4x'"):
        load_config(Config, None, ["train.lr=1e-4x"])
    with pytest.raises(ConfigError, match="train.epochs.*expected an integer"):  # integers stay integers
        load_config(Config, None, ["train.epochs=1e3"])


def test_unknown_key_names_key_file_and_choices(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train:\n  epohcs: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(Config, p)
    msg = str(e.value)
    assert "train.epohcs" in msg and str(p) in msg and "epochs" in msg


def test_wrong_type_and_choice(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train:\n  epochs: three\n")
    with pytest.raises(ConfigError, match="train.epochs.*integer"):
        load_config(Config, p)
    with pytest.raises(ConfigError, match=r"backbone.channels.*\['replicate', 'adapt'\]"):
        load_config(Config, None, ["backbone.channels=stack"])


def test_impossible_value_named():
    with pytest.raises(ConfigError, match="data.label_fraction"):
        load_config(Config, None, ["data.label_fraction=0"])
    with pytest.raises(ConfigError, match="train.gamma"):
        load_config(Config, None, ["train.gamma=1.5"])


def test_env_expansion(monkeypatch):
    monkeypatch.setenv("MEDTRANSFER_DATA", "/data/x")
    assert load_config(Config, None).data.root == "/data/x"
    monkeypatch.delenv("MEDTRANSFER_DATA")
    assert load_config(Config, None).data.root == "../shared/data"


def test_parse_overrides_nested():
    assert parse_overrides(["a.b=1", "a.c=x", "d=[1, 2]"]) == {"a": {"b": 1, "c": "x"}, "d": [1, 2]}
    with pytest.raises(ConfigError):
        parse_overrides(["novalue"])


def test_plugin_sections_come_from_the_registries_and_round_trip(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("task:\n  name: landmarks\n  landmarks: {head: heatmap, heatmap_sigma: 3}\n"
                 "pretrain:\n  method: moco\n  contrastive: {queue_size: 128}\n")
    cfg = load_config(Config, p, ["task.classification.class_weights=balanced"])
    assert cfg.task.section("landmarks").head == "heatmap" and cfg.task.section("landmarks").heatmap_sigma == 3.0
    assert cfg.task.section("classification").class_weights == "balanced"
    assert cfg.pretrain.section("contrastive").queue_size == 128
    assert cfg.pretrain.section("cae").decoder_width == 32  # a section the file does not set: its defaults
    d = to_dict(cfg)
    assert d["task"]["landmarks"]["head"] == "heatmap" and "options" not in d["task"]  # YAML shape, not the field
    assert set(d["pretrain"]) >= {"contrastive", "cae", "augpred"}
    assert to_dict(from_dict(Config, d)) == d


@pytest.mark.parametrize("override,message", [
    ("task.segmentatoin.x=1", "unknown key 'task.segmentatoin'"),
    ("task.landmarks.head=mlp", "'task.landmarks.head'"),
    ("pretrain.contrastive.temperature=0", "temperature"),
    ("task.landmarks=3", "expected a mapping"),
])
def test_plugin_section_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        load_config(Config, None, [override])
