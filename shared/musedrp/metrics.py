"""Every Prometheus metric musedrp exports, created here and only here.

Names follow Prometheus practice: one ``musedrp_`` prefix, base units, ``_total`` on
counters, bounded label values (stage, queue, outcome, IFU; never job keys or object keys).
"""

from prometheus_client import Counter, Gauge, Histogram, start_http_server

DURATION_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)

MESSAGES = Counter("musedrp_messages_total", "Messages handled, by queue and outcome",
                   ["queue", "outcome"])
JOBS = Counter("musedrp_jobs_total", "Recipe jobs finished, by stage and outcome",
               ["stage", "outcome"])
JOB_DURATION = Histogram("musedrp_job_duration_seconds",
                         "Wall time of a job: download, recipe, upload", ["stage"],
                         buckets=DURATION_BUCKETS)
RECIPE_DURATION = Histogram("musedrp_recipe_duration_seconds", "Wall time of the esorex run",
                            ["stage"], buckets=DURATION_BUCKETS)
RECIPE_CPU = Counter("musedrp_recipe_cpu_seconds_total", "CPU time of esorex runs", ["stage"])
PEAK_RSS = Gauge("musedrp_job_peak_rss_bytes", "Peak resident memory of the last esorex run",
                 ["stage"])
IN_PROGRESS = Gauge("musedrp_jobs_in_progress", "Jobs being processed", ["stage"])
RECIPE_WARNINGS = Counter("musedrp_recipe_warnings_total", "[WARNING] lines in esorex logs",
                          ["stage"])
RETRIES = Counter("musedrp_retries_total", "Messages sent to a delayed retry", ["queue"])
DEAD_LETTERS = Counter("musedrp_dead_letters_total", "Messages dead-lettered, by cause",
                       ["queue", "cause"])
QC_VALUE = Gauge("musedrp_qc_value", "Headline QC values of the last product",
                 ["stage", "key", "ifu"])
QC_FLAGGED = Gauge("musedrp_qc_flagged",
                   "1 when the last value of a QC key left the band of its own history "
                   "(musedrp.qctrend); headline keys always, other keys once flagged",
                   ["stage", "key", "ifu"])
QC_BAND_LOW = Gauge("musedrp_qc_band_low", "Lower edge of a headline QC key's band",
                    ["stage", "key", "ifu"])
QC_BAND_HIGH = Gauge("musedrp_qc_band_high", "Upper edge of a headline QC key's band",
                     ["stage", "key", "ifu"])
FRAMES = Counter("musedrp_frames_total", "Frames ingested, by tag and status",
                 ["tag", "status"])
HEADER_BYTES = Counter("musedrp_ingest_header_bytes_total",
                       "Bytes fetched by ranged reads to classify frames")
INPUT_BYTES = Counter("musedrp_input_bytes_total",
                      "Bytes a stage's workers fetched for their inputs (of a raw frame, a "
                      "per-IFU job fetches only its IFU's extension)", ["stage"])
PLANNED = Counter("musedrp_work_orders_total", "Work orders published by the planner",
                  ["stage"])
LOOP_HEARTBEAT = Gauge("musedrp_consume_loop_heartbeat_timestamp_seconds",
                       "When the consume loop last went round (Unix time); `musedrp health` "
                       "fails when it is older than MUSEDRP_LIVENESS_S")
BUILD = Gauge("musedrp_build_info", "Code and pipeline versions", ["version", "git_sha",
                                                                     "pipeline"])


def serve(port: int) -> None:
    """Expose ``/metrics`` on ``port`` (0: not at all)."""
    if port:
        start_http_server(port)
