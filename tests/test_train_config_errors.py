"""`entitysam train`: every mistake in the config or its overrides is one line on stderr and exit
code 2 before any work (no traceback); a YAML python tag is refused, never run."""

from __future__ import annotations

import subprocess
import sys

import pytest

from entitysam.train import cli as train_cli
from entitysam.train import config_checks as train_config_checks
from entitysam.train.config import NAMED_CONFIGS, TrainConfig, load_config, validate

BAD_OVERRIDES = [
    ("solver.base_lr=[1,2]", "solver.base_lr: expected a number"),
    ("solver.max_iter=abc", "solver.max_iter: expected an integer, got 'abc'"),
    ("solver.max_iter=", "solver.max_iter: expected an integer"),
    ("solver.max_iter={a: 1}", "solver.max_iter: expected an integer"),
    ("solver.max_iter=[1", "solver.max_iter: expected an integer"),
    ("solver.max_iter=true", "solver.max_iter: expected an integer"),
    ("solver.max_iter=1e30", "solver.max_iter must be <= 9223372036854775807"),
    ("solver.ims_per_batch=100000000000000000000", "solver.ims_per_batch must be <= 9223372036854775807"),
    ("data.num_workers=5000", "data.num_workers must be <= 1024"),
    ("solver.steps=abc", "solver.steps[0]: expected an integer"),
    ("solver.betas=[0.9]", "solver.betas: expected 2 values, got 1"),
    ("data.rotation_center=[a,b]", "data.rotation_center[0]: expected a number"),
    ("data.augment=maybe", "data.augment: expected true or false"),
    ("name.x=1", "name: expected a string"),
    ("data.root=[1]", "data.root: expected a string"),
    ("=5", "override '=5': empty key"),
    ("solver.=1", "override 'solver.=1': empty key"),
    # both were skipped without a word
    ("base=vit-s-stage1", "base: only a config file starts from a named config (base: NAME); load the named "
                          "config itself as the config instead"),
    ("solver.base=3", "unknown config key solver.'base'"),
    # each was a KeyError / TypeError traceback once the trainer built the model
    ("model.name=vit-b", "model.name must be one of vit-s, vit-l, tiny, demo, got 'vit-b'"),
    ("model.overrides.image_sise=64", "unknown config key 'model.overrides.image_sise'"),
    ("model.overrides.image_size=abc", "model.overrides.image_size: expected an integer, got 'abc'"),
    ("model.overrides.hiera=3", "model.overrides.hiera is a section; give a mapping"),
    ("model.overrides.hiera.embed_dims=8", "unknown config key 'model.overrides.hiera.embed_dims'"),
    # an unset shell variable (output_dir=$OUT): it trained into the current folder without a word
    ("output_dir=", "output_dir is empty"),
    ("output_dir=  ", "output_dir is empty"),
]


def test_a_nested_model_override_replaces_that_field_only():
    """model.overrides.dino.depth=2 replaced the whole DinoConfig with {'depth': 2}: an
    AttributeError traceback when the model was built."""
    from entitysam.config import get_config
    from entitysam.train.setup import model_config

    mc = model_config(load_config("tiny-stage1", ["model.overrides.dino.depth=2", "model.overrides.hiera.num_heads=1.0"]))
    tiny = get_config("tiny")
    assert mc.dino == type(tiny.dino)(**{**vars(tiny.dino), "depth": 2})
    assert mc.hiera.num_heads == 1 and type(mc.hiera.num_heads) is int


def _fails(capsys, argv, message):
    assert train_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err


@pytest.mark.parametrize("override,message", BAD_OVERRIDES, ids=[o for o, _ in BAD_OVERRIDES])
def test_bad_override_values_are_one_line(capsys, override, message):
    _fails(capsys, ["--config", "tiny-stage1", override, "--print-config"], message)


CONFLICTS = [
    (["solver=1", "solver.max_iter=3"], "solver was given a value"),
    (["solver.max_iter=3", "solver.max_iter.x=1"], "solver.max_iter was given a value"),
]


@pytest.mark.parametrize("overrides,message", CONFLICTS, ids=["section-then-key", "key-then-subkey"])
def test_a_key_both_value_and_section_is_refused(capsys, overrides, message):
    _fails(capsys, ["--config", "tiny-stage1", *overrides, "--print-config"], message)


def test_a_key_given_twice_keeps_the_last_value(capsys):
    assert train_cli.main(["--config", "tiny-stage1", "solver.max_iter=3", "solver.max_iter=4", "--print-config"]) == 0
    assert '"max_iter": 4' in capsys.readouterr().out


BAD_FILES = [
    ("bad.yaml", b"solver: {max_iter: 2\n", "not valid YAML at line 2"),
    ("tag.yaml", b'base: !!python/object/apply:os.system ["touch {marker}"]\n', "not valid YAML"),
    ("bad.json", b"{bad", "bad.json: not valid JSON"),
    ("binary.json", b"\xff\xfe", "binary.json: cannot read the config file"),
    ("base-list.yaml", b"base: [1]\n", "base must be the name of a named config"),
]


@pytest.mark.parametrize("name,content,message", BAD_FILES, ids=[n for n, _, _ in BAD_FILES])
def test_bad_config_files_are_one_line(capsys, tmp_path, name, content, message):
    marker = tmp_path / "PWNED"
    path = tmp_path / name
    path.write_bytes(content.replace(b"{marker}", str(marker).encode()))
    _fails(capsys, ["--config", str(path), "--print-config"], message)
    assert not marker.exists()


DUPLICATE_KEYS = [
    ("top.yaml", b"solver: {max_iter: 3}\nsolver: {base_lr: 1}\n", "top.yaml: duplicate key 'solver' at line 2"),
    ("nested.yaml", b"solver:\n  max_iter: 3\n  base_lr: 0.1\n  max_iter: 4\n",
     "nested.yaml: duplicate key 'max_iter' at line 4"),
    ("deep.yaml", b"model: {overrides: {a: {b: 1, b: 2}}}\n", "deep.yaml: duplicate key 'b'"),
    ("top.json", b'{"solver": {}, "solver": {"max_iter": 4}}', "top.json: duplicate key 'solver'"),
    ("nested.json", b'{"solver": {"max_iter": 3, "max_iter": 4}}', "nested.json: duplicate key 'max_iter'"),
]


@pytest.mark.parametrize("name,content,message", DUPLICATE_KEYS, ids=[n for n, _, _ in DUPLICATE_KEYS])
def test_a_key_given_twice_in_a_config_file_is_refused(capsys, tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    _fails(capsys, ["--config", str(path), "--print-config"], message)


NINE = ", ".join(["*{}"] * 9)
LAUGHS = ("solver:\n  max_iter: [&a [" + ", ".join(['"lol"'] * 9) + "], "
          + ", ".join(f"&{b} [{NINE.format(a, a, a, a, a, a, a, a, a)}]" for a, b in zip("abcdefgh", "bcdefghi")) + "]\n")
ENDLESS_FILES = [
    ("laughs.yaml", LAUGHS, "laughs.yaml: holds more than 100000 values (counting each use of a YAML alias)"),
    ("itself.yaml", "solver: &a {max_iter: *a}\n", "itself.yaml: holds itself (a YAML alias inside its own anchor)"),
    ("list.yaml", "data: &a [*a]\n", "list.yaml: holds itself (a YAML alias inside its own anchor)"),
]


@pytest.mark.parametrize("name,content,message", ENDLESS_FILES, ids=[n for n, _, _ in ENDLESS_FILES])
def test_a_config_file_whose_aliases_never_end_is_one_line(tmp_path, name, content, message):
    """A 600-byte YAML file of nested aliases (9^9 items) ran for ever: in the type check's message,
    in the printed config."""
    path = tmp_path / name
    path.write_text(content)
    proc = subprocess.run([sys.executable, "-m", "entitysam", "train", "--config", str(path), "--print-config"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr == f"error: {tmp_path}/{message}\n", proc.stderr[-500:]


def test_an_override_whose_aliases_never_end_is_one_line(capsys):
    value = LAUGHS.split("max_iter: ", 1)[1].strip()
    _fails(capsys, ["--config", "tiny-stage1", f"solver.max_iter={value}", "--print-config"],
           "override solver.max_iter: holds more than 100000 values")


def test_a_config_file_over_the_size_limit_is_refused_unread(capsys, tmp_path, monkeypatch):
    path = tmp_path / "big.json"
    path.write_text('{"seed": 1}' + " " * 100)
    monkeypatch.setattr(train_config_checks, "MAX_CONFIG_BYTES", 100)
    _fails(capsys, ["--config", str(path), "--print-config"], "big.json: 111 bytes, more than the 100 bytes a config file may hold")


def test_a_yaml_merge_key_may_still_be_overridden(capsys, tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text("base: tiny-stage1\ndefaults: &d {max_iter: 3, base_lr: 0.5}\nsolver:\n  <<: *d\n  max_iter: 5\n")
    data = train_config_checks.read_file(path)
    assert data["solver"] == {"max_iter": 5, "base_lr": 0.5}


OUT_OF_RANGE = [
    ("solver.gamma=-0.1", "solver.gamma must be > 0, got -0.1"),
    ("solver.weight_decay=-0.05", "solver.weight_decay must be >= 0, got -0.05"),
    ("solver.weight_decay_norm=-1", "solver.weight_decay_norm must be >= 0"),
    ("solver.weight_decay_embed=-1", "solver.weight_decay_embed must be >= 0"),
    ("solver.base_lr=-1e-4", "solver.base_lr must be > 0"),
    ("solver.warmup_factor=0", "solver.warmup_factor must be in (0, 1], got 0.0"),
    ("solver.warmup_factor=1.5", "solver.warmup_factor must be in (0, 1]"),
    ("solver.betas=[0.9,1]", "solver.betas[1] must be in [0, 1), got 1.0"),
    ("solver.eps=0", "solver.eps must be > 0"),
    ("solver.backbone_multiplier=-0.1", "solver.backbone_multiplier must be >= 0"),
    ("solver.steps=[-1]", "solver.steps[0] must be >= 0, got -1"),
    ("loss.focal_gamma=-2", "loss.focal_gamma must be >= 0, got -2.0"),
    ("loss.focal_alpha=1.5", "loss.focal_alpha must be in [0, 1]"),
    ("loss.dice_weight=-5", "loss.dice_weight must be >= 0"),
    ("loss.matcher_class=-1", "loss.matcher_class must be >= 0"),
    ("loss.oversample_ratio=0.5", "loss.oversample_ratio must be >= 1"),
    ("loss.importance_sample_ratio=2", "loss.importance_sample_ratio must be in [0, 1]"),
    ("data.flip_prob=1.2", "data.flip_prob must be in [0, 1], got 1.2"),
    ("data.rotation=-15", "data.rotation must be in [0, 180]"),
    ("data.rotation_center=[0.4,1.5]", "data.rotation_center[1] must be in [0, 1]"),
    ("data.rotation_center=[0.6,0.4]", "data.rotation_center[0] must be <= data.rotation_center[1]"),
    ("data.min_scale=0", "data.min_scale must be > 0"),
    ("data.min_scale=5", "data.min_scale must be <= data.max_scale, got 5.0 > 4.0"),
    ("data.temporal_shift=-0.1", "data.temporal_shift must be in [0, 1]"),
    # NaN and infinities, every float field (these were already refused; kept as a guard)
    ("solver.gamma=nan", "solver.gamma must be a finite number"),
    ("solver.betas=[.nan,0.9]", "solver.betas[0] must be a finite number"),
    ("loss.focal_alpha=-inf", "loss.focal_alpha must be a finite number"),
    ("solver.clip_grad_norm=.inf", "solver.clip_grad_norm must be a finite number"),
]


@pytest.mark.parametrize("override,message", OUT_OF_RANGE, ids=[o for o, _ in OUT_OF_RANGE])
def test_numbers_out_of_their_meaningful_range_are_refused(capsys, override, message):
    _fails(capsys, ["--config", "tiny-stage1", override, "--print-config"], message)


def test_the_edges_of_each_range_are_accepted(capsys):
    argv = ["--config", "tiny-stage1", "data.flip_prob=0", "data.rotation=180", "data.temporal_shift=1",
            "data.min_scale=4", "data.rotation_center=[0.5,0.5]", "solver.warmup_factor=1", "solver.betas=[0,0]",
            "solver.weight_decay=0", "solver.backbone_multiplier=0", "solver.clip_grad_norm=-1",
            "loss.focal_gamma=0", "loss.focal_alpha=1", "loss.oversample_ratio=1",
            "loss.importance_sample_ratio=1", "loss.class_weight=0", "--print-config"]
    assert train_cli.main(argv) == 0, capsys.readouterr().err


def test_every_number_in_the_config_has_a_range_rule():
    numbers = {key.split("[")[0] for key, _ in train_config_checks._numbers(TrainConfig())}
    assert numbers and not numbers - set(train_config_checks._RANGES)
    assert not set(train_config_checks._RANGES) - numbers  # a renamed field leaves no stale rule


@pytest.mark.parametrize("name", ["default", *NAMED_CONFIGS])
def test_the_defaults_and_every_named_config_pass_the_checks(name):
    if name == "default":
        validate(TrainConfig())
    else:
        load_config(name)


def test_missing_dataset_is_refused_before_training(capsys, tmp_path):
    out = tmp_path / "run"
    _fails(capsys, ["--config", "tiny-stage1", f"data.root={tmp_path / 'nonexistent'}", "solver.max_iter=1",
                    f"output_dir={out}", "--quiet"], "data.root")
    assert not out.exists()
    (tmp_path / "ds").mkdir()
    _fails(capsys, ["--config", "tiny-stage1", f"data.root={tmp_path / 'ds'}", f"output_dir={out}"],
           "data.json")


@pytest.mark.parametrize("override,expected", [
    ("output_dir=runs/2024_01_15", "runs/2024_01_15"), ("output_dir=2024_01_15", "2024_01_15"),
    ("data.image_dir=007", "007"), ("name=12:30", "12:30"), ("resume=no", "no"), ("model.weights=1.50", "1.50"),
    ("model.weights=~", ""), ("output_dir='a b'", "a b"),
])
def test_a_string_override_is_taken_as_typed(override, expected):
    """Overrides are read as YAML 1.1, which made output_dir=2024_01_15 the folder 20240115,
    data.image_dir=007 the folder 7 and resume=no the string 'False'."""
    cfg = load_config("tiny-stage1", [override])
    node = cfg
    for part in override.split("=")[0].split("."):
        node = getattr(node, part)
    assert node == expected


def test_good_overrides_still_convert(capsys):
    argv = ["--config", "tiny-stage1", "solver.max_iter=1e3", "data.augment=off", "solver.steps=[2,4]",
            "solver.base_lr=1", "--print-config"]
    assert train_cli.main(argv) == 0
    out = capsys.readouterr().out
    assert '"max_iter": 1000' in out and '"augment": false' in out and '"base_lr": 1.0' in out
