"""The installed package: bundled spaces run by name, `spaces`, `init`, dir(kronsearch), one version everywhere."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

import kronsearch
from kronsearch.bundled import SPACES_DIR, bundled_spaces
from kronsearch.schema import BACKEND, DATA, MODEL, SEARCH, SPACE, TOP, TRAIN
from kronsearch.search import run_search
from tests.test_cli import assert_error

REPO = Path(__file__).resolve().parents[1]


def test_dir_lists_every_public_name_before_it_is_imported():
    names = dir(kronsearch)
    assert {"load_model", "OneRound", "kronify", "__version__"} <= set(names)
    assert set(kronsearch.__all__) <= set(names)


def test_the_version_is_written_once_and_the_changelog_names_it():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "kronsearch.__version__"}
    headings = re.findall(r"^## \[?(\d+\.\d+\.\d+)", (REPO / "CHANGELOG.md").read_text(), re.MULTILINE)
    assert headings[0] == kronsearch.__version__


def test_the_clone_s_search_spaces_are_the_bundled_files_not_copies():
    bundled = bundled_spaces()
    assert {"vit", "timm_vit", "lenet5", "linear", "vit_cifar100"} <= set(bundled)
    for name, path in bundled.items():
        assert (REPO / "search_spaces" / f"{name}.yaml").resolve() == path.resolve()
    assert project_package_data() == ["spaces/*.yaml"] and all(p.parent == SPACES_DIR for p in bundled.values())


def project_package_data() -> list[str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["kronsearch"]


def test_a_bundled_space_runs_by_name_from_an_empty_folder(workdir):
    summary = run_search("vit", dry_run=True)
    assert "decomposed layers" in summary.plan_text
    assert summary.message == f"dry run: {SPACES_DIR / 'vit.yaml'} is valid; nothing trained"


def test_a_name_that_is_neither_a_file_nor_bundled_lists_the_bundled_spaces(cli, workdir):
    assert_error(cli("run", "vitt"), 2, "vitt: no such space file", "bundled: lenet5, linear, timm_vit, vit")


def test_a_file_of_a_bundled_space_s_name_wins_over_the_bundled_one(cli, workdir, write_space):
    write_space("vit.yaml", name="mine")
    assert run_search("vit.yaml", dry_run=True).message == "dry run: vit.yaml is valid; nothing trained"


def test_spaces_lists_the_bundled_spaces_with_what_they_train(cli):
    result = cli("spaces")
    assert result.exit_code == 0, result.output
    assert "vit           A small ViT on scikit-learn's bundled digits\n" in result.stdout
    assert "kronsearch spaces copy NAME FILE" in result.stdout


def test_spaces_copy_writes_the_bundled_file_to_edit(cli, workdir):
    result = cli("spaces", "copy", "vit", "my.yaml")
    assert result.exit_code == 0 and result.stdout == "wrote my.yaml\n"
    assert (workdir / "my.yaml").read_bytes() == (SPACES_DIR / "vit.yaml").read_bytes()


def test_spaces_copy_keeps_an_existing_file_unless_forced(cli, workdir):
    (workdir / "vit.yaml").write_text("mine")
    assert_error(cli("spaces", "copy", "vit"), 2, "vit.yaml exists; pass --force")
    assert (workdir / "vit.yaml").read_text() == "mine"
    assert cli("spaces", "copy", "vit", ".", "--force").exit_code == 0
    assert (workdir / "vit.yaml").read_bytes() == (SPACES_DIR / "vit.yaml").read_bytes()


def test_spaces_copy_of_an_unknown_name_lists_the_bundled_ones(cli, workdir):
    assert_error(cli("spaces", "copy", "resnet", "x.yaml"), 2, "'resnet' is not a bundled space; bundled: lenet5")
    assert not (workdir / "x.yaml").exists()


FACTORY = '''
from torch import nn


def build(input_shape, num_classes, hidden=48):
    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0] * input_shape[1] * input_shape[2], hidden),
                         nn.ReLU(), nn.Linear(hidden, num_classes))
'''


def test_init_writes_a_space_for_a_model_factory_that_a_dry_run_accepts(cli, workdir):
    (workdir / "init_factory_model.py").write_text(FACTORY)
    result = cli("init", "my.yaml", "--model", "init_factory_model:build")
    assert result.exit_code == 0, result.output
    assert result.stdout == "wrote my.yaml; check it with: kronsearch run my.yaml --dry-run\n"
    text = (workdir / "my.yaml").read_text()
    assert "factory: 'init_factory_model:build'" in text and "#   1: 48x64" in text and "#   3: 10x48" in text
    dry = cli("run", "my.yaml", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "dry run: my.yaml is valid; nothing trained" in dry.stdout


def test_init_without_a_model_starts_from_the_built_in_mlp(workdir):
    from kronsearch.starter import write_starting_space

    path = write_starting_space("first-try.yaml")
    space = yaml.safe_load(path.read_text())
    assert space["name"] == "first-try" and space["model"]["name"] == "mlp"
    assert run_search(path, dry_run=True).message.startswith("dry run:")


def test_init_comments_every_key_of_the_schema(workdir):
    from kronsearch.starter import starting_space

    text = starting_space("s.yaml")
    for table in (TOP, DATA, MODEL, TRAIN, SEARCH, BACKEND, SPACE):
        for key in table:
            lines = [line for line in text.splitlines() if re.match(rf"\s*(# )?{key}:", line)]
            assert lines and all("#" in line.split(f"{key}:", 1)[1] or line.lstrip().startswith("#")
                                 or line.rstrip().endswith(":") for line in lines), key


def test_init_with_an_unimportable_model_names_the_key_and_writes_nothing(cli, workdir):
    result = cli("init", "my.yaml", "--model", "no_such_module_here:build")
    assert_error(result, 2, "model.factory", "no_such_module_here")
    assert not (workdir / "my.yaml").exists()


def test_init_keeps_an_existing_file(cli, workdir):
    (workdir / "my.yaml").write_text("mine")
    assert_error(cli("init", "my.yaml"), 2, "my.yaml exists; pass --force")
    assert (workdir / "my.yaml").read_text() == "mine"


@pytest.mark.parametrize("shape, expected", [((64, 48), ["2x2", "4x4", "8x8"]), ((10, 30), ["2x2", "1x2", "2x1"])])
def test_init_offers_blocks_that_divide_the_layers(shape, expected):
    from kronsearch.layers.blocks import format_block
    from kronsearch.starter import choose_blocks

    assert sorted(format_block(b) for b in choose_blocks({"fc": shape})) == sorted(expected)
