"""A synthetic archive written straight into a catalog, for the benchmarks at scale."""

from __future__ import annotations

import time

import numpy as np
from tqdm import tqdm

from storage.catalog import Catalog

VERSION = "bench-model"


def populate(
    catalog: Catalog,
    n_nodules: int,
    seed: int = 0,
    *,
    first_study: int = 0,
    model_version: str = VERSION,
) -> list[str]:
    """Write ``n_nodules`` nodules (4 per study, 2 studies per patient) straight into the tables.

    Random 3 x 64-bit codes in 200 clusters with 8 % of the bits flipped and
    128-d embeddings around the clusters' centres; studies ``2.25.<i + 1>``
    with accession number ``A<i>``, from ``i = first_study``. Returns the
    study UIDs.
    """
    from storage.catalog.schema import nodules, series, studies

    rng = np.random.default_rng(seed)
    centres = rng.integers(0, 2, (200, 192), dtype=np.uint8)
    emb_centres = rng.normal(size=(200, 128)).astype(np.float32)
    n_studies = n_nodules // 4
    study_uids = [f"2.25.{i + 1}" for i in range(first_study, first_study + n_studies)]
    now = time.time()
    chunk = 50_000
    with catalog.engine.begin() as connection:
        for start in tqdm(
            range(0, n_studies, chunk), desc="studies", unit_scale=chunk, leave=False
        ):
            rows = [
                {
                    "study_instance_uid": f"2.25.{i + 1}",
                    "patient_id": f"P{i // 2}",
                    "patient_name": f"Name^{i // 2}",
                    "study_date": f"20{10 + i % 15:02d}0101",
                    "accession_number": f"A{i}",
                    "created_at": now,
                }
                for i in range(start + first_study, min(n_studies, start + chunk) + first_study)
            ]
            connection.execute(studies.insert(), rows)
            connection.execute(
                series.insert(),
                [
                    {
                        "series_instance_uid": r["study_instance_uid"] + ".1",
                        "study_instance_uid": r["study_instance_uid"],
                        "modality": "CT",
                        "state": "indexed",
                        "instance_count": 300,
                        "first_received_at": now,
                        "last_received_at": now,
                        "state_changed_at": now,
                    }
                    for r in rows
                ],
            )
    with catalog.engine.begin() as connection:
        for start in tqdm(range(0, n_nodules, chunk), desc="nodules", unit="rows", leave=False):
            stop = min(n_nodules, start + chunk)
            cluster = rng.integers(0, 200, stop - start)
            bits = centres[cluster] ^ (rng.random((stop - start, 192)) < 0.08).astype(np.uint8)
            codes = np.packbits(bits, axis=1)
            emb = emb_centres[cluster] + rng.normal(0, 0.3, (stop - start, 128)).astype(np.float32)
            size = (cluster % 7 + 1).astype(int)
            rows = []
            for j, n in enumerate(range(start, stop)):
                study = study_uids[n // 4]
                rows.append(
                    {
                        "series_instance_uid": study + ".1",
                        "study_instance_uid": study,
                        "model_version": model_version,
                        "nodule_index": n % 4,
                        "center_x": 0.0,
                        "center_y": 0.0,
                        "center_z": 0.0,
                        "diameter_mm": 10.0,
                        "long_axis_mm": 11.0,
                        "volume_mm3": 520.0,
                        "mean_hu": 20.0,
                        "peak_hu": 60.0,
                        "texture": "solid",
                        "laterality": "left",
                        "confidence": 0.9,
                        "size_class": int(size[j]),
                        "predicted_size_class": int(size[j]),
                        "predicted_texture": "solid",
                        "shallow": codes[j, :8].tobytes(),
                        "middle": codes[j, 8:16].tobytes(),
                        "deep": codes[j, 16:].tobytes(),
                        "embedding": emb[j].tobytes(),
                        "thumbnail": None,
                        "created_at": now,
                    }
                )
            connection.execute(nodules.insert(), rows)
    return study_uids
