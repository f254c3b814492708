import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import RAW_PARAMS, merged
from tubervae.config import FAMILIES, ConfigError, Params, base_family, is_guided, load_params, parse_params

ROOT = Path(__file__).resolve().parents[1]


def test_project_params_file_is_valid():
    params = load_params(ROOT / "params.yaml")
    assert set(params.search.spaces) == {"beta_vae", "beta_tcvae", "cbeta_vae", "guided_beta_vae"}
    assert params.search.spaces["cbeta_vae"].c_max == [6.0, 12.0]


def test_defaults_apply_to_missing_sections():
    params = parse_params({"train": {"steps": 5}})
    assert params.train.steps == 5
    assert params.train.batch_size == Params().train.batch_size


@pytest.mark.parametrize(
    "raw, fragment",
    [
        ({"train": {"stepz": 5}}, "train: unknown key(s) ['stepz']"),
        ({"trian": {}}, "unknown section(s) ['trian']"),
        ({"train": {"steps": "many"}}, "train.steps: expected int, got 'many'"),
        ({"train": {"steps": 0}}, "train.steps: 0 is below the minimum 1"),
        ({"train": {"lr": -1.0}}, "train.lr: -1.0 must be greater than 0.0"),
        ({"train": {"rec_kind": "l1"}}, "train.rec_kind: 'l1' is not one of ['bernoulli', 'gaussian']"),
        ({"train": {"steps": True}}, "train.steps: expected int, got True"),
        ({"preprocess": {"image_size": 48}}, "preprocess.image_size: 48 is not one of"),
        ({"data": {"good_fraction": 1.0}}, "data.good_fraction: 1.0 must be less than 1.0"),
        ({"search": {"spaces": {"vae": {}}}}, "unknown family 'vae'"),
        (
            {"search": {"spaces": {"beta_vae": {"beta": [4, 2]}}}},
            "search.spaces.beta_vae.beta: low 4.0 is above high 2.0",
        ),
        ({"search": {"spaces": {"beta_vae": {"c_max": [1, 2]}}}}, "only cbeta_vae searches C_max"),
        (
            {"search": {"spaces": {"cbeta_vae": {"beta": [700, 800], "c_max": "x"}}}},
            "cbeta_vae.c_max: expected list, got 'x'",
        ),
        ({"search": {"spaces": {"beta_vae": {"grid": [{"beta": 1, "c_max": 2}]}}}}, "grid[0]: expected keys ['beta']"),
        ({"search": {"seeds": 2}, "udr": {"n_partners": 3}}, "udr.n_partners: 3 partners need at least 4 seeds"),
        ({"preprocess": {"guide_fraction": 1.0}}, "preprocess.guide_fraction: 1.0 must be less than 1.0"),
        ({"preprocess": {"guide_fraction": -0.1}}, "preprocess.guide_fraction: -0.1 is below the minimum 0.0"),
        (
            {"search": {"spaces": {"guided_beta_vae": {"beta": [1, 4]}}}},
            "search.spaces.guided_beta_vae.guide_weight: guided_beta_vae searches the head's weight",
        ),
        (
            {"search": {"spaces": {"guided_beta_vae": {"guide_weight": [0, 100]}}}},
            "guided_beta_vae.guide_weight: the low end must be > 0, got 0.0",
        ),
        ({"search": {"spaces": {"beta_vae": {"guide_weight": [1, 2]}}}}, "only guided families search it"),
        (
            {"search": {"spaces": {"guided_beta_vae": {"guide_weight": [1, 2], "grid": [{"beta": 1}]}}}},
            "grid[0]: expected keys ['beta', 'guide_weight']",
        ),
    ],
)
def test_bad_values_name_the_key_the_value_and_the_rule(raw, fragment):
    with pytest.raises(ConfigError) as info:
        parse_params(raw)
    assert fragment in str(info.value)


def test_integral_float_is_accepted_as_int_and_int_as_float():
    params = parse_params({"train": {"steps": 10.0, "lr": 1}})
    assert params.train.steps == 10 and isinstance(params.train.steps, int)
    assert params.train.lr == 1.0 and isinstance(params.train.lr, float)


def test_cli_rejects_a_bad_params_file_with_exit_code_2(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump({"preprocess": {"crop_fraction": 1.5}}))
    result = subprocess.run(
        [sys.executable, "-m", "tubervae.cli", "--params", str(bad), "preprocess"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "preprocess.crop_fraction: 1.5 is above the maximum 1.0" in result.stderr
    assert not (tmp_path / "data").exists()  # nothing written


def test_cli_help_lists_every_stage():
    result = subprocess.run([sys.executable, "-m", "tubervae.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for stage in ("raw", "preprocess", "train"):
        assert stage in result.stdout


def test_cbeta_vae_anneals_capacity_over_all_of_training_by_default():
    """The thesis raises C from 0 to C_max over the whole run, in the default and in params.yaml alike."""
    from tubervae.training.setting import Setting

    assert Params().train.anneal_fraction == 1.0
    project = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    assert project.train.anneal_fraction == 1.0
    loss = Setting("cbeta_vae", 700.0, 6.0).loss(project.train, dataset_size=100)
    assert loss.hyperparameters["anneal_steps"] == project.train.steps


def _profile_overrides(path: Path) -> dict[str, str]:
    """`key=value` lines of a profile file, as `make thesis` / `make cpu-long` pass them to `dvc exp run -S`;
    a key set twice fails (DVC would apply the last without a word)."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    pairs = [line.split("=", 1) for line in lines if line]
    keys = [key for key, _ in pairs]
    assert len(set(keys)) == len(keys), f"{path.name} sets {sorted({k for k in keys if keys.count(k) > 1})} twice"
    return dict(pairs)


@pytest.mark.parametrize("profile", sorted((ROOT / "profiles").glob("*.txt")), ids=lambda p: p.stem)
def test_every_profile_overrides_existing_keys_with_valid_values(profile):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    overrides = _profile_overrides(profile)
    assert overrides, f"{profile.name} sets nothing"
    for dotted, text in overrides.items():
        *parents, leaf = dotted.split(".")
        node = raw
        for key in parents:
            node = node[key]
        assert leaf in node, f"{profile.name}: {dotted} is not a key of params.yaml (a typo adds a new one)"
        node[leaf] = yaml.safe_load(text)  # how DVC parses an -S value
    params = parse_params(raw)
    assert params.search.seeds == raw["search"]["seeds"]


def test_make_targets_read_their_profiles():
    makefile = (ROOT / "Makefile").read_text()
    for profile in (ROOT / "profiles").glob("*.txt"):
        assert f"$(call profile_overrides,{profile.stem})" in makefile


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("train:\n  steps: 40\n  steps: 4000\n", "duplicate key 'steps' (lines 2 and 3)"),
        ("train: {steps: 3}\ndata: {}\ntrain: {lr: 0.1}\n", "duplicate key 'train' (lines 1 and 3)"),
        ("search:\n  spaces:\n    beta_vae: {beta: [1, 2], beta: [2, 3]}\n", "duplicate key 'beta'"),
        ("", "the file is empty"),
        ("# only a comment\n", "the file is empty"),
        ("- train\n- data\n", "expected a mapping of sections (data:, train:, ...), got a list"),
        ("just words\n", "expected a mapping of sections (data:, train:, ...), got a str"),
        ("train: [\n", "not valid YAML"),
    ],
)
def test_a_settings_file_is_read_strictly(tmp_path, text, fragment):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_params(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and fragment in message
    assert "\n" not in message


def test_the_cli_refuses_a_duplicate_key_in_one_line_before_any_work(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("data:\n  n_images: 40\n  n_images: 4000\n")
    result = subprocess.run(
        [sys.executable, "-m", "tubervae.cli", "--root", str(tmp_path), "raw"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"tubervae: invalid setting: {bad}: duplicate key 'n_images' (lines 2 and 3): keep one, since only the "
        "last would count"
    )
    assert not (tmp_path / "data").exists()


def test_guided_families_are_named_after_their_base_family():
    assert [f for f in FAMILIES if is_guided(f)] == ["guided_beta_vae", "guided_beta_tcvae"]
    assert all(base_family(f) in FAMILIES and not is_guided(base_family(f)) for f in FAMILIES)
    space = parse_params(
        {
            "search": {
                "spaces": {"guided_beta_vae": {"guide_weight": [10, 1000], "grid": [{"beta": 2, "guide_weight": 50}]}}
            }
        }
    ).search.spaces["guided_beta_vae"]
    assert space.guide_weight == [10.0, 1000.0] and space.grid == [{"beta": 2.0, "guide_weight": 50.0}]
    assert parse_params({}).preprocess.guide_fraction == 0.5


def test_search_objective_elbo_needs_no_pruner():
    with pytest.raises(ConfigError, match=r"search\.pruner 'median' judges trials part-way by their UDR"):
        parse_params(merged(RAW_PARAMS, search={"objective": "elbo", "pruner": "median"}))
