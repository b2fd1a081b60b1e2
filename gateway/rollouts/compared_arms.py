"""A rollout's shadow comparisons as per-arm totals, so they reach the analysis' leader with the arms'.

A rollout with ``--max-divergence`` keeps its candidate as a shadow of the stable arm's requests
(:meth:`gateway.rollouts.control.Rollouts.set_canary`, ``compared``); the shadow mirror counts the
copies it compared and those whose answer differed. Each (primary, shadow) pair is published as
one more arm of the shadow's version, named :func:`compared_arm`, whose "requests" are the compared
copies and whose "errors" the disagreements: the store, the per-process differences and the
restart handling of the arms' totals then carry them unchanged.
"""

from __future__ import annotations

from gateway.rollouts.shadow import ShadowFigures
from gateway.state.arm_totals_record import StoredArm


def compared_arm(primary_version: int) -> str:
    """The arm name of a shadow's comparisons against ``primary_version``'s answers."""
    return f"compared-with-{primary_version}"


def compared_arms(every_figures: list[ShadowFigures]) -> list[StoredArm]:
    """Each shadow's comparisons since this process began, as arms (those that compared anything)."""
    arms = []
    for figures in every_figures:
        with figures.lock:
            compared, disagreed = figures.compared, figures.disagreed
        if compared:
            arms.append(StoredArm(figures.model, figures.shadow_version, compared_arm(figures.primary_version),
                                  compared, disagreed))  # fmt: skip
    return arms
