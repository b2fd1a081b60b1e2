"""model.yaml: version policies pick the right versions; mistakes are refused with where they are."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.registry.model_settings import (
    LatestPolicy,
    ModelSettings,
    SettingsInvalid,
    SpecificPolicy,
    VersionPolicy,
    read_model_settings,
)

versions = st.sets(st.integers(min_value=1, max_value=1_000), max_size=20)


@given(versions, st.integers(min_value=1, max_value=25))
def test_latest_n_serves_the_n_highest(available: set[int], n: int) -> None:
    chosen = VersionPolicy(latest=LatestPolicy(num_versions=n)).select(available)
    assert chosen == set(sorted(available)[-n:]) if available else chosen == set()


@given(versions, versions)
def test_specific_serves_only_what_is_there(available: set[int], wanted: set[int]) -> None:
    chosen = VersionPolicy(specific=SpecificPolicy(versions=sorted(wanted) or [1])).select(available)
    assert chosen == available & (wanted or {1})


def test_the_default_is_latest_one_and_all_means_all() -> None:
    assert ModelSettings().version_policy.select({1, 2, 3}) == {3}
    assert VersionPolicy.model_validate({"all": {}}).select({1, 2, 3}) == {1, 2, 3}


def test_two_policies_at_once_are_refused() -> None:
    with pytest.raises(ValueError, match="one of latest, all, specific"):
        VersionPolicy.model_validate({"all": {}, "latest": {"num_versions": 2}})


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("max_batch_sise: 8\n", "max_batch_sise"),
        ("dynamic_batching: {max_queue_size: -1}\n", "dynamic_batching.max_queue_size"),
        ("version_policy: {latest: {num_versions: 0}}\n", "version_policy.latest.num_versions"),
        ("- just\n- a list\n", "mapping"),
        ("max_batch_size: [\n", "cannot be read"),
    ],
)
def test_mistakes_are_refused_naming_the_place(tmp_path: Path, text: str, where: str) -> None:
    (tmp_path / "model.yaml").write_text(text)
    with pytest.raises(SettingsInvalid, match=f"model.yaml: .*{where}"):
        read_model_settings(tmp_path)


def test_no_file_means_defaults(tmp_path: Path) -> None:
    assert read_model_settings(tmp_path) == ModelSettings()
