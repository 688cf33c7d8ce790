"""Search settings of a block mix of 3-5 models: which settings apply, and the checks that name the key.

A search mixes 3-5 models when ``models.c`` (and then ``models.d``,
``models.e``) is set. Its space is given per chain step (``space.steps``,
step k adds model k+1: ``{"ranges": ..., "frozen": ..., "groups": ...}``)
and as whole frozen blocks (``space.frozen_shares``: block -> one share per
model), not with the two-model ``space.ranges``/``frozen``/``groups``/
``search_base``. Stop limits count per chain step: the run stops after
``(N - 1) x stop.max_evaluations`` evaluations, or ``(N - 1) x
stop.patience`` without a new best (the two-model numbers per 27
dimensions, as ``mix-search`` and the N-model demo count them).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from ..recipe_n import MAX_MODELS
from .stopping import StopSettings

if TYPE_CHECKING:
    from .settings import SearchSettings

ROLES: tuple[str, ...] = ("a", "b", "c", "d", "e")


def check_models_n(settings: "SearchSettings", prefix: str = "") -> None:
    """SettingsError naming the key when the model list or the space settings do not fit the number of models."""
    from .settings import SettingsError

    models = settings.models
    given = [getattr(models, role) for role in ROLES]
    for index in range(2, len(ROLES)):
        if given[index] and not all(given[:index]):
            missing = next(ROLES[j] for j in range(index) if not given[j])
            raise SettingsError(
                f"{prefix}setting models.{ROLES[index]} is set but models.{missing} is not; "
                f"models are mixed in the order {', '.join(ROLES)} (up to {MAX_MODELS})"
            )
    space = settings.space
    if models.count > 2:
        two_model = [key for key, value in (("space.ranges", space.ranges), ("space.frozen", space.frozen),
                                           ("space.groups", space.groups), ("space.search_base", space.search_base)) if value]
        if two_model:
            raise SettingsError(
                f"{prefix}setting {two_model[0]} is for two models; a {models.count}-model search takes space.steps "
                "(ranges/frozen/groups per chain step: step k adds model k+1) and space.frozen_shares"
            )
        if len(space.steps) > models.count - 1:
            raise SettingsError(
                f"{prefix}setting space.steps has {len(space.steps)} entries; {models.count} models have {models.count - 1} chain steps"
            )
    elif space.steps or space.frozen_shares:
        key = "space.steps" if space.steps else "space.frozen_shares"
        raise SettingsError(f"{prefix}setting {key} is for a mix of 3-5 models (models.c ...); a two-model search takes space.ranges/frozen/groups")


def stop_for(settings: "SearchSettings") -> StopSettings:
    """The stop settings the run uses: the limits per chain step times N - 1 (unchanged for two models)."""
    steps = settings.models.count - 1
    stop = settings.stop
    if steps == 1:
        return stop
    return dataclasses.replace(
        stop,
        max_evaluations=stop.max_evaluations * steps,
        patience=stop.patience * steps if stop.patience is not None else None,
    )
