-- drhost state store, version 1. The same SQL runs on SQLite and PostgreSQL:
-- integers are BIGINT, times are milliseconds since the Unix epoch (UTC),
-- flags are 0/1.

-- One row per schedule: the claim that makes each occurrence run exactly
-- once and never overlap with the previous one (see docs/serve.md).
CREATE TABLE schedules (
    name            TEXT PRIMARY KEY,
    since_ms        BIGINT NOT NULL,
    last_due_ms     BIGINT NOT NULL,
    running_due_ms  BIGINT,
    owner           TEXT,
    lease_until_ms  BIGINT,
    attempts        BIGINT NOT NULL DEFAULT 0
);

-- Every occurrence: run, missed, or still running.
CREATE TABLE jobs (
    id           TEXT PRIMARY KEY,
    schedule     TEXT NOT NULL,
    job          TEXT NOT NULL,
    subject      TEXT NOT NULL,
    due_ms       BIGINT NOT NULL,
    status       TEXT NOT NULL,
    owner        TEXT,
    attempts     BIGINT NOT NULL DEFAULT 0,
    started_ms   BIGINT,
    finished_ms  BIGINT,
    is_test      BIGINT NOT NULL DEFAULT 0,
    detail       TEXT NOT NULL DEFAULT ''
);
CREATE INDEX jobs_by_due ON jobs (due_ms);
CREATE INDEX jobs_by_schedule ON jobs (schedule, due_ms);

CREATE TABLE backups (
    job_id       TEXT NOT NULL,
    source       TEXT NOT NULL,
    kind         TEXT NOT NULL,
    backup_id    TEXT,
    ok           BIGINT NOT NULL,
    bytes        BIGINT NOT NULL DEFAULT 0,
    seconds      DOUBLE PRECISION NOT NULL DEFAULT 0,
    covers_ms    BIGINT,
    finished_ms  BIGINT NOT NULL,
    error        TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (job_id, source)
);
CREATE INDEX backups_by_time ON backups (finished_ms);

CREATE TABLE verifications (
    job_id       TEXT NOT NULL,
    source       TEXT NOT NULL,
    backup_id    TEXT NOT NULL,
    target       TEXT NOT NULL,
    ok           BIGINT NOT NULL,
    covers_ms    BIGINT,
    failed       TEXT NOT NULL DEFAULT '',
    finished_ms  BIGINT NOT NULL,
    PRIMARY KEY (job_id, backup_id, target)
);
CREATE INDEX verifications_by_time ON verifications (finished_ms);

-- Recovery times measured by drills and restore tests, per component.
CREATE TABLE recoveries (
    job_id          TEXT NOT NULL,
    component       TEXT NOT NULL,
    component_kind  TEXT NOT NULL,
    test            TEXT NOT NULL,
    ok              BIGINT NOT NULL,
    seconds         DOUBLE PRECISION,
    rto_s           BIGINT,
    rpo_achieved_s  DOUBLE PRECISION,
    rpo_s           BIGINT,
    finished_ms     BIGINT NOT NULL,
    PRIMARY KEY (job_id, component)
);

-- Plugin runs (drills): the runtime's own numbers.
CREATE TABLE plugin_runs (
    job_id       TEXT PRIMARY KEY,
    run_id       TEXT NOT NULL,
    scenario     TEXT NOT NULL,
    outcome      TEXT NOT NULL,
    calls        BIGINT NOT NULL,
    denied       BIGINT NOT NULL,
    overruns     BIGINT NOT NULL,
    audit_log    TEXT NOT NULL,
    finished_ms  BIGINT NOT NULL
);

-- Alert conditions: at most one announcement per repeat interval.
CREATE TABLE alerts (
    condition     TEXT PRIMARY KEY,
    firing        BIGINT NOT NULL,
    since_ms      BIGINT NOT NULL,
    last_sent_ms  BIGINT NOT NULL,
    message       TEXT NOT NULL
);
