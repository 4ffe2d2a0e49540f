-- Packs and what was installed with them. JSON columns are TEXT so that the same
-- queries run on SQLite and PostgreSQL; timestamps are unix milliseconds.
CREATE TABLE packs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ref TEXT NOT NULL UNIQUE CHECK (length(ref) BETWEEN 2 AND 64),
    label TEXT NOT NULL,
    description TEXT,
    version TEXT NOT NULL,
    conf_schema TEXT NOT NULL DEFAULT '{}',
    config TEXT NOT NULL DEFAULT '{}',
    meta TEXT NOT NULL DEFAULT '{}',
    tags TEXT NOT NULL DEFAULT '[]',
    runtime_deps TEXT NOT NULL DEFAULT '[]',
    -- Pack dependencies as declared, e.g. ["core@>=1.0.0"].
    dependencies TEXT NOT NULL DEFAULT '[]',
    storage_path TEXT NOT NULL,
    -- Installation provenance, as far as the stage that fetched the pack knew it.
    source TEXT,
    source_type TEXT,
    source_url TEXT,
    source_ref TEXT,
    registry_url TEXT,
    git_commit TEXT,
    checksum TEXT,
    checksum_verified BOOLEAN NOT NULL DEFAULT FALSE,
    installed_by TEXT,
    installed_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE components (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pack_id BIGINT NOT NULL REFERENCES packs (id) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN (
        'action', 'sensor', 'trigger', 'rule', 'workflow', 'policy',
        'runtime', 'permission_set', 'queue'
    )),
    ref TEXT NOT NULL,
    label TEXT,
    description TEXT,
    -- The file it was read from, relative to the pack root.
    file TEXT NOT NULL,
    -- The component as read, as JSON.
    definition TEXT NOT NULL,
    UNIQUE (kind, ref)
);
CREATE INDEX components_pack_id ON components (pack_id);

CREATE TABLE pack_test_results (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pack_id BIGINT NOT NULL REFERENCES packs (id) ON DELETE CASCADE,
    pack_version TEXT NOT NULL,
    executed_at BIGINT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('passed', 'failed', 'partial', 'skipped')),
    total_tests INTEGER NOT NULL CHECK (total_tests >= 0),
    passed INTEGER NOT NULL CHECK (passed >= 0),
    failed INTEGER NOT NULL CHECK (failed >= 0),
    skipped INTEGER NOT NULL CHECK (skipped >= 0),
    pass_rate DOUBLE PRECISION NOT NULL CHECK (pass_rate >= 0 AND pass_rate <= 1),
    duration_ms BIGINT NOT NULL,
    -- Suites and cases, as JSON.
    result TEXT NOT NULL
);
CREATE INDEX pack_test_results_pack_id ON pack_test_results (pack_id);
