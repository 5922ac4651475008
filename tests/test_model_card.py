"""The typed model card (`training.card`): older cards migrate on read, newer and broken ones are one line,
sampler overrides leave the card alone, and `load_model` is what forecast and speed read checkpoints with."""

from __future__ import annotations

import copy

import pytest

from conftest import REPO
from gencast_rmmd.config import DataFileConfig, config_to_dict, load_config
from gencast_rmmd.errors import UserInputError
from gencast_rmmd.forecast.build import predictor_from_card, with_sampler_overrides
from gencast_rmmd.training.card import CARD_VERSION, DEFAULT_PARAMS_GROUP, ModelCard, read_card

CARD = {
    "kind": "student", "method": "rmmd", "params_group": "student",
    "config": {"data": config_to_dict(load_config(REPO / "configs" / "data" / "test.yaml", DataFileConfig,
                                                  ["data.levels=[500,850]"]).data), "loss": {}},
    "model": {"latent_size": 32}, "layout": {}, "normalizer": {},
    "grid": {"latitude": [-45.0, 45.0], "longitude": [0.0, 90.0, 180.0, 270.0],
             "noise": {"max_wavenumber": 1, "spectral_exponent": 0.0}},
    "sampler": {"name": "student_kstep", "config": {"steps": 2}, "nfe_per_step": 2},
    "data_source": "data/demo.zarr", "teacher_checkpoint": {"params_sha256": "abc"},
}


def test_a_card_reads_typed_and_keeps_its_provenance():
    card = read_card({"task": CARD})
    assert isinstance(card, ModelCard) and card.version == CARD_VERSION
    assert card.kind == "student" and card.method == "rmmd" and card.params_group == "student"
    assert card.grid.axes[0].tolist() == [-45.0, 45.0] and card.sampler.nfe_per_step == 2
    assert card.model_extra == {"teacher_checkpoint": {"params_sha256": "abc"}}
    assert card.data_config("elsewhere.zarr").path == "elsewhere.zarr" and card.data_config().levels == (500, 850)
    assert card.params({"student": 1, "aux": 2}) == 1


def test_an_older_card_migrates_to_the_meaning_its_missing_fields_had():
    """Teachers written before `params_group` and `grid.noise` existed: the denoiser group, GenCast's noise."""
    older = copy.deepcopy(CARD)
    older.update(kind="teacher", method=None)
    del older["params_group"], older["grid"]["noise"], older["method"]
    card = read_card({"task": older})
    assert card.params_group == DEFAULT_PARAMS_GROUP == "denoiser" and card.grid.noise is None
    assert card.version == CARD_VERSION


@pytest.mark.parametrize("meta, phrase", [
    ({}, "carries no model card"),
    ({"task": {**CARD, "version": CARD_VERSION + 1}}, "newer than this gencast-rmmd reads .* upgrade"),
    ({"task": {key: value for key, value in CARD.items() if key != "sampler"}}, "model card: sampler: Field required"),
    ({"task": {**CARD, "kind": "oracle"}}, "model card: kind"),
    ({"task": {**CARD, "grid": {"latitude": [0.0]}}}, "model card: grid.longitude: Field required"),
])
def test_a_card_that_cannot_be_read_is_one_line_naming_the_problem(meta, phrase):
    with pytest.raises(UserInputError, match=phrase) as error:
        read_card(meta, "run/checkpoints/step_2")
    assert "\n" not in str(error.value)


def test_sampler_overrides_make_a_new_card_and_are_checked():
    card = read_card({"task": CARD})
    changed = with_sampler_overrides(card, ["steps=4"])
    assert changed.sampler.config == {"steps": 4} and card.sampler.config == {"steps": 2}
    assert with_sampler_overrides(card, []) is card
    with pytest.raises(UserInputError, match="expected key=value of the checkpoint's sampler config, one of steps"):
        with_sampler_overrides(card, ["student.steps=4"])


def test_a_sampler_this_version_does_not_build_is_one_line_before_any_network_is_built():
    card = read_card({"task": {**CARD, "sampler": {"name": "euler_99", "config": {}, "nfe_per_step": 99}}})
    with pytest.raises(UserInputError, match="sampler 'euler_99' is not one this gencast-rmmd builds"):
        predictor_from_card(card)


def test_a_writer_s_card_is_checked_before_it_is_saved():
    """Every writer passes its record through `checked_card`: a malformed one is an internal error (exit 1)."""
    from gencast_rmmd.training.card import checked_card

    assert checked_card(CARD) is CARD
    with pytest.raises(ValueError, match="the model card being written: sampler: Field required"):
        checked_card({key: value for key, value in CARD.items() if key != "sampler"})
