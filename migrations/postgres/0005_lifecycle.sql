-- Pack lifecycle: what verification compares against, what happened to each pack,
-- the previous versions kept for rollback, the event outbox, and user grants.

-- The registered files, for VerifyPacks: JSON object of path -> hex SHA-256 of the
-- content; NULL for packs registered before it was recorded.
ALTER TABLE packs ADD COLUMN file_manifest TEXT;
-- The checksum the source promised (a registry index entry's), when it promised one.
ALTER TABLE packs ADD COLUMN expected_checksum TEXT;

-- Every install, upgrade, downgrade, replace, removal and rollback of a pack. Refs are
-- text, not foreign keys: history outlives the pack.
CREATE TABLE pack_history (
    id BIGSERIAL PRIMARY KEY,
    pack_ref TEXT NOT NULL,
    action TEXT NOT NULL CHECK (action IN (
        'install', 'upgrade', 'downgrade', 'replace', 'remove', 'rollback'
    )),
    from_version TEXT,
    from_source TEXT,
    from_checksum TEXT,
    to_version TEXT,
    to_source TEXT,
    to_checksum TEXT,
    actor TEXT,
    at BIGINT NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('succeeded', 'failed')),
    detail TEXT
);
CREATE INDEX pack_history_ref ON pack_history (pack_ref, id);

-- Previous versions of installed packs, kept for rollback (history.keep_versions).
CREATE TABLE pack_versions (
    id BIGSERIAL PRIMARY KEY,
    pack_ref TEXT NOT NULL,
    version TEXT NOT NULL,
    checksum TEXT,
    source TEXT,
    -- The kept copy of the pack's directory.
    files_path TEXT NOT NULL,
    -- The pack row, its components and its last test result as they were, as JSON.
    pack_row TEXT NOT NULL,
    components TEXT NOT NULL,
    test_result TEXT,
    -- Environment links as they were: JSON object runtime -> build directory name.
    env_links TEXT NOT NULL DEFAULT '{}',
    kept_at BIGINT NOT NULL
);
CREATE INDEX pack_versions_ref ON pack_versions (pack_ref, id);

-- Events written in the same transaction as the change they announce; the relay
-- publishes them, WatchEvents reads them. `id` is the cursor.
CREATE TABLE event_outbox (
    id BIGSERIAL PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    event_type TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    published_at BIGINT
);
CREATE INDEX event_outbox_unpublished ON event_outbox (id) WHERE published_at IS NULL;

-- What a login user may do: JSON array of grants such as "packs:read". Users created
-- before grants existed keep full access.
ALTER TABLE users ADD COLUMN grants TEXT NOT NULL
    DEFAULT '["packs:read","packs:install","packs:delete","packs:configure"]';

-- ListPacks pages in byte order of the ref whatever the database's collation (so both
-- backends list in the same order and a page token means the same on both): an index
-- in that collation lets the first page read 50 index entries instead of sorting.
CREATE INDEX packs_ref_bytewise ON packs (ref COLLATE "C");
