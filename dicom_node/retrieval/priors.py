"""Same-patient priors: the same lesion in the patient's earlier scans, and its growth.

A patient lies differently on the table at each visit: raw patient
coordinates of two scans do not name the same place (a 29 mm table shift
made an unchanged nodule "-45 %"). For each earlier series of the patient,
the prior's compact image (stored with its nodules,
``NoduleCatalog.registration_image``) is registered to the current one
(``ai.registration.register``: rigid, then affine on the lungs), and
``ai.followup.match_nodules`` pairs the nodules of the two series after
registration (Hungarian, gated) and measures the growth: diameter in mm and
%, volume in %, volume doubling time. Series analysed before the images
were kept are matched on raw coordinates with a wider gate, as before.

Registration costs seconds (SimpleITK), so it runs once per pair of series,
not per nodule; ``ai`` (torch, SimpleITK) is imported only when a prior exists.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Sequence

from dicom_node.retrieval.search import OwnPrior
from storage.catalog import Catalog, NoduleRecord

__all__ = ["REGISTERED_GATE_MM", "UNREGISTERED_GATE_MM", "same_patient_priors"]

logger = logging.getLogger(__name__)

#: Centres at most this far apart after registration (plus half the larger
#: diameter, ``ai.followup.match_nodules``) may be the same nodule.
REGISTERED_GATE_MM = 10.0
#: The same without a registration (a series analysed before images were kept).
UNREGISTERED_GATE_MM = 30.0


def _days(before: str | None, after: str | None) -> float | None:
    """Days between two DICOM dates, or None when either is missing or malformed."""
    try:
        first = datetime.datetime.strptime(before or "", "%Y%m%d")
        second = datetime.datetime.strptime(after or "", "%Y%m%d")
    except ValueError:
        return None
    return float((second - first).days) or None


def _earlier(nodule: NoduleRecord, current: NoduleRecord) -> bool:
    """``nodule`` is of another study of the patient, dated before ``current``'s."""
    return nodule.study_instance_uid != current.study_instance_uid and (
        current.study_date is None or (nodule.study_date or "") < current.study_date
    )


def same_patient_priors(
    catalog: Catalog, model_version: str, queries: Sequence[NoduleRecord]
) -> dict[int, tuple[OwnPrior, ...]]:
    """The same lesion in the patient's earlier studies, for each query nodule.

    Parameters
    ----------
    catalog : Catalog
    model_version : str
        The nodules compared are this model version's.
    queries : sequence of NoduleRecord
        Nodules of one or more series; each series is matched whole against
        each earlier series of its patient, so a nodule asked alone is paired
        as it is in its series' report.

    Returns
    -------
    dict
        ``{nodule id: priors}``, at most one per earlier study (the nearest
        after registration), oldest first; nodules without a prior are absent.
    """
    found: dict[int, list[OwnPrior]] = {}
    by_series: dict[str, list[NoduleRecord]] = {}
    for query in queries:
        if query.patient_id:
            by_series.setdefault(query.series_instance_uid, []).append(query)
    for series_uid, asked in by_series.items():
        first = asked[0]
        assert first.patient_id is not None
        earlier: dict[str, list[NoduleRecord]] = {}
        for nodule in catalog.nodules.of(model_version=model_version, patient_id=first.patient_id):
            if _earlier(nodule, first):
                earlier.setdefault(nodule.series_instance_uid, []).append(nodule)
        if not earlier:
            continue
        current = catalog.nodules.of(model_version=model_version, series_instance_uid=series_uid)
        wanted = {q.id for q in asked}
        for prior_series, prior in earlier.items():
            for nodule, own in _pairs(catalog, series_uid, current, prior_series, prior):
                if nodule.id in wanted:
                    found.setdefault(nodule.id, []).append(own)
    return {
        nodule_id: tuple(sorted(_one_per_study(priors), key=lambda p: p.study_date or ""))
        for nodule_id, priors in found.items()
    }


def _one_per_study(priors: list[OwnPrior]) -> list[OwnPrior]:
    best: dict[str, OwnPrior] = {}
    for prior in priors:
        kept = best.get(prior.study_instance_uid)
        if kept is None or prior.center_distance_mm < kept.center_distance_mm:
            best[prior.study_instance_uid] = prior
    return list(best.values())


def _pairs(
    catalog: Catalog,
    series_uid: str,
    current: Sequence[NoduleRecord],
    prior_series: str,
    prior: Sequence[NoduleRecord],
) -> list[tuple[NoduleRecord, OwnPrior]]:
    """Current nodules paired with a prior series' after registration, with their growth."""
    from ai.followup import match_nodules
    from ai.registration import Registration, RegistrationImage, register

    current_image = catalog.nodules.registration_image(series_uid)
    prior_image = catalog.nodules.registration_image(prior_series)
    registration = Registration.identity()
    registered = False
    if current_image is None or prior_image is None:
        logger.info("no registration image for one of two series: matching on raw coordinates")
    else:
        try:
            registration = register(
                RegistrationImage.from_bytes(current_image),
                RegistrationImage.from_bytes(prior_image),
            )
            registered = True
        except (RuntimeError, ValueError) as exc:  # SimpleITK gave up, or unreadable bytes
            logger.warning("registration failed (%s): matching on raw coordinates", exc)
    interval = _days(prior[0].study_date, current[0].study_date)
    changes = match_nodules(
        current,
        prior,
        registration,
        max_distance_mm=REGISTERED_GATE_MM if registered else UNREGISTERED_GATE_MM,
        interval_days=interval,
    )
    pairs = []
    for change in changes:
        if change.status != "matched" or change.current_index is None:
            continue
        assert change.prior_index is not None and change.distance_mm is not None
        before = prior[change.prior_index]
        growth = change.diameter_change_mm or 0.0
        pairs.append(
            (
                current[change.current_index],
                OwnPrior(
                    study_instance_uid=before.study_instance_uid,
                    study_date=before.study_date,
                    nodule=before,
                    center_distance_mm=change.distance_mm,
                    growth_mm=growth,
                    growth_percent=change.diameter_change_pct or 0.0,
                    volume_change_percent=change.volume_change_pct,
                    volume_doubling_days=change.volume_doubling_days,
                    registered=registered,
                ),
            )
        )
    logger.info(
        "series matched to a prior series%s: %d of %d nodules paired",
        " after registration" if registered else " on raw coordinates",
        len(pairs),
        len(current),
    )
    return pairs
