#!/usr/bin/env bash
# End-to-end demo on the embedded default (PostgreSQL under LENSCAT_HOME, default ~/.lenscat).
# Safe to run twice: every step is idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=demo-out
CATS=tests/data/catalogs
mkdir -p "$OUT"
step() { printf '\n=== %s\n' "$*"; }

step "1. Database: embedded PostgreSQL + pgvector, schema by alembic"
lenscat db upgrade
lenscat db status

step "2. Simulate a DECaLS-like catalogue (200,000 sources + a deflector at each known lens in the footprint)"
[ -f "$OUT/sim_catalog.fits" ] || lenscat simulate catalog --n 200000 --seed 42 \
    --lenses-from "$CATS/lenscat_catalog.csv.gz" --out "$OUT/sim_catalog.fits"

step "3. Ingest it (binary COPY of new rows; a second run changes nothing)"
lenscat ingest sources "$OUT/sim_catalog.fits" --survey demo-decals
lenscat ingest sources "$OUT/sim_catalog.fits" --survey demo-decals

step "4. Bad input is reported by file, row and column, and kept in ingest_rejects"
cat > "$OUT/bad_rows.csv" <<'CSV'
objid,ra,dec,mag_r
good-1,150.1,2.2,20.1
nan-ra,nan,2.2,20.1
far-south,150.1,-95,20.1
good-1,150.2,2.3,20.2
sexagesimal,10:00:30.0,+02:15:00,19.9
CSV
lenscat ingest sources "$OUT/bad_rows.csv" --survey demo-bad || true

step "5. Literature lens lists: the community catalogue (32,838) and Stein et al. 2022's new candidates"
lenscat ingest literature "$CATS/lenscat_catalog.csv.gz" --catalog lenscat-1.1.3 \
    --citation "Vujeva et al. 2024, lenscat community catalogue v1.1.3"
lenscat ingest literature "$CATS/stein2021_new_lenses.tsv" --catalog stein2022-new \
    --citation "Stein et al. 2022, ApJ 932, 107"

step "6. Cross-match within 5 arcsec (nearest = match, others = neighbours), first rows"
lenscat crossmatch --catalog lenscat-1.1.3 --radius 5arcsec --limit 8
lenscat crossmatch --catalog stein2022-new --radius 5arcsec --quiet

step "7. Cone search around the Cosmic Horseshoe (J1148+1930), 30 arcsec"
lenscat cone 11:48:33.1 +19:30:03 30arcsec --limit 5

step "8. SQL for users (read-only): matched lenses per catalogue and grade"
lenscat sql "SELECT l.catalog, l.grade, count(*) AS lenses,
                    count(x.source_id) AS matched,
                    round(avg(x.separation_arcsec)::numeric, 3) AS mean_sep_arcsec
             FROM literature_lenses l
             LEFT JOIN crossmatches x ON x.lens_id = l.lens_id AND x.is_nearest
             GROUP BY 1, 2 ORDER BY 1, 2"
lenscat sql "DELETE FROM sources" || echo "(a write is refused, as it should be)"

step "9. Simulate a DECaLS-like imaging survey with lenstronomy: 2,000 g,r,z cutouts, 3% lenses"
[ -f "$OUT/sim_survey.h5" ] || lenscat simulate survey --n 2000 --lens-fraction 0.03 --seed 7 \
    --out "$OUT/sim_survey.h5"

step "10. Ingest it (catalogue + cutout references; the simulation truth goes into the extra JSON)"
lenscat ingest sources "$OUT/sim_survey.h5" --survey demo-images --keep-extra

step "11. Self-supervised encoder (MoCo-v2, Stein et al. augmentations), small enough for a CPU"
if [ -n "$(lenscat sql "SELECT encoder_id FROM encoders WHERE encoder = 'demo-moco'" --format csv | tail -n +2)" ]; then
    echo "encoder demo-moco exists (retraining with the same seed would give the same checkpoint)"
else
    # resnet-small's CPU recipe (docs/benchmarks.md): 15 epochs, crop 48, lr 0.2, ... (about a minute here)
    lenscat encoder train --name demo-moco --survey demo-images --arch resnet-small --seed 1
fi
lenscat encoder list

step "12. Embed every cutout with Celery workers (a local worker starts when none is running)"
lenscat embed --encoder demo-moco --chunk-size 250
lenscat embed --encoder demo-moco   # a re-run finds nothing missing

step "13. More like this lens: the 10 most similar cutouts to a simulated lens"
LENS=$(lenscat sql "SELECT source_id FROM sources WHERE survey = 'demo-images'
                    AND (extra->>'is_lens')::int = 1 ORDER BY source_id LIMIT 1" --format csv | tail -n 1)
lenscat similar --encoder demo-moco --source-id "$LENS" -k 10 --mag-window 1.0
lenscat cutout "$LENS" --out "$OUT/lens_$LENS.png"

step "14. Science check in SQL: lenses among the top-100 neighbours of every lens vs the base rate"
lenscat sql "WITH truth AS (SELECT source_id, (extra->>'is_lens')::int AS is_lens
                            FROM sources WHERE survey = 'demo-images'),
                  nb AS (SELECT n.source_id FROM truth q
                         CROSS JOIN LATERAL similar_sources(q.source_id, 'demo-moco', 100) n
                         WHERE q.is_lens = 1)
             SELECT count(*) AS neighbours,
                    round(avg(t.is_lens), 4) AS lens_fraction_top100,
                    round((SELECT avg(is_lens) FROM truth), 4) AS base_rate,
                    round(avg(t.is_lens) / (SELECT avg(is_lens) FROM truth), 1) AS enrichment
             FROM nb JOIN truth t USING (source_id)"

step "15. Query with a real image: the Pan-STARRS cutout of a SLACS lens (g, r, z files)"
PS1=tests/data/images/ps1_sled_lenses/SDSSJ1430_6104_PS1
lenscat similar --encoder demo-moco --image "${PS1}_g.fits" --image "${PS1}_r.fits" \
    --image "${PS1}_z.fits" -k 5 --mag-window 0

step "16. Labels: the simulation truth of the imaging survey (and the literature lenses of the catalogue)"
lenscat labels import "$OUT/sim_survey.h5" --label-col is_lens --survey demo-images --origin simulation
lenscat labels from-crossmatch --catalog lenscat-1.1.3
lenscat labels list
# the step-14 check again, from the labels, beside what a perfect encoder could reach on this survey
lenscat encoder evaluate --name demo-moco --survey demo-images --labels simulation

step "17. Linear probe on the embeddings (L-BFGS; 1:4000 asked for, the survey is smaller) and a CNN baseline"
lenscat classifier train --name demo-probe --encoder demo-moco --survey demo-images --labels simulation \
    --ratio 4000 --val-ratio 10000 --test-fraction 0.4
lenscat classifier train --name demo-cnn --arch cnn --survey demo-images --labels simulation \
    --ratio 100 --test-fraction 0.4 --crop 48 --lens-fraction 0.2 --epochs 100 --max-steps 300
lenscat classifier list

step "18. Score the survey with Celery workers (a re-run finds nothing missing)"
lenscat classifier score --name demo-probe --chunk-size 500
lenscat classifier score --name demo-cnn --chunk-size 500
lenscat classifier score --name demo-probe

step "19. The top 15 candidates for inspection (index scan on the scores)"
lenscat top --classifier demo-probe -n 15

step "20. Science check: the ranking on sources no model trained on, linear probe vs supervised CNN"
lenscat classifier evaluate --name demo-probe --baseline demo-cnn --survey demo-images --labels simulation \
    --top-n 20,100 --plots "$OUT/evaluation"

step "20a. A survey nobody tuned on: two fields rendered by the independent simulator (not lenstronomy)"
# its own SIE ray-shooting, galaxy and impostor populations, double-Gaussian PSF and CCD noise; 60 known lenses
[ -f "$OUT/new_train.h5" ] || lenscat simulate survey --simulator independent --n 1200 --lens-fraction 0.05 \
    --seed 301 --stamp 96 --out "$OUT/new_train.h5"
[ -f "$OUT/new_test.h5" ] || lenscat simulate survey --simulator independent --n 1200 --lens-fraction 0.02 \
    --seed 302 --stamp 96 --out "$OUT/new_test.h5"
lenscat ingest sources "$OUT/new_train.h5" --survey demo-new
lenscat ingest sources "$OUT/new_test.h5" --survey demo-new-test
lenscat labels import "$OUT/new_train.h5" --label-col is_lens --survey demo-new --origin simulation
lenscat labels import "$OUT/new_test.h5" --label-col is_lens --survey demo-new-test --origin simulation

step "20b. Injections: lenstronomy arcs painted onto 600 red galaxies of the survey's own cutouts (set demo-new-inject)"
lenscat simulate inject --survey demo-new --n 600 --seed 3

step "20c. The default recipe (no architecture flags: the few-label CNN) and the radial colour-profile baseline, same labels"
lenscat classifier train --name demo-default --survey demo-new --survey demo-new-inject --test-fraction 0
lenscat classifier train --name demo-radial --arch radial --survey demo-new --survey demo-new-inject --test-fraction 0
lenscat classifier score --name demo-default --survey demo-new-test
lenscat classifier score --name demo-radial --survey demo-new-test
lenscat classifier ensemble --name demo-ensemble --member demo-default --member demo-radial --survey demo-new-test
lenscat classifier score --name demo-ensemble --survey demo-new-test

step "20d. Judged on the other field (no source of it trained): the ensemble beside its members"
lenscat classifier evaluate --name demo-ensemble --survey demo-new-test --labels simulation --top-n 24,100

step "20e. More like this lens with the network's penultimate layer, and the anomaly score of the embeddings"
lenscat encoder from-classifier --classifier demo-default
lenscat embed --encoder demo-default-features --survey demo-new-test
lenscat encoder evaluate --name demo-default-features --survey demo-new-test --labels simulation -k 20
lenscat classifier anomaly --name demo-anomaly --encoder demo-moco --survey demo-images
lenscat classifier score --name demo-anomaly
lenscat top --classifier demo-anomaly -n 10

step "21. Scheduled re-processing (Celery beat runs the same every 5 minutes): nothing is stale now"
lenscat reprocess

step "22. Spectra: real SDSS/BOSS/DESI files (a truncated or foreign file would be reported and skipped)"
lenscat spectra ingest tests/data/spectra
lenscat spectra list --limit 8

step "22a. Which continuum to subtract, per survey: the pipeline's own model or the project's fit, by measured completeness"
lenscat spectra continuum choose --detector matched-filter --realisations 120
lenscat spectra continuum show

step "23. Train the Li et al. (2018) 1-D ResNet on synthetic spectra: eigenspectrum galaxies, real sky, real residuals"
lenscat spectra train --name demo-specnet --n 6000 --n-val 3000 --epochs 3 --real-residuals default

step "23a. Ensemble of the ResNet and the matched filter: every filter hit, plus what the stack adds at the filter's false rate on real clean spectra"
lenscat spectra ensemble --name demo-ensemble --member matched-filter --member demo-specnet --n 4000 \
    --real-residuals default --real-calibration 600

step "24. Evaluation as a new user would run it: real early types re-noised, lines at matched S/N 4-15, vetoes' cost shown"
lenscat spectra evaluate --detector matched-filter --detector demo-specnet --detector demo-ensemble \
    --realisations 120 --plots "$OUT/spectra-eval"
lenscat spectra evaluate --detector oii --family oii --realisations 60

step "25. New spectra arrive: SDSS early types with a Lyman-alpha line at 4480 A, and with a background [OII] doublet at z = 0.612"
lenscat spectra inject tests/data/spectra/sdss/spec-0403-51871-0462.fits "$OUT/spectra/spec-0403-51871-0962.fits" \
    --wavelength 4480 --flux 40 --fwhm 300 --overwrite
lenscat spectra inject tests/data/spectra/sdss/spec-0403-51871-0462.fits "$OUT/spectra/spec-0403-51871-0998.fits" \
    --line oii --z-source 0.6123 --flux 45 --fwhm 170 --ratio 1.2 --oiii 0.8 --fiber 998 --overwrite
lenscat spectra ingest "$OUT/spectra"

step "26. Scan the galaxies with a redshift: matched filter, ResNet, their ensemble and the [OII] doublet filter (Celery workers)"
lenscat spectra scan --detector matched-filter --chunk-size 3
lenscat spectra scan --detector demo-specnet --chunk-size 3
lenscat spectra scan --detector demo-ensemble --chunk-size 3
lenscat spectra scan --detector oii --chunk-size 3
lenscat spectra detectors

step "27. Hits without a veto: Lyman-alpha (z_source from 1215.67 A) and [OII] (z_source from the doublet)"
lenscat spectra hits --candidates --line lya
lenscat spectra hits --candidates --line oii

step "28. Graders: accounts with scrypt-hashed passwords (the web app needs a login to grade)"
echo "demo-password" | lenscat grader add demo --password-stdin --reset
echo "second-password" | lenscat grader add second --password-stdin --reset
lenscat grader list

# a simulated expert: grades from the simulation truth (A = lens, N = not a lens); the request id is a
# hash of (grader, source), so a second run of the demo records nothing new
truth_grades() {  # $1 grader, $2 comma-separated source ids, $3 file
    lenscat sql "SELECT s.source_id, CASE WHEN (s.extra->>'is_lens')::int = 1 THEN 'A' ELSE 'N' END AS grade,
                        md5('$1-' || s.source_id)::uuid AS request_id
                 FROM sources s WHERE s.survey = 'demo-images' AND s.source_id = ANY('{$2}'::bigint[])" \
        --format csv > "$3"
    lenscat grade --file "$3" --grader "$1" --sample demo-truth
}

step "29. Grade the top 30 of the linear probe from a script; a second grader disagrees on a few"
TOP30=$(lenscat sql "SELECT source_id FROM scores WHERE classifier = 'demo-probe' ORDER BY score DESC LIMIT 30" \
        --format csv | tail -n +2 | paste -sd, -)
truth_grades demo "$TOP30" "$OUT/grades_demo.csv"
lenscat sql "SELECT source_id, 'C' AS grade, md5('second-' || source_id)::uuid AS request_id FROM scores
             WHERE classifier = 'demo-probe' ORDER BY score DESC LIMIT 5" --format csv > "$OUT/grades_second.csv"
lenscat grade --file "$OUT/grades_second.csv" --grader second --sample demo-second-opinion
lenscat grades consensus --limit 8
lenscat grades conflicts

step "30. Active learning: the probe retrains on the human grades after every batch and proposes the next"
lenscat learn start demo-al --encoder demo-moco --batch 25 --survey demo-images
for loop in 1 2 3; do
    BATCH=$(lenscat learn batch demo-al --format json \
            | python -c "import json, sys; print(','.join(str(json.loads(r)['source_id']) for r in sys.stdin))")
    truth_grades demo "$BATCH" "$OUT/grades_loop.csv"
    lenscat learn next demo-al
done
lenscat learn status demo-al

step "31. The candidate catalogue: consensus A/B with scores, literature status, provenance; a gallery; Table 1"
lenscat export --grades A,B --format fits --out "$OUT/candidates.fits" --gallery "$OUT/candidates.png" --summary --quiet
lenscat export --grades A,B --format votable --out "$OUT/candidates.xml" --quiet
lenscat sql "SELECT source_id, consensus_grade, n_votes, round(best_score::numeric, 3) AS best_score,
                    literature_status FROM candidates ORDER BY mean_grade DESC, best_score DESC LIMIT 8"

step "31a. Lens models of the A/B candidates: a small CNN (SIE + shear + source, calibrated sigma), vetted"
if ! lenscat model show --top 1 --format csv >/dev/null 2>&1; then  # a demo-sized network: ~1 min on 2 cores
    lenscat model train --name demo-lensnet --n 400 --epochs 4 --width 8 --seed 1
fi
lenscat model run --grades A,B --chunk-size 20
lenscat model show --top 5

step "31b. Joint evidence (one ranking, each contribution shown) and a follow-up pack for Keck (offline)"
lenscat evidence --grades A,B --limit 8
lenscat proposal --grades A,B --site keck --from 2027-01-10 --to 2027-01-16 --out "$OUT/proposal" --quiet
head -n 12 "$OUT/proposal/README.txt"

step "31c. A gravitational-wave-like sky map (a flat NSIDE-128 Gaussian around the Cosmic Horseshoe): what lies in its 90 % region"
[ -f "$OUT/demo_bayestar.fits.gz" ] || python - "$OUT/demo_bayestar.fits.gz" <<'PY'
import sys
import astropy.units as u, numpy as np
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy_healpix import HEALPix
hp = HEALPix(128, order="nested")
lon, lat = hp.healpix_to_lonlat(np.arange(hp.npix))
sep = SkyCoord(lon, lat).separation(SkyCoord(177.14 * u.deg, 19.5 * u.deg)).deg
p = np.exp(-0.5 * (sep / 3.0) ** 2)
hdu = fits.BinTableHDU.from_columns([fits.Column("PROB", "D", array=p / p.sum())])
hdu.header.update(PIXTYPE="HEALPIX", ORDERING="NESTED", NSIDE=128, COORDSYS="C", OBJECT="SDEMO")
fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(sys.argv[1])
PY
lenscat skymap ingest "$OUT/demo_bayestar.fits.gz" --name SDEMO
lenscat skymap list
lenscat skymap match SDEMO --credible 0.9 --catalog lenscat-1.1.3 --out "$OUT/sdemo_lenses.csv" --format csv
head -n 6 "$OUT/sdemo_lenses.csv"
lenscat skymap match SDEMO --credible 0.9 --survey demo-decals --out "$OUT/sdemo_sources.csv" --format csv
lenscat export --grades A,B --moc "$OUT/candidates.moc.fits" --quiet

step "Done. Explore with: lenscat sql \"SELECT * FROM candidates ORDER BY mean_grade DESC LIMIT 5\" --format json"

if [ "${LENSCAT_DEMO_SERVE:-1}" = "1" ]; then
    step "32. The inspection grid: open http://127.0.0.1:8765/ and log in as demo / demo-password
    (a: sure lens, b: probable, c: possible, n: not a lens, space: skip; Enter submits an
    active-learning batch). Ctrl-C stops the server; LENSCAT_DEMO_SERVE=0 skips this step."
    lenscat serve --port "${LENSCAT_DEMO_PORT:-8765}"
fi

